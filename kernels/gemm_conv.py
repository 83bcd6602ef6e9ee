"""Convolution as im2col + GEMM on a (C_in*kH*kW, samples*H_out*W_out) column matrix: the
CUDA backend's algorithm, and the 1x1 and transposed-kernel pieces both backends share.

im2col copies every kernel window of a chunk of samples into the columns of one matrix, so that
conv2d becomes one large matrix product with the (C_out, C_in*kH*kW) weight (the shape cuBLAS
is fastest at); col2im is its adjoint (a scatter-add back into the image). A backend supplies
its array module (NumPy or CuPy) and its two copy kernels; the batch is split into chunks whose
columns stay under a byte budget. The CPU backend (cpu_conv.py) lays its columns out per sample
instead, which its caches prefer.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from .geometry import (Pair, conv2d_backward_input_args, conv2d_backward_weight_args,
                       conv2d_forward_args)


@dataclass(frozen=True)
class Im2col:
    """A backend's pieces: `im2col(x, n_start, cols, kernel, stride, padding, dilation, out_hw)`
    fills cols (rows, B*H_out*W_out) from samples n_start.. of x; `col2im(cols, grad_x, n_start,
    ...same geometry)` adds cols back into those samples of grad_x."""
    xp: ModuleType
    im2col: Callable
    col2im: Callable
    budget_bytes: int


class _ConvPlan:
    """The shapes of one conv2d and the chunking of its batch, shared by the three passes."""

    def __init__(self, backend: Im2col, input_shape, weight_shape, stride, padding, dilation,
                 groups, out_hw, dtype):
        self.xp = backend.xp
        self.batch = input_shape[0]
        self.out_channels, channels_per_group, k_h, k_w = weight_shape
        self.groups = groups
        self.rows = channels_per_group * groups * k_h * k_w  # rows of the column matrix
        self.pixels = out_hw[0] * out_hw[1]
        self.geometry = ((k_h, k_w), stride, padding, dilation, tuple(out_hw))
        sample_bytes = self.rows * self.pixels * dtype.itemsize
        self.chunk = max(1, min(self.batch, backend.budget_bytes // sample_bytes))
        self._columns = self.xp.empty(self.rows * self.chunk * self.pixels, dtype)

    def chunks(self):
        """(first sample, number of samples) of each chunk."""
        for start in range(0, self.batch, self.chunk):
            yield start, min(self.chunk, self.batch - start)

    def columns(self, count: int):
        """The (rows, count * pixels) column buffer for a chunk of `count` samples."""
        return self._columns[:self.rows * count * self.pixels].reshape(self.rows, -1)

    def by_group(self, matrix):
        return by_group(matrix, self.groups)

    def output_columns(self, grad_output, start: int, count: int):
        """grad_output[start:start+count] as a (C_out, count * pixels) matrix; a copy only
        when the chunk holds more than one sample."""
        block = grad_output[start:start + count].reshape(count, self.out_channels, self.pixels)
        if count == 1:
            return block[0]
        return self.xp.ascontiguousarray(block.transpose(1, 0, 2)).reshape(self.out_channels, -1)


def transposed_kernel(xp, weight, groups: int):
    """(C_out, C_in/g, kH, kW) -> (C_in, C_out/g, kH, kW), flipped in space: the weight of the
    convolution that maps grad_output to grad_x when the stride is 1."""
    c_out, c_group, k_h, k_w = weight.shape
    by_group = weight.reshape(groups, c_out // groups, c_group, k_h, k_w)
    flipped = by_group[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return xp.ascontiguousarray(flipped).reshape(c_group * groups, c_out // groups, k_h, k_w)


def full_padding(weight_shape, padding: Pair, dilation: Pair) -> tuple:
    """The padding d*(k-1) - p under which the stride-1 input gradient is a convolution of
    grad_output with transposed_kernel; negative when the forward padding exceeds it."""
    return tuple(d * (k - 1) - p for k, p, d in zip(weight_shape[2:], padding, dilation))


def is_pointwise(weight_shape, stride: Pair, padding: Pair) -> bool:
    """A 1x1 kernel with stride 1 and no padding: the convolution is a plain matrix product."""
    return tuple(weight_shape[2:]) == (1, 1) and stride == (1, 1) and padding == (0, 0)


def by_group(matrices, groups: int):
    """View (..., channels, columns) as (..., groups, channels / groups, columns), so that
    matmul pairs up the groups of a weight and of its columns."""
    *lead, channels, columns = matrices.shape
    return matrices.reshape(*lead, groups, channels // groups, columns)


def _images_by_group(images, groups: int):
    """NCHW images as (N, groups, C/g, H*W): each sample's image is its 1x1 column matrix."""
    return by_group(images.reshape(*images.shape[:2], -1), groups)


def pointwise_forward(xp, x, weight, groups: int, out_hw, out=None):
    """A 1x1 convolution: each sample's (C_in, H*W) image is already its column matrix.
    out: the (N, C_out, *out_hw) array to write, or None for a new one."""
    product = xp.matmul(by_group(weight.reshape(weight.shape[0], -1), groups),
                        _images_by_group(x, groups),
                        out=None if out is None else _images_by_group(out, groups))
    return product.reshape(x.shape[0], -1, *out_hw) if out is None else out


def pointwise_backward_input(xp, grad_output, weight, groups: int, input_shape, out=None):
    """The input gradient of a 1x1 convolution: weight^T @ grad_output[n], group by group.
    out: the input_shape array to write, or None for a new one."""
    product = xp.matmul(by_group(weight.reshape(weight.shape[0], -1), groups).swapaxes(-1, -2),
                        _images_by_group(grad_output, groups),
                        out=None if out is None else _images_by_group(out, groups))
    return product.reshape(input_shape) if out is None else out


def pointwise_backward_weight(xp, grad_output, x, groups: int, weight_shape):
    """The sum over samples of grad_output[n] (C_out, H*W) @ x[n]^T, group by group."""
    per_sample = xp.matmul(_images_by_group(grad_output, groups),
                           _images_by_group(x, groups).swapaxes(-1, -2))
    return per_sample.sum(axis=0).reshape(weight_shape)


def conv2d_forward(backend: Im2col, x, weight, stride: Pair, padding: Pair, dilation: Pair,
                   groups: int):
    """Cross-correlation as PyTorch's conv2d, without bias.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW) -> (N, C_out, H_out, W_out).
    """
    stride, padding, dilation, out_hw = conv2d_forward_args(x, weight, stride, padding,
                                                            dilation, groups)
    xp = backend.xp
    x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
    if is_pointwise(weight.shape, stride, padding):
        return pointwise_forward(xp, x, weight, groups, out_hw)
    plan = _ConvPlan(backend, x.shape, weight.shape, stride, padding, dilation, groups, out_hw,
                     x.dtype)
    weight_matrix = plan.by_group(weight.reshape(plan.out_channels, -1))
    y = xp.empty((plan.batch, plan.out_channels, *out_hw), dtype=x.dtype)
    for start, count in plan.chunks():
        cols = backend.im2col(x, start, plan.columns(count), *plan.geometry)
        if count == 1:  # the product is already in NCHW order: write it in place
            xp.matmul(weight_matrix, plan.by_group(cols),
                      out=y[start].reshape(groups, plan.out_channels // groups, -1))
            continue
        product = xp.matmul(weight_matrix, plan.by_group(cols))
        # (C_out, count, pixels) -> (count, C_out, pixels): NCHW order.
        y[start:start + count] = product.reshape(plan.out_channels, count,
                                                 *out_hw).transpose(1, 0, 2, 3)
    return y


def conv2d_backward_input(backend: Im2col, grad_output, weight, input_shape, stride: Pair,
                          padding: Pair, dilation: Pair, groups: int):
    """Gradient of conv2d with respect to its input; also conv_transpose2d's forward.

    grad_output: (N, C_out, H_out, W_out), weight: (C_out, C_in/groups, kH, kW)
    -> grad_x: input_shape (N, C_in, H, W).
    """
    stride, padding, dilation, input_shape, out_hw = conv2d_backward_input_args(
        grad_output, weight, input_shape, stride, padding, dilation, groups)
    xp = backend.xp
    grad_output, weight = xp.ascontiguousarray(grad_output), xp.ascontiguousarray(weight)
    if is_pointwise(weight.shape, stride, padding):
        return pointwise_backward_input(xp, grad_output, weight, groups, input_shape)
    padding_t = full_padding(weight.shape, padding, dilation)
    if stride == (1, 1) and min(padding_t) >= 0:
        # With stride 1 the gradient is itself a convolution: grad_output padded by
        # d*(k-1) - p, against the kernel flipped in space with C_in and C_out swapped per
        # group. Its im2col is cheaper than col2im's scattered read-modify-write.
        return conv2d_forward(backend, grad_output, transposed_kernel(xp, weight, groups),
                              stride, padding_t, dilation, groups)
    plan = _ConvPlan(backend, input_shape, weight.shape, stride, padding, dilation, groups,
                     out_hw, grad_output.dtype)
    weight_matrix_t = plan.by_group(weight.reshape(plan.out_channels, -1)).transpose(0, 2, 1)
    grad_x = xp.zeros(input_shape, dtype=grad_output.dtype)
    for start, count in plan.chunks():
        grad_cols = plan.columns(count)
        xp.matmul(weight_matrix_t, plan.by_group(plan.output_columns(grad_output, start, count)),
                  out=plan.by_group(grad_cols))
        backend.col2im(grad_cols, grad_x, start, *plan.geometry)
    return grad_x


def conv2d_backward_weight(backend: Im2col, grad_output, x, weight_shape, stride: Pair,
                           padding: Pair, dilation: Pair, groups: int):
    """Gradient of conv2d with respect to its weight.

    grad_output: (N, C_out, H_out, W_out), x: (N, C_in, H, W) -> (C_out, C_in/groups, kH, kW).
    """
    stride, padding, dilation, weight_shape, out_hw = conv2d_backward_weight_args(
        grad_output, x, weight_shape, stride, padding, dilation, groups)
    xp = backend.xp
    grad_output, x = xp.ascontiguousarray(grad_output), xp.ascontiguousarray(x)
    if is_pointwise(weight_shape, stride, padding):
        return pointwise_backward_weight(xp, grad_output, x, groups, weight_shape)
    plan = _ConvPlan(backend, x.shape, weight_shape, stride, padding, dilation, groups, out_hw,
                     x.dtype)
    grad_weight = xp.zeros((groups, plan.out_channels // groups, plan.rows // groups), x.dtype)
    for start, count in plan.chunks():
        cols = backend.im2col(x, start, plan.columns(count), *plan.geometry)
        grad_weight += xp.matmul(plan.by_group(plan.output_columns(grad_output, start, count)),
                                 plan.by_group(cols).transpose(0, 2, 1))
    return grad_weight.reshape(weight_shape)
