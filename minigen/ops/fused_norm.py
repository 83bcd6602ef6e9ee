"""Fused normalisation ops: group norm (+ affine, + SiLU) and batch norm as one op each.

norm.py builds the same functions from Standardize, broadcasting and SiLU (a handful of ops,
each a pass over memory); these ops run one kernel of minigen.kernels forward and one
backward instead. The backward uses the fused kernel when no graph is being recorded; with
create_graph=True it returns the same gradient built from Tensor ops, so second derivatives
(gradient penalties) go through. norm.py picks these when minigen.fusion_enabled().
"""
from __future__ import annotations

from minigen import kernels
from minigen.ops.activations import sigmoid
from minigen.ops.elementwise import constant
from minigen.ops.reduce import mean, sum
from minigen.tensor import Function, Tensor, is_grad_enabled


def _standardized_grad(grad_hat: Tensor, x_hat: Tensor, rstd: Tensor, axes: tuple) -> Tensor:
    """The gradient at x of x_hat = (x - mean) * rstd, means over axes, given the gradient
    grad_hat at x_hat: rstd * (grad_hat - mean(grad_hat) - x_hat * mean(grad_hat * x_hat))."""
    return rstd * (grad_hat - mean(grad_hat, axes, keepdim=True)
                   - x_hat * mean(grad_hat * x_hat, axes, keepdim=True))


def _standardize(x: Tensor, axes: tuple, eps: float) -> tuple[Tensor, Tensor]:
    """x_hat and rstd of x over axes, as differentiable functions of x."""
    centred = x - mean(x, axes, keepdim=True)
    rstd = (mean(centred * centred, axes, keepdim=True) + eps) ** -0.5
    return centred * rstd, rstd


def _kernel_grads(function: Function, grads) -> tuple:
    """Kernel arrays as Tensors in the inputs' dtypes; None for inputs that need none."""
    return tuple(Tensor(grad.astype(x.dtype, copy=False)) if needs else None
                 for x, needs, grad in zip(function.inputs, function.needs_grad, grads))


class GroupNormActivation(Function):
    """y = act(x_hat * weight + bias), x_hat = x standardised over each (sample, group) of
    C / num_groups channels, act = SiLU (silu=True) or the identity. Inputs x (N, C, *),
    weight (C,), bias (C,)."""

    def __init__(self, num_groups: int, eps: float, silu: bool):
        self.num_groups, self.eps, self.silu = num_groups, eps, silu

    def forward(self, x, weight, bias):
        y, self.mean, self.rstd = kernels.for_array(x).group_norm_forward(
            x, self.num_groups, weight, bias, self.eps, self.silu)
        return y

    def backward(self, grad_output):
        x, weight, bias = self.inputs
        if not is_grad_enabled():
            return _kernel_grads(self, kernels.for_array(x.data).group_norm_backward(
                grad_output.data, x.data, self.mean, self.rstd, self.num_groups, weight.data,
                bias.data, self.silu))
        # Recorded (second order): the same chain rule in Tensor ops, from the inputs.
        N, C = x.shape[0], x.shape[1]
        x_hat, rstd = _standardize(x.reshape(N, self.num_groups, -1), (2,), self.eps)
        x_hat = x_hat.reshape(N, C, -1)
        grad = grad_output.reshape(N, C, -1)
        if self.silu:
            z = x_hat * weight.reshape(1, C, 1) + bias.reshape(1, C, 1)
            s = sigmoid(z)
            grad = grad * s * (1 + z * (1 - s))
        grad_hat = (grad * weight.reshape(1, C, 1)).reshape(N, self.num_groups, -1)
        grad_x = _standardized_grad(grad_hat, x_hat.reshape(N, self.num_groups, -1), rstd, (2,))
        return (grad_x.reshape(x.shape), sum(grad * x_hat, (0, 2)) if self.needs_grad[1] else None,
                sum(grad, (0, 2)) if self.needs_grad[2] else None)


class BatchNorm(Function):
    """y = x_hat * weight + bias, x_hat = x standardised per channel over (N, *): with the
    batch's statistics in training (updating running_mean / running_var in place when given,
    as PyTorch does), with the running ones otherwise. Inputs x (N, C, *), weight, bias (C,)."""

    def __init__(self, running_mean, running_var, training: bool, momentum: float, eps: float):
        self.running_mean, self.running_var = running_mean, running_var  # arrays or None
        self.training, self.momentum, self.eps = training, momentum, eps

    def forward(self, x, weight, bias):
        y, self.mean, self.rstd = kernels.for_array(x).batch_norm_forward(
            x, weight, bias, self.running_mean, self.running_var, self.training, self.momentum,
            self.eps)
        return y

    def backward(self, grad_output):
        x, weight, bias = self.inputs
        if not is_grad_enabled():
            return _kernel_grads(self, kernels.for_array(x.data).batch_norm_backward(
                grad_output.data, x.data, self.mean, self.rstd, weight.data, self.training))
        N, C = x.shape[0], x.shape[1]
        planes, grad = x.reshape(N, C, -1), grad_output.reshape(N, C, -1)
        grad_hat = grad * weight.reshape(1, C, 1)
        if self.training:
            x_hat, rstd = _standardize(planes, (0, 2), self.eps)
            grad_x = _standardized_grad(grad_hat, x_hat, rstd, (0, 2))
        else:  # the running statistics are constants
            rstd = constant(self.rstd.reshape(1, C, 1).astype(x.dtype))
            x_hat = (planes - constant(self.mean.reshape(1, C, 1).astype(x.dtype))) * rstd
            grad_x = grad_hat * rstd
        return (grad_x.reshape(x.shape), sum(grad * x_hat, (0, 2)) if self.needs_grad[1] else None,
                sum(grad, (0, 2)) if self.needs_grad[2] else None)
