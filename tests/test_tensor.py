"""The mechanics of Tensor and the backward walk: accumulation over every use, broadcasting
undone, no_grad, detach, the graph freed after backward, create_graph and minigen.grad,
dtypes, random seeds, and error messages that name what is wrong. It ends with the
done-criterion of the core: a tanh MLP's gradient-penalty gradient agrees with PyTorch.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import minigen
import minigen.functional as F
from minigen.tensor import Function
from helpers import import_torch


def leaf(array, dtype=np.float64) -> minigen.Tensor:
    return minigen.tensor(np.asarray(array, dtype=dtype), requires_grad=True)


def random_leaf(*shape, seed: int = 0) -> minigen.Tensor:
    return leaf(np.random.default_rng(seed).standard_normal(shape))


# ---- accumulation and broadcasting ---------------------------------------------------------------
def test_gradients_accumulate_over_every_use_of_a_tensor():
    x = leaf([0.5, -1.0, 2.0])
    (x * x + x * 3 + x.exp()).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.data + 3 + np.exp(x.data))


def test_gradients_accumulate_over_backward_calls_until_cleared():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 + 2 * x.data)


@pytest.mark.parametrize("shape_a, shape_b", [((3, 1), (4,)), ((2, 3, 4), (1, 4)), ((), (2, 3)),
                                              ((2, 1, 3), (4, 1))])
def test_broadcasting_is_undone_in_backward(shape_a, shape_b):
    a, b = random_leaf(*shape_a, seed=1), random_leaf(*shape_b, seed=2)
    out = a * b
    out.sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    full_b = np.broadcast_to(b.data, out.shape)
    full_a = np.broadcast_to(a.data, out.shape)
    np.testing.assert_allclose(a.grad.numpy().sum(), full_b.sum())
    np.testing.assert_allclose(b.grad.numpy().sum(), full_a.sum())


def test_backward_with_an_explicit_gradient_for_a_non_scalar_output():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).backward(minigen.tensor(np.array([1.0, 0.0, -1.0])))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 0.0, -6.0])


def test_grad_is_a_tensor_without_a_graph():
    x = leaf([1.0, 2.0])
    (x * x).sum().backward()
    assert isinstance(x.grad, minigen.Tensor)
    assert not x.grad.requires_grad and x.grad.grad_fn is None


def test_only_leaves_get_grad_unless_retain_grad_is_asked():
    x = leaf([1.0, 2.0])
    hidden, kept = x * 2, x * 3
    kept.retain_grad()
    (hidden * kept).sum().backward()
    assert hidden.grad is None
    np.testing.assert_allclose(kept.grad.numpy(), hidden.data)
    np.testing.assert_allclose(x.grad.numpy(), 12 * x.data)


def test_backward_through_a_long_chain_does_not_hit_the_recursion_limit():
    x = leaf([1.0])
    y = x
    for _ in range(3000):
        y = y * 1.0 + 0.001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


# ---- recording on and off ------------------------------------------------------------------------
def test_no_grad_records_nothing_and_restores_the_mode():
    x = leaf([1.0, 2.0])
    with minigen.no_grad():
        y = x * 2
        assert not minigen.is_grad_enabled()
    assert minigen.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None


def test_no_grad_works_as_a_decorator_and_survives_an_exception():
    @minigen.no_grad()
    def doubled(x):
        return x * 2

    assert not doubled(leaf([1.0])).requires_grad
    with pytest.raises(ZeroDivisionError), minigen.no_grad():
        1 / 0
    assert minigen.is_grad_enabled()


def test_detach_cuts_the_graph_and_shares_the_array():
    x = leaf([1.0, 2.0])
    y = x * 2
    detached = y.detach()
    assert not detached.requires_grad and detached.grad_fn is None
    assert detached.data is y.data
    (y * detached).sum().backward()  # detached acts as a constant
    np.testing.assert_allclose(x.grad.numpy(), 2 * detached.data)


def test_comparisons_give_boolean_tensors_without_gradient():
    x = leaf([1.0, -2.0])
    positive = x > 0
    assert positive.dtype == np.bool_ and not positive.requires_grad
    assert positive.tolist() == [True, False]


def test_truth_value_of_a_one_element_tensor_is_its_value():
    assert not (minigen.tensor([0.0]) > 1)
    assert minigen.tensor(2.0) > 1
    assert float(minigen.tensor([1.5])) == 1.5 and int(minigen.tensor(3)) == 3


def test_truth_value_of_a_larger_tensor_is_refused():
    with pytest.raises(RuntimeError, match=r"ambiguous.*\.max\(\)"):
        bool(minigen.tensor([1.0, 2.0]) > 0)
    assert (minigen.tensor([1.0, 2.0]) > 0).min()


# ---- the graph's lifetime ------------------------------------------------------------------------
def test_graph_is_freed_after_backward():
    x = leaf([1.0, 2.0])
    hidden = x * 2
    loss = (hidden * hidden).sum()
    hidden_ref = weakref.ref(hidden)
    del hidden
    gc.collect()
    assert hidden_ref() is not None, "the graph should hold its intermediate tensors"
    loss.backward()
    gc.collect()
    assert hidden_ref() is None, "backward() should free the graph"


def test_second_backward_without_retain_graph_raises_a_clear_error():
    x = leaf([1.0, 2.0])
    loss = (x.exp() * 2).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_retain_graph_allows_a_second_backward_that_accumulates():
    x = leaf([1.0, 2.0])
    loss = (x.exp() * 2).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp(x.data))


def test_a_dropped_output_of_a_two_output_op_gets_a_zero_gradient():
    class Halves(Function):
        def forward(self, x):
            return x[:2].copy(), x[2:].copy()

        def backward(self, grad_first, grad_second):
            return minigen.cat([grad_first, grad_second])

    x = leaf([1.0, 2.0, 3.0, 4.0])
    first = Halves()(x)[0]  # the second output is dropped at once
    gc.collect()
    (first * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0, 0.0, 0.0])


# ---- higher order and minigen.grad ---------------------------------------------------------------
def test_create_graph_gives_gradients_that_carry_their_own_graph():
    x = leaf([0.5, -1.5])
    (x ** 3).sum().backward(create_graph=True)
    first = x.grad
    assert first.requires_grad
    np.testing.assert_allclose(first.detach().numpy(), 3 * x.data ** 2)
    x.grad = None
    first.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * x.data)


def test_grad_returns_gradients_and_leaves_dot_grad_alone():
    x, w = leaf([1.0, 2.0]), leaf([3.0, -1.0])
    (grad_x, grad_w) = minigen.grad((x * w).sum(), [x, w])
    np.testing.assert_allclose(grad_x.numpy(), w.data)
    np.testing.assert_allclose(grad_w.numpy(), x.data)
    assert x.grad is None and w.grad is None


def test_grad_of_an_intermediate_tensor():
    x = leaf([1.0, 2.0])
    hidden = x * 2
    (grad_hidden,) = minigen.grad((hidden * hidden).sum(), hidden)
    np.testing.assert_allclose(grad_hidden.numpy(), 2 * hidden.data)


def test_grad_with_grad_outputs_for_several_outputs():
    x = leaf([1.0, 2.0])
    (grad_x,) = minigen.grad([x * 2, x * x], x, grad_outputs=[minigen.tensor(np.ones(2)),
                                                            minigen.tensor(np.array([1.0, -1.0]))])
    np.testing.assert_allclose(grad_x.numpy(), [2 + 2 * 1.0, 2 - 2 * 2.0])


def test_grad_names_an_unused_input_unless_allow_unused():
    x, unused = leaf([1.0]), leaf([2.0])
    with pytest.raises(RuntimeError, match="input 1 .*allow_unused=True"):
        minigen.grad((x * 2).sum(), [x, unused], retain_graph=True)
    assert minigen.grad((x * 2).sum(), [x, unused], allow_unused=True)[1] is None


def test_grad_with_create_graph_gives_second_derivatives():
    x = leaf([0.3, -0.7])
    (first,) = minigen.grad(x.sin().sum(), x, create_graph=True)
    (second,) = minigen.grad(first.sum(), x)
    np.testing.assert_allclose(second.numpy(), -np.sin(x.data))


# ---- dtypes -----------------------------------------------------------------------------------
def test_float32_is_the_default():
    assert minigen.tensor([1.0, 2.0]).dtype == np.float32
    assert minigen.tensor(1.5).dtype == np.float32
    for make in (minigen.zeros, minigen.ones, minigen.randn, minigen.rand):
        assert make(2, 3).dtype == np.float32, make.__name__
    assert minigen.arange(0.0, 1.0, 0.25).dtype == np.float32


def test_python_scalars_keep_the_tensor_dtype():
    for dtype in (np.float32, np.float64):
        x = leaf([1.0, 2.0], dtype)
        y = (2 * x + 1.5) / 3 - x ** 2 + 0.5 ** x
        y.sum().backward()
        assert y.dtype == dtype and x.grad.dtype == dtype


def test_every_creation_function_takes_float64():
    assert minigen.tensor([1.0], dtype=minigen.float64).dtype == np.float64
    for make in (minigen.zeros, minigen.ones, minigen.randn, minigen.rand):
        assert make(2, dtype=minigen.float64).dtype == np.float64, make.__name__


def test_to_changes_dtype_and_the_gradient_comes_back_in_the_input_dtype():
    x = leaf([1.0, 2.0], np.float32)
    y = x.to(np.float64)
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])


def test_integer_tensors_hold_labels_and_indices():
    labels = minigen.tensor([2, 0, 1])
    assert labels.dtype == np.int64 and minigen.arange(3).dtype == np.int64
    assert minigen.randint(0, 5, (4,)).dtype == np.int64
    logits = random_leaf(3, 3)
    F.cross_entropy(logits, labels).backward()
    picked = logits[labels]
    assert picked.shape == (3, 3)
    assert logits.grad.shape == (3, 3)


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        minigen.tensor([1, 2], requires_grad=True)


# ---- random numbers ----------------------------------------------------------------------------
def test_manual_seed_makes_draws_reproducible():
    def draws():
        return (minigen.randn(3).numpy(), minigen.rand(2, 2).numpy(),
                minigen.randint(0, 10, (5,)).numpy(),
                F.dropout(minigen.ones(8), 0.5).numpy())

    minigen.manual_seed(123)
    first = draws()
    minigen.manual_seed(123)
    second = draws()
    minigen.manual_seed(124)
    other = draws()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_dropout_zeroes_about_p_and_scales_the_rest():
    minigen.manual_seed(0)
    x = leaf(np.ones(4000))
    y = F.dropout(x, 0.25)
    kept = y.detach().numpy() != 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(y.detach().numpy()[kept], 1 / 0.75)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, 1 / 0.75, 0.0))


def test_dropout_with_p_one_zeroes_everything_and_p_zero_is_identity():
    x = leaf(np.ones(5))
    assert not F.dropout(x, 1.0).detach().numpy().any()
    assert F.dropout(x, 0.0) is x
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(x, 1.5)


# ---- error messages ---------------------------------------------------------------------------
@pytest.mark.parametrize("make_error, names", [
    (lambda: leaf(np.ones(3)) + leaf(np.ones(4)), ["(3,)", "(4,)"]),
    (lambda: leaf(np.ones((2, 3))) * leaf(np.ones((4, 2))), ["(2, 3)", "(4, 2)"]),
    (lambda: leaf(np.ones((2, 3))) @ leaf(np.ones((4, 2))), ["(2, 3)", "(4, 2)"]),
    (lambda: leaf(np.ones((2, 3))).reshape(4, 2), ["(2, 3)", "(4, 2)"]),
    (lambda: minigen.cat([leaf(np.ones((2, 3))), leaf(np.ones((2, 4)))], 0), ["(2, 3)", "(2, 4)"]),
    (lambda: F.mse_loss(leaf(np.ones(3)), leaf(np.ones(4))), ["(3,)", "(4,)"]),
    (lambda: F.linear(leaf(np.ones((2, 3))), leaf(np.ones((5, 4)))), ["(2, 3)", "(5, 4)"]),
])
def test_shape_mismatch_errors_name_both_shapes(make_error, names):
    with pytest.raises(ValueError) as error:
        make_error()
    for name in names:
        assert name in str(error.value), f"{name} missing from: {error.value}"


def test_backward_of_a_non_scalar_without_grad_names_the_shape():
    with pytest.raises(RuntimeError, match=r"scalar outputs.*\(2, 3\)"):
        (random_leaf(2, 3) * 2).backward()


def test_numpy_of_a_tensor_that_requires_grad_says_to_detach():
    with pytest.raises(RuntimeError, match=r"detach\(\)"):
        random_leaf(2).numpy()


def test_cuda_without_a_gpu_says_what_is_missing():
    if minigen.cuda_available():
        pytest.skip("a GPU is present, so moving to cuda succeeds")
    with pytest.raises(RuntimeError, match="cuda"):
        random_leaf(2).to("cuda")


# ---- the done-criterion: a gradient penalty through a tanh MLP --------------------------------
def gradient_penalty_loss(functional, x, w1, b1, w2, b2, grad_fn):
    """WGAN-GP style: mean D(x) plus 10 (||dD/dx|| - 1)^2, whose parameter gradient needs
    second derivatives of the MLP."""
    score = functional.linear(functional.tanh(functional.linear(x, w1, b1)), w2, b2)
    (grad_x,) = grad_fn(score.sum(), x)
    norms = (grad_x * grad_x).sum(1).sqrt()
    return score.mean() + 10 * ((norms - 1) ** 2).mean()


def test_gradient_penalty_gradient_of_a_tanh_mlp_matches_pytorch():
    torch = import_torch()
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((5, 3)), rng.standard_normal((8, 3)), rng.standard_normal(8),
              rng.standard_normal((1, 8)) * 0.5, rng.standard_normal(1)]
    ours = [leaf(array) for array in arrays]
    theirs = [torch.tensor(array, requires_grad=True) for array in arrays]

    ours_loss = gradient_penalty_loss(
        F, *ours, grad_fn=lambda out, x: minigen.grad(out, x, create_graph=True))
    theirs_loss = gradient_penalty_loss(
        torch.nn.functional, *theirs,
        grad_fn=lambda out, x: torch.autograd.grad(out, x, create_graph=True))
    ours_loss.backward()
    theirs_loss.backward()

    np.testing.assert_allclose(ours_loss.item(), theirs_loss.item(), rtol=1e-10)
    for name, our, their in zip(["x", "w1", "b1", "w2", "b2"], ours, theirs):
        np.testing.assert_allclose(our.grad.numpy(), their.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=f"gradient of {name}")
