"""Reductions: sum, mean, var, std, max, min, logsumexp, norm (dim and keepdim as PyTorch).

Backward of a reduction broadcasts the gradient back over the reduced axes; max and min
send it to the positions that attained the extreme (shared evenly among ties).
"""
from __future__ import annotations

from minigen import backend
from minigen.ops.elementwise import broadcast_to, constant, sqrt
from minigen.tensor import Function, Tensor


def _axes(dim, ndim: int):
    """Normalise dim (None, int or sequence) to a sorted tuple of non-negative axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -ndim <= d < ndim:
            raise IndexError(f"dim {d} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(d % ndim for d in dims))


def _keepdim_shape(shape, axes):
    return tuple(1 if i in axes else size for i, size in enumerate(shape))


class Sum(Function):
    def __init__(self, dim=None, keepdim=False):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdim)

    def backward(self, grad_output):
        shape = self.inputs[0].shape
        if not self.keepdim:
            grad_output = grad_output.reshape(_keepdim_shape(shape, self.axes))
        return broadcast_to(grad_output, shape)


class Extreme(Function):
    """max (sign=+1) or min (sign=-1) over dims; ties share the gradient evenly."""

    def __init__(self, dim=None, keepdim=False, sign=1):
        self.dim, self.keepdim, self.sign = dim, keepdim, sign

    def forward(self, x):
        self.axes = _axes(self.dim, x.ndim)
        if x.size == 0:
            raise ValueError("max/min of an empty tensor")
        reduce_fn = x.max if self.sign > 0 else x.min
        return reduce_fn(axis=self.axes, keepdims=self.keepdim)

    def backward(self, grad_output):
        x = self.inputs[0]
        shape = _keepdim_shape(x.shape, self.axes)
        extreme = self.output_tensors()[0].data.reshape(shape)
        hits = (x.data == extreme).astype(x.dtype)
        share = hits / hits.sum(axis=self.axes, keepdims=True)
        return broadcast_to(grad_output.reshape(shape), x.shape) * constant(share)


def sum(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return Sum(dim, keepdim)(x)


def _count(x: Tensor, dim) -> int:
    count = 1
    for axis in _axes(dim, x.ndim):
        count *= x.shape[axis]
    return count


def mean(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return Sum(dim, keepdim)(x) / _count(x, dim)


def var(x: Tensor, dim=None, keepdim: bool = False, unbiased: bool = True) -> Tensor:
    """Mean squared deviation, divided by n - 1 when unbiased (PyTorch's default)."""
    count = _count(x, dim)
    deviation = x - mean(x, dim, keepdim=True)
    return sum(deviation * deviation, dim, keepdim) / (count - 1 if unbiased else count)


def std(x: Tensor, dim=None, keepdim: bool = False, unbiased: bool = True) -> Tensor:
    return sqrt(var(x, dim, keepdim, unbiased))


def max(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return Extreme(dim, keepdim, sign=1)(x)


def min(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return Extreme(dim, keepdim, sign=-1)(x)


def logsumexp(x: Tensor, dim, keepdim: bool = False) -> Tensor:
    """log sum exp(x), shifted by the (constant) max so that it never overflows."""
    from minigen.ops.elementwise import exp, log
    axes = _axes(dim, x.ndim)
    xp = backend.array_module(x.data)
    peak = x.data.max(axis=axes, keepdims=True)
    shift = constant(xp.where(xp.isfinite(peak), peak, 0))  # an all -inf row shifts by 0
    result = log(sum(exp(x - shift), dim, keepdim=True)) + shift
    return result if keepdim else result.reshape(tuple(
        size for i, size in enumerate(result.shape) if i not in axes))


def norm(x: Tensor) -> Tensor:
    """The Euclidean norm of all elements."""
    return sqrt(sum(x * x))


def argmax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    index = x.data.argmax(axis=dim)
    return Tensor(index if not keepdim or dim is None else index.reshape(
        _keepdim_shape(x.shape, _axes(dim, x.ndim))))


def argmin(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return argmax(-x.detach(), dim, keepdim)
