"""The CPU kernels: Numba loops for data movement, NumPy's BLAS (OpenBLAS) for the GEMMs.

Convolution is im2col + GEMM (gemm_conv.py) with the parallel Numba im2col / col2im below,
the batch taken in chunks whose columns fit in cache (COLUMNS_BUDGET_BYTES). Pooling and
upsampling are direct Numba loops, parallel over the (n, c) planes. All Numba functions are
compiled on first use and cached next to this file (cache=True).

Measured (float32, 3x3, padding 1, one thread, CPU time; benchmarks/bench_conv_direct.py):
a direct Numba loop nest took 6.3x (N=32, C=64, 16x16), 1.6x (N=64, C=32, 32x32) and 11x
(N=64, C=128, 8x8) the time of im2col + GEMM, so every shape goes through im2col.
"""
from __future__ import annotations

import os

import numba
import numpy as np

from . import gemm_conv
from .geometry import Pair, as_pairs, check_pool2d, check_upsample, check_upsample_grad

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


# ---------------------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------------------
@numba.njit(**_jit)
def _valid_range(offset, stride, out_size, in_size):
    """The outputs o in [lo, hi) whose input position o * stride + offset lies in [0, in_size);
    the rest read padding. Splitting on it keeps bounds checks out of the inner loops."""
    lo = min(out_size, max(0, (stride - 1 - offset) // stride))
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@numba.njit(parallel=True, **_jit)
def _im2col(x, n_start, cols, kernel, stride, padding, dilation, out_hw):
    """cols[(c*kH + i)*kW + j, b*Ho*Wo + oh*Wo + ow] = x[n_start + b, c, oh*s - p + i*d, ...],
    zero where the window reaches into the padding. x: (N, C, H, W); cols: (C*kH*kW, B*Ho*Wo).
    Parallel over the rows of cols, each written front to back. The loops index 2-d and 4-d
    arrays with plain range variables (no slices), which LLVM vectorizes best."""
    _, channels, height, width = x.shape
    k_h, k_w = kernel
    out_h, out_w = out_hw
    stride_h, stride_w = stride
    pixels = out_h * out_w
    batch = cols.shape[1] // pixels
    same_width = stride_h == 1 and stride_w == 1 and out_w == width
    x_planes = x.reshape(x.shape[0], channels, height * width)
    for row in numba.prange(channels * k_h * k_w):
        c, i, j = row // (k_h * k_w), (row // k_w) % k_h, row % k_w
        h_offset = i * dilation[0] - padding[0]
        w_offset = j * dilation[1] - padding[1]
        oh_lo, oh_hi = _valid_range(h_offset, stride_h, out_h, height)
        ow_lo, ow_hi = _valid_range(w_offset, stride_w, out_w, width)
        for b in range(batch):
            n, base = n_start + b, b * pixels
            if same_width and ow_lo < ow_hi:
                # Stride 1 and output rows as wide as input rows ("same" padding): the valid
                # band is one shifted run of the flat plane, copied at memcpy speed; then the
                # few entries that wrapped into a neighbouring row are set to the zero padding.
                shift = h_offset * width + w_offset
                for column in range(oh_lo * width + ow_lo, (oh_hi - 1) * width + ow_hi):
                    cols[row, base + column] = x_planes[n, c, column + shift]
                for column in range(base, base + oh_lo * out_w):
                    cols[row, column] = 0
                for column in range(base + oh_hi * out_w, base + pixels):
                    cols[row, column] = 0
                for oh in range(oh_lo, oh_hi):
                    for ow in range(ow_lo):
                        cols[row, base + oh * out_w + ow] = 0
                    for ow in range(ow_hi, out_w):
                        cols[row, base + oh * out_w + ow] = 0
                continue
            for column in range(base, base + oh_lo * out_w):
                cols[row, column] = 0
            for column in range(base + oh_hi * out_w, base + pixels):
                cols[row, column] = 0
            for oh in range(oh_lo, oh_hi):
                line, ih = base + oh * out_w, oh * stride_h + h_offset
                for ow in range(ow_lo):
                    cols[row, line + ow] = 0
                if stride_w == 1:  # the common case: a contiguous copy
                    for ow in range(ow_lo, ow_hi):
                        cols[row, line + ow] = x[n, c, ih, ow + w_offset]
                else:
                    for ow in range(ow_lo, ow_hi):
                        cols[row, line + ow] = x[n, c, ih, ow * stride_w + w_offset]
                for ow in range(ow_hi, out_w):
                    cols[row, line + ow] = 0
    return cols


@numba.njit(parallel=True, **_jit)
def _col2im(cols, grad_x, n_start, kernel, stride, padding, dilation, out_hw):
    """The adjoint of _im2col: grad_x[n_start + b, c, ih, iw] += cols[row, column] for every
    column that _im2col filled from (ih, iw). Parallel over (b, c) planes, so no two threads
    ever add into the same plane."""
    _, channels, height, width = grad_x.shape
    k_h, k_w = kernel
    out_h, out_w = out_hw
    stride_h, stride_w = stride
    pixels = out_h * out_w
    batch = cols.shape[1] // pixels
    for plane_index in numba.prange(batch * channels):
        b, c = plane_index // channels, plane_index % channels
        n, base = n_start + b, b * pixels
        for i in range(k_h):
            h_offset = i * dilation[0] - padding[0]
            oh_lo, oh_hi = _valid_range(h_offset, stride_h, out_h, height)
            for j in range(k_w):
                w_offset = j * dilation[1] - padding[1]
                ow_lo, ow_hi = _valid_range(w_offset, stride_w, out_w, width)
                row = (c * k_h + i) * k_w + j
                for oh in range(oh_lo, oh_hi):
                    line, ih = base + oh * out_w, oh * stride_h + h_offset
                    if stride_w == 1:
                        for ow in range(ow_lo, ow_hi):
                            grad_x[n, c, ih, ow + w_offset] += cols[row, line + ow]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            grad_x[n, c, ih, ow * stride_w + w_offset] += cols[row, line + ow]
    return grad_x


# ---------------------------------------------------------------------------------------
# Convolution: im2col + GEMM (gemm_conv.py), chunk by chunk of samples
# ---------------------------------------------------------------------------------------
def _backend() -> gemm_conv.Im2col:
    # Built per call so that COLUMNS_BUDGET_BYTES can be changed at run time (the tests do).
    return gemm_conv.Im2col(np, _im2col, _col2im, COLUMNS_BUDGET_BYTES)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int) -> np.ndarray:
    """Cross-correlation as PyTorch's conv2d, without bias.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW) -> (N, C_out, H_out, W_out).
    """
    return gemm_conv.conv2d_forward(_backend(), x, weight, stride, padding, dilation, groups)


def conv2d_backward_input(grad_output: np.ndarray, weight: np.ndarray, input_shape,
                          stride: Pair, padding: Pair, dilation: Pair,
                          groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its input; also conv_transpose2d's forward.

    grad_output: (N, C_out, H_out, W_out), weight: (C_out, C_in/groups, kH, kW)
    -> grad_x: input_shape (N, C_in, H, W).
    """
    return gemm_conv.conv2d_backward_input(_backend(), grad_output, weight, input_shape,
                                           stride, padding, dilation, groups)


def conv2d_backward_weight(grad_output: np.ndarray, x: np.ndarray, weight_shape,
                           stride: Pair, padding: Pair, dilation: Pair,
                           groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its weight.

    grad_output: (N, C_out, H_out, W_out), x: (N, C_in, H, W) -> (C_out, C_in/groups, kH, kW).
    """
    return gemm_conv.conv2d_backward_weight(_backend(), grad_output, x, weight_shape, stride,
                                            padding, dilation, groups)


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
