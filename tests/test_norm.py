"""The normalisation ops (group_norm, batch_norm, layer_norm): values and running statistics
against PyTorch, first derivatives by gradcheck in float64, second derivatives by gradgradcheck
(the U-Net's group_norm sits under gradient penalties)."""
import numpy as np
import pytest

import minigen
import minigen.functional as F
from helpers import assert_close, import_torch

rng = np.random.default_rng(0)


def tensors(*shapes, requires_grad=True):
    return [minigen.Tensor(rng.standard_normal(shape), requires_grad=requires_grad)
            for shape in shapes]


def as_torch(*xs):
    torch = import_torch()
    return [torch.tensor(x.data) for x in xs]


@pytest.mark.parametrize("shape, groups", [((2, 6, 3, 4), 3), ((3, 4, 5, 5), 1), ((2, 4, 3, 3), 4),
                                           ((2, 8, 7), 2)])
def test_group_norm_matches_torch(shape, groups):
    torch = import_torch()
    x, weight, bias = tensors(shape, shape[1:2], shape[1:2])
    expected = torch.nn.functional.group_norm(*as_torch(x), groups, *as_torch(weight, bias))
    assert_close(F.group_norm(x, groups, weight, bias).detach().numpy(), expected.numpy())


@pytest.mark.parametrize("shape, normalized_shape", [((4, 5), (5,)), ((2, 3, 4, 5), (4, 5)),
                                                     ((2, 3, 6), 6)])
def test_layer_norm_matches_torch(shape, normalized_shape):
    torch = import_torch()
    trailing = shape[-2:] if normalized_shape == (4, 5) else shape[-1:]
    x, weight, bias = tensors(shape, trailing, trailing)
    expected = torch.nn.functional.layer_norm(*as_torch(x), trailing, *as_torch(weight, bias))
    assert_close(F.layer_norm(x, normalized_shape, weight, bias).detach().numpy(), expected.numpy())


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4), (3, 2, 7)])
def test_batch_norm_in_training_matches_torch_and_updates_running_statistics(shape):
    torch = import_torch()
    x, weight, bias = tensors(shape, shape[1:2], shape[1:2])
    running_mean, running_var = tensors(shape[1:2], shape[1:2], requires_grad=False)
    running_var.data[...] = np.abs(running_var.data) + 0.5
    torch_mean, torch_var = as_torch(running_mean, running_var)
    expected = torch.nn.functional.batch_norm(*as_torch(x), torch_mean, torch_var,
                                              *as_torch(weight, bias), training=True, momentum=0.3)
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=0.3)
    assert_close(out.detach().numpy(), expected.numpy())
    assert_close(running_mean.numpy(), torch_mean.numpy())
    assert_close(running_var.numpy(), torch_var.numpy())


def test_batch_norm_in_eval_uses_running_statistics_and_leaves_them_unchanged():
    torch = import_torch()
    x, weight, bias = tensors((4, 3, 2, 2), (3,), (3,))
    running_mean = minigen.Tensor(np.array([0.5, -1.0, 2.0]))
    running_var = minigen.Tensor(np.array([1.5, 0.25, 4.0]))
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training=False)
    expected = torch.nn.functional.batch_norm(*as_torch(x, running_mean, running_var, weight, bias),
                                              training=False)
    assert_close(out.detach().numpy(), expected.numpy())
    assert running_mean.tolist() == [0.5, -1.0, 2.0] and running_var.tolist() == [1.5, 0.25, 4.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_ops_keep_the_input_dtype(dtype):
    x = minigen.randn(2, 4, 3, 3, dtype=dtype)
    assert F.group_norm(x, 2).dtype == dtype
    assert F.layer_norm(x, (3, 3)).dtype == dtype
    assert F.batch_norm(x, None, None, training=True).dtype == dtype


NORM_CASES = {
    "group_norm": lambda x, weight, bias: F.group_norm(x, 2, weight, bias),
    "group_norm_one_group": lambda x, weight, bias: F.group_norm(x, 1, weight, bias),
    "batch_norm_training": lambda x, weight, bias: F.batch_norm(x, None, None, weight, bias,
                                                                 training=True),
    "layer_norm_over_channels": lambda x, weight, bias: F.layer_norm(x.transpose(1, 3), (4,),
                                                                     weight, bias),
    "layer_norm_without_affine": lambda x, weight, bias: F.layer_norm(x, x.shape[1:]) * weight.sum(),
}


@pytest.mark.parametrize("name", list(NORM_CASES))
def test_norm_gradients_pass_gradcheck_in_float64(name):
    x, weight, bias = tensors((2, 4, 3, 3), (4,), (4,))
    assert minigen.gradcheck(NORM_CASES[name], (x, weight, bias))


@pytest.mark.parametrize("name", list(NORM_CASES))
def test_norm_second_derivatives_pass_gradgradcheck_in_float64(name):
    x, weight, bias = tensors((2, 4, 2, 2), (4,), (4,))
    assert minigen.gradgradcheck(NORM_CASES[name], (x, weight, bias))


def test_group_norm_gradient_penalty_matches_torch():
    """d/dw of |d(sum group_norm(x w))/dx|^2: the shape of a WGAN-GP / R1 penalty."""
    torch = import_torch()
    x, weight = tensors((2, 4, 3, 3), (4,))
    out = F.group_norm(x * weight.reshape(1, 4, 1, 1), 2).tanh().sum()
    (grad_x,) = minigen.grad(out, [x], create_graph=True)
    (grad_x * grad_x).sum().backward()
    x_t, weight_t = (t.requires_grad_() for t in as_torch(x, weight))
    out_t = torch.nn.functional.group_norm(x_t * weight_t.reshape(1, 4, 1, 1), 2).tanh().sum()
    (grad_x_t,) = torch.autograd.grad(out_t, [x_t], create_graph=True)
    (grad_x_t * grad_x_t).sum().backward()
    assert_close(weight.grad.numpy(), weight_t.grad.numpy())
    assert_close(x.grad.numpy(), x_t.grad.numpy())


def test_group_norm_rejects_channels_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="6 channels .* cannot be split into 4 groups"):
        F.group_norm(minigen.randn(2, 6, 3, 3), 4)


def test_batch_norm_in_eval_without_running_statistics_says_what_to_pass():
    with pytest.raises(ValueError, match="running_mean and running_var are needed"):
        F.batch_norm(minigen.randn(2, 3, 2, 2), None, None, training=False)
