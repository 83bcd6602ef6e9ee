"""The CPU kernels: Numba loops for data movement, NumPy's BLAS (OpenBLAS) for the GEMMs.

Convolution pads a chunk of samples into a zero-bordered buffer, expands it with a parallel
Numba im2col into one (C_in*kH*kW, H_out*W_out) column block per sample, and multiplies by the
weight in one stacked GEMM whose output is NCHW already; chunks keep the columns in cache
(COLUMNS_BUDGET_BYTES). 1x1 convolutions are plain GEMMs (gemm_conv.py). Pooling and
upsampling are direct Numba loops, parallel over the (n, c) planes. All Numba functions are
compiled on first use and cached next to this file (cache=True).

Measured (float32, 3x3, padding 1, one thread, CPU time; benchmarks/bench_conv_direct.py):
a direct Numba loop nest took 6.3x (N=32, C=64, 16x16), 1.6x (N=64, C=32, 32x32) and 11x
(N=64, C=128, 8x8) the time of im2col + GEMM, so every shape goes through im2col. Padding
first and writing each sample's columns as one block made im2col 3x faster than copying with
bounds checks into rows shared by all samples (the layout gemm_conv.py uses on the GPU).
"""
from __future__ import annotations

import os
import threading

import numba
import numpy as np

from . import gemm_conv, winograd
from .geometry import (Pair, as_pairs, check_conv2d, check_conv2d_grad_output, check_pool2d,
                       check_same_dtype, check_upsample, check_upsample_grad)

# Numba's "workqueue" threads sleep between parallel loops. Its OpenMP layer (the default
# here) spins instead, and on two cores the spinning fights OpenBLAS's GEMM threads: one
# conv2d forward+backward (N=32, C=64, 16x16) took 10x the CPU time and 50x the wall time.
# An explicit NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# Columns of a chunk of samples take at most this many bytes (at least one sample per chunk).
# 1 to 4 MiB measured best; for N=64, C=32, 32x32 the whole batch's 72 MiB of columns made
# forward + backward 1.8x slower than 4 MiB chunks, which stay in cache between im2col and GEMM.
COLUMNS_BUDGET_BYTES = 4 * 2**20

_jit = dict(nogil=True, cache=True)

# Scratch arrays up to this size are kept between calls (a few per thread and dtype).
SCRATCH_KEEP_BYTES = 64 * 2**20
_workspace = threading.local()


def _scratch(slot: str, shape, dtype, zero: bool = False) -> np.ndarray:
    """A scratch array for intermediate results, kept per thread and reused across calls.

    Fresh multi-megabyte arrays come from the kernel as untouched pages, and the first write to
    each page faults: with a new padded input and new transform buffers on every call, a 64-channel
    4x4 Winograd forward spent half its time (0.6 of 1.3 ms) in page faults. zero: clear it."""
    size, dtype = int(np.prod(shape)), np.dtype(dtype)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    if size * dtype.itemsize > SCRATCH_KEEP_BYTES:  # one huge sample: not worth keeping
        array = np.empty(shape, dtype)
    else:
        if (slot, dtype) not in buffers or buffers[slot, dtype].size < size:
            buffers[slot, dtype] = np.empty(size, dtype)
        array = buffers[slot, dtype][:size].reshape(shape)
    if zero:
        array.fill(0)
    return array


# ---------------------------------------------------------------------------------------
# Padding, im2col, col2im
# ---------------------------------------------------------------------------------------
@numba.njit(parallel=True, **_jit)
def _pad(x, n_start, padded, padding):
    """padded[b, c, p_h + h, p_w + w] = x[n_start + b, c, h, w]. Only the interior is written:
    the border keeps the zeros it was allocated with, chunk after chunk."""
    batch, channels, height, width = padded.shape[0], x.shape[1], x.shape[2], x.shape[3]
    pad_h, pad_w = padding
    for plane in numba.prange(batch * channels):
        b, c = plane // channels, plane % channels
        for h in range(height):
            for w in range(width):
                padded[b, c, pad_h + h, pad_w + w] = x[n_start + b, c, h, w]
    return padded


@numba.njit(parallel=True, **_jit)
def _im2col(padded, cols, kernel, stride, dilation, out_hw):
    """cols[b, (c*kH + i)*kW + j, oh*W_out + ow] = padded[b, c, oh*s_h + i*d_h, ow*s_w + j*d_w].

    padded: (B, C, H + 2p_h, W + 2p_w), the zero padding already in place, so the loops have
    no bounds to test. cols: (B, C*kH*kW, H_out*W_out), either contiguous (each sample's column
    matrix one block, written front to back: 2-3x faster than rows interleaved across samples)
    or a transposed view of a (C*kH*kW, B*H_out*W_out) matrix. Parallel over the (b, c) planes.
    """
    batch, channels = cols.shape[0], padded.shape[1]
    k_h, k_w = kernel
    stride_h, stride_w = stride
    out_h, out_w = out_hw
    unit = stride_h == stride_w == dilation[0] == dilation[1] == 1
    for plane in numba.prange(batch * channels):
        b, c = plane // channels, plane % channels
        for i in range(k_h):
            for j in range(k_w):
                row = (c * k_h + i) * k_w + j
                if unit:
                    # Indices built from loop counters alone are known to be >= 0, so LLVM
                    # drops the negative-index checks and vectorizes: 2x the speed of the
                    # general loop below on a 3x3 "same" convolution.
                    for oh in range(out_h):
                        for ow in range(out_w):
                            cols[b, row, oh * out_w + ow] = padded[b, c, oh + i, ow + j]
                    continue
                for oh in range(out_h):
                    ih = oh * stride_h + i * dilation[0]
                    for ow in range(out_w):
                        cols[b, row, oh * out_w + ow] = padded[b, c, ih,
                                                               ow * stride_w + j * dilation[1]]
    return cols


@numba.njit(parallel=True, **_jit)
def _col2im(cols, padded_grad, kernel, stride, dilation, out_hw):
    """The adjoint of _im2col: padded_grad[b, c, oh*s_h + i*d_h, ow*s_w + j*d_w] +=
    cols[b, (c*kH + i)*kW + j, oh*W_out + ow]. Parallel over the (b, c) planes, so no two
    threads ever add into the same plane."""
    batch, channels = cols.shape[0], padded_grad.shape[1]
    k_h, k_w = kernel
    stride_h, stride_w = stride
    out_h, out_w = out_hw
    for plane in numba.prange(batch * channels):
        b, c = plane // channels, plane % channels
        for i in range(k_h):
            for j in range(k_w):
                row, w_offset = (c * k_h + i) * k_w + j, j * dilation[1]
                for oh in range(out_h):
                    ih, line = oh * stride_h + i * dilation[0], oh * out_w
                    for ow in range(out_w):
                        padded_grad[b, c, ih, ow * stride_w + w_offset] += cols[b, row, line + ow]
    return padded_grad


# ---------------------------------------------------------------------------------------
# Convolution: pad, im2col, GEMM, chunk by chunk of samples
# ---------------------------------------------------------------------------------------
def _chunks(batch: int, chunk: int):
    """(first sample, number of samples) of each chunk of a batch."""
    for start in range(0, batch, chunk):
        yield start, min(chunk, batch - start)


class _Chunks:
    """The geometry of one conv2d on the CPU and the chunking of its batch.

    Each chunk of samples is padded into a zero-bordered buffer, expanded by _im2col into
    columns of at most COLUMNS_BUDGET_BYTES, and multiplied by the weight with NumPy's BLAS.
    Both buffers are scratch (_scratch), reused by every chunk and every call."""

    def __init__(self, input_shape, weight_shape, stride, padding, dilation, groups, out_hw,
                 dtype):
        self.batch, self.in_channels, height, width = input_shape
        self.out_channels, _, k_h, k_w = weight_shape
        self.groups, self.padding, self.out_hw = groups, padding, tuple(out_hw)
        self.rows = self.in_channels * k_h * k_w
        self.pixels = out_hw[0] * out_hw[1]
        self.geometry = ((k_h, k_w), stride, dilation, self.out_hw)
        self.chunk = max(1, min(self.batch, COLUMNS_BUDGET_BYTES
                                // (self.rows * self.pixels * dtype.itemsize)))
        self.padded_hw = (height + 2 * padding[0], width + 2 * padding[1])
        self.dtype = dtype
        self._padded = None

    def chunks(self):
        return _chunks(self.batch, self.chunk)

    def padded(self, x, start: int, count: int):
        """Samples start..start+count of x (N, C, H, W) with their zero padding."""
        if self.padding == (0, 0):
            return x[start:start + count]
        if self._padded is None:
            self._padded = _scratch("padded", (self.chunk, self.in_channels, *self.padded_hw),
                                    self.dtype, zero=True)
        return _pad(x, start, self._padded[:count], self.padding)

    def columns(self, x, start: int, count: int, out):
        """Fill `out` (count, rows, pixels) with the columns of samples start.. of x."""
        return _im2col(self.padded(x, start, count), out, *self.geometry)

    def by_group(self, matrices):
        """View (..., channels, columns) as (..., groups, channels / groups, columns)."""
        *lead, channels, columns = matrices.shape
        return matrices.reshape(*lead, self.groups, channels // self.groups, columns)


def _forward(x, weight, stride, padding, dilation, groups, out_hw):
    """conv2d of contiguous arrays, geometry checked: Winograd for 3x3 stride 1, else each
    chunk's columns (B, rows, pixels) times the (C_out, rows) weight, a stacked GEMM whose
    output is NCHW already."""
    if _winograd_pays(weight.shape, stride, dilation, groups):
        return _winograd_forward(x, weight, padding, groups, out_hw)
    plan = _Chunks(x.shape, weight.shape, stride, padding, dilation, groups, out_hw, x.dtype)
    weight_groups = plan.by_group(weight.reshape(plan.out_channels, -1))
    y = np.empty((plan.batch, plan.out_channels, plan.pixels), dtype=x.dtype)
    cols = _scratch("columns", (plan.chunk, plan.rows, plan.pixels), x.dtype)
    for start, count in plan.chunks():
        columns = plan.columns(x, start, count, out=cols[:count])
        np.matmul(weight_groups, plan.by_group(columns), out=plan.by_group(y[start:start + count]))
    return y.reshape(plan.batch, plan.out_channels, *out_hw)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int) -> np.ndarray:
    """Cross-correlation as PyTorch's conv2d, without bias.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW) -> (N, C_out, H_out, W_out).
    """
    check_same_dtype("conv2d", x, weight)
    stride, padding, dilation = as_pairs(stride, padding, dilation)
    out_hw = check_conv2d(x.shape, weight.shape, stride, padding, dilation, groups)
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    if gemm_conv.is_pointwise(weight.shape, stride, padding):
        return gemm_conv.pointwise_forward(np, x, weight, groups, out_hw)
    return _forward(x, weight, stride, padding, dilation, groups, out_hw)


def conv2d_backward_input(grad_output: np.ndarray, weight: np.ndarray, input_shape,
                          stride: Pair, padding: Pair, dilation: Pair,
                          groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its input; also conv_transpose2d's forward.

    grad_output: (N, C_out, H_out, W_out), weight: (C_out, C_in/groups, kH, kW)
    -> grad_x: input_shape (N, C_in, H, W).
    """
    check_same_dtype("conv2d_backward_input", grad_output, weight)
    stride, padding, dilation = as_pairs(stride, padding, dilation)
    input_shape = tuple(int(size) for size in input_shape)
    out_hw = check_conv2d_grad_output(grad_output.shape, input_shape, weight.shape, stride,
                                      padding, dilation, groups)
    grad_output, weight = np.ascontiguousarray(grad_output), np.ascontiguousarray(weight)
    if gemm_conv.is_pointwise(weight.shape, stride, padding):
        return gemm_conv.pointwise_backward_input(np, grad_output, weight, groups, input_shape)
    full_padding = gemm_conv.full_padding(weight.shape, padding, dilation)
    if stride == (1, 1) and min(full_padding) >= 0:
        # With stride 1 the gradient is a convolution too (see gemm_conv.transposed_kernel),
        # and the forward's contiguous im2col beats col2im's scattered read-modify-write.
        return _forward(grad_output, gemm_conv.transposed_kernel(np, weight, groups), stride,
                        full_padding, dilation, groups, input_shape[2:])
    plan = _Chunks(input_shape, weight.shape, stride, padding, dilation, groups, out_hw,
                   grad_output.dtype)
    weight_groups_t = plan.by_group(weight.reshape(plan.out_channels, -1)).swapaxes(-1, -2)
    by_sample = grad_output.reshape(plan.batch, plan.out_channels, plan.pixels)
    grad_x = np.empty(input_shape, dtype=grad_output.dtype)
    cols = _scratch("columns", (plan.chunk, plan.rows, plan.pixels), grad_output.dtype)
    padded_grad = _scratch("padded", (plan.chunk, plan.in_channels, *plan.padded_hw),
                           grad_output.dtype)
    (pad_h, pad_w), (height, width) = padding, input_shape[2:]
    for start, count in plan.chunks():
        columns = plan.by_group(cols[:count])
        np.matmul(weight_groups_t, plan.by_group(by_sample[start:start + count]), out=columns)
        padded_grad[:count] = 0
        _col2im(cols[:count], padded_grad[:count], *plan.geometry)
        grad_x[start:start + count] = padded_grad[:count, :, pad_h:pad_h + height,
                                                  pad_w:pad_w + width]
    return grad_x


def conv2d_backward_weight(grad_output: np.ndarray, x: np.ndarray, weight_shape,
                           stride: Pair, padding: Pair, dilation: Pair,
                           groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its weight.

    grad_output: (N, C_out, H_out, W_out), x: (N, C_in, H, W) -> (C_out, C_in/groups, kH, kW).
    """
    check_same_dtype("conv2d_backward_weight", grad_output, x)
    stride, padding, dilation = as_pairs(stride, padding, dilation)
    weight_shape = tuple(int(size) for size in weight_shape)
    out_hw = check_conv2d_grad_output(grad_output.shape, x.shape, weight_shape, stride,
                                      padding, dilation, groups)
    grad_output, x = np.ascontiguousarray(grad_output), np.ascontiguousarray(x)
    if gemm_conv.is_pointwise(weight_shape, stride, padding):
        return gemm_conv.pointwise_backward_weight(np, grad_output, x, groups, weight_shape)
    if _winograd_pays(weight_shape, stride, dilation, groups):
        return _winograd_backward_weight(grad_output, x, weight_shape, padding, groups)
    plan = _Chunks(x.shape, weight_shape, stride, padding, dilation, groups, out_hw, x.dtype)
    # One GEMM per chunk whose inner dimension runs over all its samples' pixels: the columns
    # as (rows, B*pixels) times grad_output as (B*pixels, C_out). Per-sample products would
    # have only H_out*W_out there, which halves BLAS's speed at 8x8.
    by_pixel = grad_output.reshape(plan.batch, plan.out_channels, plan.pixels).transpose(0, 2, 1)
    grad_weight_t = np.zeros((plan.groups, plan.rows // groups, plan.out_channels // groups),
                             x.dtype)
    cols = _scratch("columns", (plan.rows, plan.chunk * plan.pixels), x.dtype)
    for start, count in plan.chunks():
        matrix = cols[:, :count * plan.pixels]
        plan.columns(x, start, count, out=matrix.reshape(plan.rows, count, plan.pixels)
                     .transpose(1, 0, 2))
        pixels_by_channel = np.ascontiguousarray(by_pixel[start:start + count]).reshape(
            count * plan.pixels, groups, -1).transpose(1, 0, 2)
        grad_weight_t += np.matmul(plan.by_group(matrix), pixels_by_channel)
    return np.ascontiguousarray(grad_weight_t.swapaxes(-1, -2)).reshape(weight_shape)


# ---------------------------------------------------------------------------------------
# 3x3, stride 1: Winograd F(2x2, 3x3) (winograd.py), chunk by chunk of samples
# ---------------------------------------------------------------------------------------
# Winograd trades GEMM work (2.25x less) for transforms that grow with channels * pixels, so
# it pays once the GEMM dominates. Forward + backward, one thread, against im2col + GEMM: 0.54-0.8
# of the time at 48-128 channels on 4x4 to 32x32 images, 0.85-1.01 at 32 channels, and 0.83-1.15
# at 16. The channels counted are those of one group, the fewer of input and output.
WINOGRAD_MIN_CHANNELS = 32


def _winograd_pays(weight_shape, stride, dilation, groups) -> bool:
    channels = min(weight_shape[0] // groups, weight_shape[1])
    return (winograd.applies(weight_shape, stride, dilation)
            and channels >= WINOGRAD_MIN_CHANNELS)


class _WinogradChunks:
    """Buffers and chunking for F(2x2, 3x3): each chunk's padded input, its 16 transformed
    planes (16, C, B*tiles) and their products, under COLUMNS_BUDGET_BYTES together."""

    def __init__(self, input_shape, channels_out, padding, groups, out_hw, dtype):
        self.batch, self.channels = input_shape[:2]
        self.channels_out, self.groups, self.padding = channels_out, groups, padding
        self.tiles_hw = winograd.tiles(out_hw)
        self.tiles = self.tiles_hw[0] * self.tiles_hw[1]
        sample_bytes = 16 * (self.channels + channels_out) * self.tiles * dtype.itemsize
        self.chunk = max(1, min(self.batch, COLUMNS_BUDGET_BYTES // sample_bytes))
        self._padded = _scratch("padded", (self.chunk, self.channels,
                                           *winograd.padded_hw(out_hw)), dtype, zero=True)
        # The transforms write (or read) all 16 planes at once. Planes 2^k bytes apart would
        # share the same few cache sets and evict each other (input transform 6x slower at
        # N=32, C=64, 16x16), so each plane starts one cache line past the previous one's end.
        self._inputs = _scratch("columns", (16, self.channels * self.chunk * self.tiles + 16),
                                dtype)
        self._outputs = _scratch("products", (16, channels_out * self.chunk * self.tiles + 16),
                                 dtype)

    def chunks(self):
        return _chunks(self.batch, self.chunk)

    def transformed_input(self, x, start: int, count: int):
        """(16, C, count*tiles): B^T d B of every tile of samples start.. of x."""
        padded = _pad(x, start, self._padded[:count], self.padding)
        planes = self._inputs[:, :self.channels * count * self.tiles]
        return winograd.transform_input(padded, planes.reshape(16, self.channels, -1),
                                        self.tiles_hw)

    def output_planes(self, count: int):
        """The (16, C_out, count*tiles) buffer for the products or grad_output's transform."""
        planes = self._outputs[:, :self.channels_out * count * self.tiles]
        return planes.reshape(16, self.channels_out, -1)

    def by_group(self, planes):
        """(16, channels, columns) viewed as (16, groups, channels / groups, columns)."""
        return planes.reshape(16, self.groups, planes.shape[1] // self.groups, planes.shape[2])


def _winograd_forward(x, weight, padding, groups, out_hw):
    plan = _WinogradChunks(x.shape, weight.shape[0], padding, groups, out_hw, x.dtype)
    transformed_weight = plan.by_group(winograd.transform_weight(weight))
    y = np.empty((plan.batch, plan.channels_out, *out_hw), dtype=x.dtype)
    for start, count in plan.chunks():
        transformed = plan.transformed_input(x, start, count)
        products = plan.output_planes(count)
        np.matmul(transformed_weight, plan.by_group(transformed), out=plan.by_group(products))
        winograd.transform_output(products, y, start, plan.tiles_hw)
    return y


def _winograd_backward_weight(grad_output, x, weight_shape, padding, groups):
    plan = _WinogradChunks(x.shape, weight_shape[0], padding, groups, grad_output.shape[2:],
                           x.dtype)
    sums = np.zeros((16, groups, weight_shape[0] // groups, weight_shape[1]), x.dtype)
    for start, count in plan.chunks():
        transformed = plan.transformed_input(x, start, count)
        grad_planes = winograd.transform_grad_output(grad_output, start,
                                                     plan.output_planes(count), plan.tiles_hw)
        sums += np.matmul(plan.by_group(grad_planes),
                          plan.by_group(transformed).swapaxes(-1, -2))
    return winograd.weight_gradient(sums.reshape(16, *weight_shape[:2]))


# ---------------------------------------------------------------------------------------
# Pooling and upsampling: direct loops, parallel over the N*C planes
# ---------------------------------------------------------------------------------------
def _planes(array: np.ndarray) -> np.ndarray:
    """A contiguous (N*C, H, W) view (or copy) of an NCHW array."""
    n, c, h, w = array.shape
    return np.ascontiguousarray(array).reshape(n * c, h, w)


@numba.njit(parallel=True, **_jit)
def _max_pool(x, y, indices, kernel, stride, padding):
    """y[p, oh, ow] = max over the window of plane p; indices = h*W + w of that maximum.
    The first maximum in row-major window order wins and a NaN beats everything (PyTorch)."""
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    for p in numba.prange(x.shape[0]):
        for oh in range(out_h):
            h_start = oh * stride[0] - padding[0]
            h_lo, h_hi = max(h_start, 0), min(h_start + kernel[0], height)
            for ow in range(out_w):
                w_start = ow * stride[1] - padding[1]
                w_lo, w_hi = max(w_start, 0), min(w_start + kernel[1], width)
                best, best_index = -np.inf, h_lo * width + w_lo
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        value = x[p, h, w]
                        if value > best or np.isnan(value):
                            best, best_index = value, h * width + w
                y[p, oh, ow] = best
                indices[p, oh, ow] = best_index
    return y, indices


@numba.njit(parallel=True, **_jit)
def _max_pool_backward(grad_output, indices, grad_x):
    """grad_x[p].flat[indices[p, o]] += grad_output[p, o]; each plane is one thread's."""
    for p in numba.prange(grad_output.shape[0]):
        for o in range(grad_output.shape[1]):
            grad_x[p, indices[p, o]] += grad_output[p, o]
    return grad_x


@numba.njit(parallel=True, **_jit)
def _avg_pool(x, y, kernel, stride, padding):
    """y = window sum / (kH*kW): zero padding counts toward the mean (count_include_pad)."""
    _, height, width = x.shape
    _, out_h, out_w = y.shape
    scale = 1.0 / (kernel[0] * kernel[1])
    for p in numba.prange(x.shape[0]):
        for oh in range(out_h):
            h_start = oh * stride[0] - padding[0]
            for ow in range(out_w):
                w_start = ow * stride[1] - padding[1]
                total = 0.0
                for h in range(max(h_start, 0), min(h_start + kernel[0], height)):
                    for w in range(max(w_start, 0), min(w_start + kernel[1], width)):
                        total += x[p, h, w]
                y[p, oh, ow] = total * scale
    return y


@numba.njit(parallel=True, **_jit)
def _avg_pool_backward(grad_output, grad_x, kernel, stride, padding):
    """The adjoint of _avg_pool: each output gradient / (kH*kW) goes to its window's pixels."""
    _, height, width = grad_x.shape
    _, out_h, out_w = grad_output.shape
    scale = 1.0 / (kernel[0] * kernel[1])
    for p in numba.prange(grad_x.shape[0]):
        for oh in range(out_h):
            h_start = oh * stride[0] - padding[0]
            for ow in range(out_w):
                w_start = ow * stride[1] - padding[1]
                share = grad_output[p, oh, ow] * scale
                for h in range(max(h_start, 0), min(h_start + kernel[0], height)):
                    for w in range(max(w_start, 0), min(w_start + kernel[1], width)):
                        grad_x[p, h, w] += share
    return grad_x


@numba.njit(parallel=True, **_jit)
def _upsample_nearest(x, y, scale):
    """y[p, h, w] = x[p, h // scale_h, w // scale_w]."""
    _, out_h, out_w = y.shape
    for p in numba.prange(y.shape[0]):
        for h in range(out_h):
            for w in range(out_w):
                y[p, h, w] = x[p, h // scale[0], w // scale[1]]
    return y


@numba.njit(parallel=True, **_jit)
def _upsample_nearest_backward(grad_output, grad_x, scale):
    """grad_x[p, h, w] = sum of the scale_h x scale_w block of grad_output it was copied to."""
    _, out_h, out_w = grad_output.shape
    for p in numba.prange(grad_output.shape[0]):
        for h in range(out_h):
            for w in range(out_w):
                grad_x[p, h // scale[0], w // scale[1]] += grad_output[p, h, w]
    return grad_x


def max_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair,
                       padding: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling with -inf padding. x: (N, C, H, W) -> y, indices: (N, C, H_out, W_out);
    indices (int64) are flat positions h * W + w inside each (n, c) plane, as in PyTorch."""
    kernel_size, stride, padding = as_pairs(kernel_size, stride, padding)
    out_hw = check_pool2d(x.shape, kernel_size, stride, padding)
    y = np.empty((*x.shape[:2], *out_hw), dtype=x.dtype)
    indices = np.empty(y.shape, dtype=np.int64)
    _max_pool(_planes(x), _planes(y), _planes(indices), kernel_size, stride, padding)
    return y, indices


def max_pool2d_backward(grad_output: np.ndarray, indices: np.ndarray,
                        input_shape) -> np.ndarray:
    """Scatter-add grad_output (N, C, H_out, W_out) to the recorded maxima -> input_shape."""
    n, c, h, w = input_shape
    grad_x = np.zeros((n * c, h * w), dtype=grad_output.dtype)
    _max_pool_backward(np.ascontiguousarray(grad_output).reshape(n * c, -1),
                       np.ascontiguousarray(indices).reshape(n * c, -1), grad_x)
    return grad_x.reshape(input_shape)


def avg_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair,
                       padding: Pair) -> np.ndarray:
    """Average pooling, count_include_pad=True. x: (N, C, H, W) -> (N, C, H_out, W_out)."""
    kernel_size, stride, padding = as_pairs(kernel_size, stride, padding)
    out_hw = check_pool2d(x.shape, kernel_size, stride, padding)
    y = np.empty((*x.shape[:2], *out_hw), dtype=x.dtype)
    _avg_pool(_planes(x), _planes(y), kernel_size, stride, padding)
    return y


def avg_pool2d_backward(grad_output: np.ndarray, input_shape, kernel_size: Pair,
                        stride: Pair, padding: Pair) -> np.ndarray:
    """Gradient of avg_pool2d_forward: (N, C, H_out, W_out) -> input_shape (N, C, H, W)."""
    kernel_size, stride, padding = as_pairs(kernel_size, stride, padding)
    check_pool2d(input_shape, kernel_size, stride, padding)
    grad_x = np.zeros(tuple(input_shape), dtype=grad_output.dtype)
    _avg_pool_backward(_planes(grad_output), _planes(grad_x), kernel_size, stride, padding)
    return grad_x


def upsample_nearest2d_forward(x: np.ndarray, scale: Pair) -> np.ndarray:
    """Nearest-neighbour upsampling by integer factors: (N, C, H, W) -> (N, C, sH*H, sW*W)."""
    (scale,) = as_pairs(scale)
    check_upsample(x.shape, scale)
    n, c, h, w = x.shape
    y = np.empty((n, c, h * scale[0], w * scale[1]), dtype=x.dtype)
    _upsample_nearest(_planes(x), _planes(y), scale)
    return y


def upsample_nearest2d_backward(grad_output: np.ndarray, scale: Pair) -> np.ndarray:
    """Gradient of upsample_nearest2d_forward: (N, C, sH*H, sW*W) -> (N, C, H, W)."""
    (scale,) = as_pairs(scale)
    check_upsample_grad(grad_output.shape, scale)
    n, c, h_out, w_out = grad_output.shape
    grad_x = np.zeros((n, c, h_out // scale[0], w_out // scale[1]), dtype=grad_output.dtype)
    _upsample_nearest_backward(_planes(grad_output), _planes(grad_x), scale)
    return grad_x
