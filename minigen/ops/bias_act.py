"""bias_act: y = act(x + bias) as one op, the fused form of a layer's bias add and the
activation after it (linear, relu, leaky_relu, silu).

With fusion on (minigen.fusion_enabled()) the forward is one threaded kernel and so is the
backward, which gives the input's and the bias's gradient in the same pass. Under
create_graph=True the backward is built from differentiable ops instead, so second
derivatives (gradient penalties) go through it. With fusion off, bias_act is the chain of
plain ops it replaces: x + bias, then the activation's own op.
"""
from __future__ import annotations

from minigen import kernels
from minigen.fusion import fusion_enabled
from minigen.ops.elementwise import constant, sum_to, where
from minigen.tensor import Function, Tensor, _as_tensor, is_grad_enabled

ACTIVATIONS = ("linear", "relu", "leaky_relu", "silu")
DEFAULT_ALPHA = 0.01  # leaky_relu's negative slope when none is given, as F.leaky_relu


def _bias_shape(ndim: int, dim: int, channels: int) -> tuple:
    """(1, ..., C, ..., 1): the shape that broadcasts a bias along axis `dim`."""
    return tuple(channels if axis == dim else 1 for axis in range(ndim))


def _activation_grad(z: Tensor, grad_output: Tensor, act: str, alpha: float) -> Tensor:
    """grad_output * act'(z), from differentiable ops (the create_graph path)."""
    if act == "relu":
        return where(constant(z.data > 0), grad_output, 0.0)
    if act == "leaky_relu":
        return where(constant(z.data > 0), grad_output, grad_output * alpha)
    if act == "silu":
        from minigen.ops.activations import sigmoid
        s = sigmoid(z)
        return grad_output * s * (1 + z * (1 - s))
    return grad_output


class BiasAct(Function):
    """y = act(x + b), b (C,) along axis `dim` of x (or no bias); grad_z = g act'(x + b),
    grad_x = grad_z, grad_b = grad_z summed over every other axis."""

    def __init__(self, dim: int, act: str, alpha: float):
        self.dim, self.act, self.alpha = dim, act, alpha

    def forward(self, x, bias=None):
        return kernels.for_array(x).bias_act_forward(x, bias, self.dim, self.act, self.alpha)

    def backward(self, grad_output):
        x = self.inputs[0]
        bias = self.inputs[1] if len(self.inputs) > 1 else None
        if not is_grad_enabled():  # no graph to build: the fused kernel
            grad_x, grad_bias = kernels.for_array(x.data).bias_act_backward(
                grad_output.data, x.data, None if bias is None else bias.data, self.dim,
                self.act, self.alpha)
            grads = (Tensor(grad_x) if self.needs_grad[0] else None,)
            return grads if bias is None else grads + (
                Tensor(grad_bias) if self.needs_grad[1] else None,)
        shape = None if bias is None else _bias_shape(x.ndim, self.dim, bias.shape[0])
        z = x if bias is None else x + bias.reshape(*shape)
        grad_z = _activation_grad(z, grad_output, self.act, self.alpha)
        if bias is None:
            return grad_z
        return grad_z, sum_to(grad_z, shape).reshape(bias.shape[0])


def _composed(x: Tensor, bias: Tensor | None, dim: int, act: str, alpha: float) -> Tensor:
    """The unfused chain: the broadcast add, then the activation's own op."""
    from minigen.ops.activations import LeakyReLU, ReLU, SiLU
    z = x if bias is None else x + bias.reshape(*_bias_shape(x.ndim, dim, bias.shape[0]))
    if act == "relu":
        return ReLU()(z)
    if act == "leaky_relu":
        return LeakyReLU(alpha)(z)
    if act == "silu":
        return SiLU()(z)
    return z


def bias_act(x: Tensor, bias: Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None) -> Tensor:
    """act(x + bias) with bias (C,) broadcast along axis `dim` of x (1: NCHW channels; -1: a
    linear layer's features); act: linear, relu, leaky_relu (negative slope alpha, default
    0.01) or silu. x (..., C, ...) -> the same shape."""
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: act must be one of {', '.join(ACTIVATIONS)}, not {act!r}")
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    x = _as_tensor(x)
    if bias is None:
        dim = 0  # unused: no bias to place
    elif not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act: dim {dim} is out of range for an input of shape {x.shape}")
    else:
        dim %= x.ndim
        if bias.ndim != 1 or bias.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias has shape {bias.shape} but the input has "
                             f"{x.shape[dim]} channels along dim {dim} (input shape {x.shape})")
    fusable = fusion_enabled() and x.dtype.kind == "f" and (
        bias is None or bias.dtype == x.dtype)
    if not fusable:
        return _composed(x, bias, dim, act, alpha)
    function = BiasAct(dim, act, alpha)
    return function(x) if bias is None else function(x, bias)
