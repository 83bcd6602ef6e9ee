"""Pooling and upsampling ops: max_pool2d, avg_pool2d, interpolate (nearest, integer scale).

Each forward has an adjoint kernel for its backward; the adjoint's own backward is the
forward again (for max pooling: a gather at the remembered argmax positions).
"""
from __future__ import annotations

from minigen import backend, kernels
from minigen.ops.conv import pair
from minigen.tensor import Function, Tensor


class MaxPool2d(Function):
    def __init__(self, kernel_size, stride, padding):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        out, self.indices = kernels.for_array(x).max_pool2d_forward(
            x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, grad_output):
        return MaxPoolScatter(self.indices, self.inputs[0].shape)(grad_output)


class MaxPoolScatter(Function):
    """Send each output gradient to its argmax position in the input plane."""

    def __init__(self, indices, input_shape):
        self.indices, self.input_shape = indices, tuple(input_shape)

    def forward(self, grad_output):
        return kernels.for_array(grad_output).max_pool2d_backward(grad_output, self.indices, self.input_shape)

    def backward(self, grad_grad):
        return MaxPoolGather(self.indices, self.input_shape)(grad_grad)


class MaxPoolGather(Function):
    """out[n, c, i] = x[n, c, indices[n, c, i]] (planes flattened): MaxPoolScatter's adjoint."""

    def __init__(self, indices, input_shape):
        self.indices, self.input_shape = indices, tuple(input_shape)

    def forward(self, x):
        N, C = x.shape[:2]
        flat_x = x.reshape(N, C, -1)
        flat_index = self.indices.reshape(N, C, -1)
        return backend.array_module(x).take_along_axis(flat_x, flat_index, axis=2).reshape(self.indices.shape)

    def backward(self, grad_output):
        return MaxPoolScatter(self.indices, self.input_shape)(grad_output)


class AvgPool2d(Function):
    def __init__(self, kernel_size, stride, padding):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return kernels.for_array(x).avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, grad_output):
        return AvgPool2dAdjoint(self)(grad_output)


class AvgPool2dAdjoint(Function):
    def __init__(self, pool: AvgPool2d):
        self.pool = pool
        self.input_shape = pool.inputs[0].shape

    def forward(self, grad_output):
        pool = self.pool
        return kernels.for_array(grad_output).avg_pool2d_backward(
            grad_output, self.input_shape, pool.kernel_size, pool.stride, pool.padding)

    def backward(self, grad_grad):
        pool = self.pool
        return AvgPool2d(pool.kernel_size, pool.stride, pool.padding)(grad_grad)


class UpsampleNearest(Function):
    def __init__(self, scale):
        self.scale = scale

    def forward(self, x):
        return kernels.for_array(x).upsample_nearest2d_forward(x, self.scale)

    def backward(self, grad_output):
        return UpsampleNearestAdjoint(self.scale)(grad_output)


class UpsampleNearestAdjoint(Function):
    """Sum each scale x scale block: the adjoint of nearest upsampling."""

    def __init__(self, scale):
        self.scale = scale

    def forward(self, grad_output):
        return kernels.for_array(grad_output).upsample_nearest2d_backward(grad_output, self.scale)

    def backward(self, grad_grad):
        return UpsampleNearest(self.scale)(grad_grad)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Max over kernel windows (stride defaults to the kernel size, as PyTorch)."""
    kernel_size = pair(kernel_size)
    stride = kernel_size if stride is None else pair(stride)
    return MaxPool2d(kernel_size, stride, pair(padding))(x)


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    """Mean over kernel windows, zero padding counted in the divisor (PyTorch's default)."""
    kernel_size = pair(kernel_size)
    stride = kernel_size if stride is None else pair(stride)
    return AvgPool2d(kernel_size, stride, pair(padding))(x)


def interpolate(x: Tensor, size=None, scale_factor=None, mode: str = "nearest") -> Tensor:
    """Nearest-neighbour upsampling of x (N, C, H, W) by an integer factor (or to a size
    that is a whole multiple of H, W)."""
    if mode != "nearest":
        raise ValueError(f"interpolate: only mode='nearest' is implemented, not {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    if size is not None:
        size = pair(size)
        if size[0] % x.shape[2] or size[1] % x.shape[3]:
            raise ValueError(f"interpolate: size {size} is not a whole multiple of {x.shape[2:]}")
        scale = (size[0] // x.shape[2], size[1] // x.shape[3])
    else:
        factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
        if any(float(f) != int(f) or f < 1 for f in factors):
            raise ValueError(f"interpolate: scale_factor must be a positive integer, got {scale_factor}")
        scale = (int(factors[0]), int(factors[1]))
    return UpsampleNearest(scale)(x)
