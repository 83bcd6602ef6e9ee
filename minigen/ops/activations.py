"""Activations: relu, leaky_relu, silu, gelu, sigmoid, tanh, softplus, softmax, log_softmax,
dropout.

The hot ones (relu, leaky_relu, sigmoid, tanh, silu) are ops of their own with a short
backward; gelu is built from erf so its derivatives of any order follow from the parts.
"""
from __future__ import annotations

import math

from minigen import backend, kernels
from minigen.fusion import fusion_enabled
from minigen.ops.elementwise import constant, erf, exp, where
from minigen.ops.reduce import logsumexp, sum
from minigen.tensor import Function, Tensor, is_grad_enabled


class ReLU(Function):
    def forward(self, x):
        return backend.array_module(x).maximum(x, 0)

    def backward(self, grad_output):
        return where(constant(self.inputs[0].data > 0), grad_output, 0.0)


class LeakyReLU(Function):
    def __init__(self, negative_slope: float):
        self.negative_slope = negative_slope

    def forward(self, x):
        return backend.array_module(x).where(x > 0, x, x * self.negative_slope)

    def backward(self, grad_output):
        return where(constant(self.inputs[0].data > 0), grad_output, grad_output * self.negative_slope)


class Sigmoid(Function):
    """1 / (1 + e^-x), computed as (1 + tanh(x/2)) / 2, which never overflows."""

    def forward(self, x):
        xp = backend.array_module(x)
        return (xp.tanh(x * 0.5) + 1) * 0.5

    def backward(self, grad_output):
        y = self.output_tensors()[0]
        return grad_output * y * (1 - y)


class Tanh(Function):
    def forward(self, x):
        return backend.array_module(x).tanh(x)

    def backward(self, grad_output):
        y = self.output_tensors()[0]
        return grad_output * (1 - y * y)


class SiLU(Function):
    """x * sigmoid(x); d/dx = s (1 + x (1 - s)) with s = sigmoid(x)."""

    def forward(self, x):
        xp = backend.array_module(x)
        return x * ((xp.tanh(x * 0.5) + 1) * 0.5)

    def backward(self, grad_output):
        x = self.inputs[0]
        s = sigmoid(x)
        return grad_output * s * (1 + x * (1 - s))


class Softplus(Function):
    """log(1 + e^x) = logaddexp(0, x); d/dx = sigmoid(x)."""

    def forward(self, x):
        return backend.array_module(x).logaddexp(0, x)

    def backward(self, grad_output):
        return grad_output * sigmoid(self.inputs[0])


class Softmax(Function):
    """y = e^x / sum e^x along dim; dx = y (g - sum(g y)).

    Along the last axis (attention's) with fusion on, forward and the unrecorded backward are
    one kernel each; the recorded backward (create_graph=True) is the Tensor-op formula."""

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, x):
        self.fused = (fusion_enabled() and self.dim in (-1, x.ndim - 1) and x.dtype.char in "fd"
                      and x.size > 0)
        if self.fused:
            return kernels.for_array(x).softmax_forward(x)
        xp = backend.array_module(x)
        shifted = xp.exp(x - x.max(axis=self.dim, keepdims=True))
        return shifted / shifted.sum(axis=self.dim, keepdims=True)

    def backward(self, grad_output):
        y = self.output_tensors()[0]
        if self.fused and not is_grad_enabled():
            return Tensor(kernels.for_array(y.data).softmax_backward(grad_output.data, y.data))
        return y * (grad_output - sum(grad_output * y, self.dim, keepdim=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x); dx = g - softmax(x) sum(g)."""

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, x):
        xp = backend.array_module(x)
        shifted = x - x.max(axis=self.dim, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=self.dim, keepdims=True))

    def backward(self, grad_output):
        y = self.output_tensors()[0]
        return grad_output - exp(y) * sum(grad_output, self.dim, keepdim=True)


# relu, leaky_relu and silu go through bias_act (without a bias): with fusion on, one threaded
# kernel forward and one backward; with fusion off, the ops above.
from minigen.ops.bias_act import bias_act  # noqa: E402


def relu(x: Tensor) -> Tensor:
    return bias_act(x, act="relu")


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return bias_act(x, act="leaky_relu", alpha=negative_slope)


def sigmoid(x: Tensor) -> Tensor:
    return Sigmoid()(x)


def tanh(x: Tensor) -> Tensor:
    return Tanh()(x)


def silu(x: Tensor) -> Tensor:
    return bias_act(x, act="silu")


def softplus(x: Tensor) -> Tensor:
    return Softplus()(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x Phi(x) with Phi the normal CDF (exact, via erf) or its tanh approximation."""
    if approximate == "tanh":
        inner = (x + 0.044715 * x * x * x) * math.sqrt(2 / math.pi)
        return 0.5 * x * (1 + tanh(inner))
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', not {approximate!r}")
    return 0.5 * x * (1 + erf(x * (1 / math.sqrt(2))))


def softmax(x: Tensor, dim: int) -> Tensor:
    return Softmax(dim)(x)


def log_softmax(x: Tensor, dim: int) -> Tensor:
    return LogSoftmax(dim)(x)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    keep = backend.generator(x.device).uniform(x.shape, x.dtype) >= p
    return x * constant(keep.astype(x.dtype) / (1 - p))


__all__ = ["relu", "leaky_relu", "sigmoid", "tanh", "silu", "softplus", "gelu", "softmax",
           "log_softmax", "logsumexp", "dropout"]
