"""Elementwise ops: arithmetic with broadcasting, powers, exp/log, trig, clamps, where.

Broadcasting is undone in backward by `sum_to`, whose own backward is `broadcast_to`:
the pair keeps every gradient the shape of its input, to any order of differentiation.
"""
from __future__ import annotations

import math

import numpy as np

from minigen import backend, kernels
from minigen.tensor import Function, Tensor, _as_tensor


def constant(array) -> Tensor:
    """A Tensor that never needs a gradient (masks, saved factors)."""
    return Tensor(array)


# ---- broadcasting ------------------------------------------------------------------------
class SumTo(Function):
    """Sum a broadcast gradient back down to `shape`."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        lead = x.ndim - len(self.shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, size in enumerate(self.shape) if size == 1 and x.shape[lead + i] != 1)
        return x.sum(axis=axes, keepdims=True).reshape(self.shape)

    def backward(self, grad_output):
        return broadcast_to(grad_output, self.inputs[0].shape)


class BroadcastTo(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        return backend.array_module(x).broadcast_to(x, self.shape)

    def backward(self, grad_output):
        return sum_to(grad_output, self.inputs[0].shape)


def sum_to(x: Tensor, shape) -> Tensor:
    return x if x.shape == tuple(shape) else SumTo(shape)(x)


def broadcast_to(x: Tensor, shape) -> Tensor:
    return x if x.shape == tuple(shape) else BroadcastTo(shape)(x)


# ---- arithmetic --------------------------------------------------------------------------
class Add(Function):
    def forward(self, a, b):
        return kernels.for_array(a).add(a, b)  # threaded on the CPU for large arrays

    def backward(self, grad_output):
        a, b = self.inputs
        return sum_to(grad_output, a.shape), sum_to(grad_output, b.shape)


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, grad_output):
        a, b = self.inputs
        grad_b = sum_to(-grad_output, b.shape) if self.needs_grad[1] else None
        return sum_to(grad_output, a.shape), grad_b


class Mul(Function):
    def forward(self, a, b):
        return a * b

    def backward(self, grad_output):
        a, b = self.inputs
        grad_a = sum_to(grad_output * b, a.shape) if self.needs_grad[0] else None
        grad_b = sum_to(grad_output * a, b.shape) if self.needs_grad[1] else None
        return grad_a, grad_b


class Div(Function):
    def forward(self, a, b):
        return a / b

    def backward(self, grad_output):
        a, b = self.inputs
        grad_a = sum_to(grad_output / b, a.shape) if self.needs_grad[0] else None
        grad_b = sum_to(-grad_output * a / (b * b), b.shape) if self.needs_grad[1] else None
        return grad_a, grad_b


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, grad_output):
        return -grad_output


class PowScalar(Function):
    """x ** p for a constant exponent p: d/dx = p x^(p-1)."""

    def __init__(self, exponent: float):
        self.exponent = exponent

    def forward(self, x):
        return x ** self.exponent

    def backward(self, grad_output):
        x = self.inputs[0]
        if self.exponent == 2:
            return grad_output * x * 2
        return grad_output * self.exponent * (x ** (self.exponent - 1))


class Pow(Function):
    """a ** b with both tensors: d/da = b a^(b-1), d/db = a^b log a."""

    def forward(self, a, b):
        return a ** b

    def backward(self, grad_output):
        a, b = self.inputs
        grad_a = sum_to(grad_output * b * a ** (b - 1), a.shape) if self.needs_grad[0] else None
        grad_b = sum_to(grad_output * self.output_tensors()[0] * log(a), b.shape) \
            if self.needs_grad[1] else None
        return grad_a, grad_b


class Exp(Function):
    def forward(self, x):
        return backend.array_module(x).exp(x)

    def backward(self, grad_output):
        return grad_output * self.output_tensors()[0]


class Log(Function):
    def forward(self, x):
        return backend.array_module(x).log(x)

    def backward(self, grad_output):
        return grad_output / self.inputs[0]


class Sqrt(Function):
    def forward(self, x):
        return backend.array_module(x).sqrt(x)

    def backward(self, grad_output):
        return grad_output / (self.output_tensors()[0] * 2)


class Sin(Function):
    def forward(self, x):
        return backend.array_module(x).sin(x)

    def backward(self, grad_output):
        return grad_output * cos(self.inputs[0])


class Cos(Function):
    def forward(self, x):
        return backend.array_module(x).cos(x)

    def backward(self, grad_output):
        return -grad_output * sin(self.inputs[0])


class Abs(Function):
    def forward(self, x):
        return backend.array_module(x).abs(x)

    def backward(self, grad_output):
        x = self.inputs[0].data
        return grad_output * constant(backend.array_module(x).sign(x))


class Erf(Function):
    """erf(x); d/dx = 2/sqrt(pi) exp(-x^2). GELU is built on it."""

    def forward(self, x):
        return backend.erf(x)

    def backward(self, grad_output):
        x = self.inputs[0]
        return grad_output * exp(-(x * x)) * (2.0 / math.sqrt(math.pi))


class Clamp(Function):
    """Gradient passes where min <= x <= max, as in PyTorch."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, x):
        return backend.array_module(x).clip(x, self.low, self.high)

    def backward(self, grad_output):
        x = self.inputs[0].data
        inside = True
        if self.low is not None:
            inside = inside & (x >= self.low)
        if self.high is not None:
            inside = inside & (x <= self.high)
        return where(constant(inside), grad_output, 0.0)


class Maximum(Function):
    """Elementwise max; at ties the gradient is shared half and half, as in PyTorch."""

    sign = 1

    def forward(self, a, b):
        xp = backend.array_module(a)
        return xp.maximum(a, b) if self.sign > 0 else xp.minimum(a, b)

    def backward(self, grad_output):
        a, b = self.inputs
        diff = (a.data - b.data) * self.sign
        share_a = constant(((diff > 0) + 0.5 * (diff == 0)).astype(grad_output.dtype))
        grad_a = sum_to(grad_output * share_a, a.shape) if self.needs_grad[0] else None
        grad_b = sum_to(grad_output * (1 - share_a), b.shape) if self.needs_grad[1] else None
        return grad_a, grad_b


class Minimum(Maximum):
    sign = -1


class Where(Function):
    """condition ? a : b, for a constant boolean condition."""

    def __init__(self, condition):
        self.condition = condition

    def forward(self, a, b):
        return backend.array_module(a).where(self.condition, a, b)

    def backward(self, grad_output):
        a, b = self.inputs
        zero = grad_output.data.dtype.type(0)
        grad_a = sum_to(Where(self.condition)(grad_output, zero), a.shape) \
            if self.needs_grad[0] else None
        grad_b = sum_to(Where(self.condition)(zero, grad_output), b.shape) \
            if self.needs_grad[1] else None
        return grad_a, grad_b


class Cast(Function):
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def forward(self, x):
        return x.astype(self.dtype)

    def backward(self, grad_output):
        return Cast(self.inputs[0].dtype)(grad_output)


class ToDevice(Function):
    def __init__(self, device: str):
        self.device = device

    def forward(self, x):
        return backend.to_device(x, self.device)

    def backward(self, grad_output):
        return ToDevice(self.inputs[0].device)(grad_output)


# ---- the functional forms ------------------------------------------------------------------
def add(a, b): return Add()(a, b)
def sub(a, b): return Sub()(a, b)
def mul(a, b): return Mul()(a, b)
def div(a, b): return Div()(a, b)
def neg(x): return Neg()(x)
def exp(x): return Exp()(x)
def log(x): return Log()(x)
def sqrt(x): return Sqrt()(x)
def sin(x): return Sin()(x)
def cos(x): return Cos()(x)
def abs(x): return Abs()(x)
def erf(x): return Erf()(x)
def maximum(a, b): return Maximum()(a, b)
def minimum(a, b): return Minimum()(a, b)


def pow(base, exponent):
    if isinstance(exponent, Tensor):
        return Pow()(base, exponent)
    return PowScalar(exponent)(base)


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise ValueError("clamp: give at least one of min and max")
    return Clamp(min, max)(x)


def where(condition, a, b) -> Tensor:
    """Pick from a where condition holds, else from b (condition is never differentiated)."""
    if isinstance(condition, Tensor):
        condition = condition.data
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    if like is None:
        return Tensor(backend.array_module(condition).where(condition, a, b))
    return Where(condition)(_as_tensor(a, like), _as_tensor(b, like))
