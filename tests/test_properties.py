"""Property-based tests (hypothesis) over random shapes: elementwise ops broadcast as NumPy
does and their gradients come back summed to each input's shape; reductions over any set
of dims, with or without keepdim, agree with NumPy and pass the gradient check; permutes
and reshapes undo themselves in backward.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigen
import minigen.functional as F

# Few examples each, and the same ones on every run, so the suite stays fast and a CI
# failure can be reproduced; deadline=None because the first call of a test pays imports.
examples = settings(max_examples=20, deadline=None, derandomize=True, database=None)

small_shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3)


def leaf(array) -> minigen.Tensor:
    return minigen.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def numpy_sum_to(array: np.ndarray, shape: tuple) -> np.ndarray:
    """What undoing broadcasting must give: sum over the axes that broadcasting added or grew."""
    lead = array.ndim - len(shape)
    array = array.sum(axis=tuple(range(lead)))
    grown = tuple(i for i, size in enumerate(shape) if size == 1 and array.shape[i] != 1)
    return array.sum(axis=grown, keepdims=True)


# ---- broadcasting --------------------------------------------------------------------------------
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b, g: (g, g)),
    "sub": (lambda a, b: a - b, lambda a, b, g: (g, -g)),
    "mul": (lambda a, b: a * b, lambda a, b, g: (g * b, g * a)),
    "div": (lambda a, b: a / b, lambda a, b, g: (g / b, -g * a / b ** 2)),
    "maximum": (F.maximum, lambda a, b, g: (g * (a > b), g * (b > a))),
}


@pytest.mark.parametrize("name", BINARY)
@examples
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3),
       seed=st.integers(0, 2**16))
def test_binary_ops_broadcast_as_numpy_and_sum_gradients_back(name, shapes, seed):
    op, numpy_gradients = BINARY[name]
    rng = np.random.default_rng(seed)
    shape_a, shape_b = shapes.input_shapes
    # b away from zero so that division is safe; continuous values give maximum no ties
    a_array = rng.standard_normal(shape_a)
    b_array = rng.uniform(0.5, 1.5, shape_b) * rng.choice([-1, 1], shape_b)
    a, b = leaf(a_array), leaf(b_array)
    out = op(a, b)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(out.detach().numpy(), op(a_array, b_array) if name != "maximum"
                               else np.maximum(a_array, b_array))
    grad_output = rng.standard_normal(out.shape)
    out.backward(minigen.tensor(grad_output))
    full_a, full_b = np.broadcast_arrays(a_array, b_array)
    expected_a, expected_b = numpy_gradients(full_a, full_b, grad_output)
    assert a.grad.shape == shape_a and b.grad.shape == shape_b
    np.testing.assert_allclose(a.grad.numpy(), numpy_sum_to(np.broadcast_to(expected_a, out.shape),
                                                            shape_a), atol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), numpy_sum_to(np.broadcast_to(expected_b, out.shape),
                                                            shape_b), atol=1e-12)


@examples
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3),
       seed=st.integers(0, 2**16))
def test_where_broadcasts_its_three_arguments(shapes, seed):
    rng = np.random.default_rng(seed)
    shape_condition, shape_a, shape_b = shapes.input_shapes
    condition = rng.random(shape_condition) < 0.5
    a, b = leaf(rng.standard_normal(shape_a)), leaf(rng.standard_normal(shape_b))
    out = minigen.where(condition, a, b)
    np.testing.assert_array_equal(out.detach().numpy(), np.where(condition, a.data, b.data))
    out.sum().backward()
    full_condition = np.broadcast_to(condition, out.shape)
    np.testing.assert_array_equal(a.grad.numpy(), numpy_sum_to(full_condition * 1.0, shape_a))
    np.testing.assert_array_equal(b.grad.numpy(), numpy_sum_to(~full_condition * 1.0, shape_b))


# ---- reductions ------------------------------------------------------------------------------------
@st.composite
def shape_dims_keepdim(draw, allow_all: bool = True):
    """A shape, the dims to reduce (None, one int, or a tuple, negative ones included)
    and keepdim."""
    shape = draw(small_shapes)
    ndim = len(shape)
    dims = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    dims = [d - ndim if draw(st.booleans()) else d for d in dims]
    choice = draw(st.sampled_from(["all", "int", "tuple"] if allow_all else ["int", "tuple"]))
    dim = None if choice == "all" else dims[0] if choice == "int" else tuple(dims)
    return shape, dim, draw(st.booleans())


def numpy_axis(dim):
    return dim if dim is None or isinstance(dim, int) else tuple(dim)


def reduced_count(shape, dim) -> int:
    axes = range(len(shape)) if dim is None else [dim] if isinstance(dim, int) else dim
    return int(np.prod([shape[a] for a in axes]))


REDUCTIONS = {
    "sum": (F.sum, lambda x, dim, keepdim: np.sum(x, numpy_axis(dim), keepdims=keepdim)),
    "mean": (F.mean, lambda x, dim, keepdim: np.mean(x, numpy_axis(dim), keepdims=keepdim)),
    "var": (F.var, lambda x, dim, keepdim: np.var(x, numpy_axis(dim), keepdims=keepdim, ddof=1)),
    "max": (F.max, lambda x, dim, keepdim: np.max(x, numpy_axis(dim), keepdims=keepdim)),
    "min": (F.min, lambda x, dim, keepdim: np.min(x, numpy_axis(dim), keepdims=keepdim)),
}


@pytest.mark.parametrize("name", REDUCTIONS)
@examples
@given(case=shape_dims_keepdim(), seed=st.integers(0, 2**16))
def test_reductions_over_any_dims_match_numpy_and_pass_gradcheck(name, case, seed):
    ours, numpy_reduce = REDUCTIONS[name]
    shape, dim, keepdim = case
    if name == "var" and reduced_count(shape, dim) < 2:
        return  # the unbiased variance of one value is 0/0, as in NumPy and PyTorch
    x = leaf(np.random.default_rng(seed).standard_normal(shape))
    out = ours(x, dim, keepdim=keepdim)
    expected = numpy_reduce(x.data, dim, keepdim)
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert minigen.gradcheck(lambda x: ours(x, dim, keepdim=keepdim), [x])


@examples
@given(case=shape_dims_keepdim(allow_all=False), seed=st.integers(0, 2**16))
def test_logsumexp_over_any_dims_matches_numpy_and_passes_gradcheck(case, seed):
    shape, dim, keepdim = case
    x = leaf(np.random.default_rng(seed).standard_normal(shape) * 3)
    out = F.logsumexp(x, dim, keepdim=keepdim)
    expected = np.log(np.sum(np.exp(x.data), numpy_axis(dim), keepdims=keepdim))  # small values
    np.testing.assert_allclose(out.detach().numpy(), expected)
    assert minigen.gradcheck(lambda x: F.logsumexp(x, dim, keepdim=keepdim), [x])


@examples
@given(case=shape_dims_keepdim(), seed=st.integers(0, 2**16))
def test_max_sends_the_whole_gradient_to_the_maximum(case, seed):
    shape, dim, keepdim = case
    x = leaf(np.random.default_rng(seed).standard_normal(shape))
    F.max(x, dim, keepdim=keepdim).sum().backward()
    is_max = x.data == np.max(x.data, numpy_axis(dim), keepdims=True)
    np.testing.assert_array_equal(x.grad.numpy(), is_max * 1.0)


# ---- shape ops -------------------------------------------------------------------------------------
@examples
@given(shape=small_shapes, data=st.data())
def test_permute_backward_applies_the_inverse_permutation(shape, data):
    dims = data.draw(st.permutations(range(len(shape))))
    x = leaf(np.random.default_rng(0).standard_normal(shape))
    out = x.permute(*dims)
    np.testing.assert_array_equal(out.detach().numpy(), np.transpose(x.data, dims))
    grad_output = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(minigen.tensor(grad_output))
    np.testing.assert_array_equal(x.grad.numpy(), np.transpose(grad_output, np.argsort(dims)))


@st.composite
def factorisations(draw, size: int):
    """A shape of up to four dims whose sizes multiply to `size`."""
    sides, remaining = [], size
    for _ in range(draw(st.integers(0, 3))):
        side = draw(st.sampled_from([d for d in range(1, remaining + 1) if remaining % d == 0]))
        sides.append(side)
        remaining //= side
    return tuple(draw(st.permutations(sides + [remaining])))


@examples
@given(shape=small_shapes, data=st.data())
def test_reshape_to_any_factorisation_and_back(shape, data):
    size = int(np.prod(shape))
    target = data.draw(factorisations(size))
    x = leaf(np.arange(size, dtype=np.float64).reshape(shape))
    out = x.reshape(target)
    np.testing.assert_array_equal(out.detach().numpy(), x.data.reshape(target))
    out.backward(minigen.tensor(np.arange(size, dtype=np.float64).reshape(target)))
    np.testing.assert_array_equal(x.grad.numpy(), x.data)
