"""The CPU kernels: Numba loops for data movement, NumPy's BLAS (OpenBLAS) for the GEMMs.

Convolution is im2col + GEMM. im2col copies every kernel window of a chunk of samples into
the columns of a (C_in*kH*kW, samples*H_out*W_out) matrix, so that the convolution becomes one
matrix product with the (C_out, C_in*kH*kW) weight; col2im is its adjoint (scatter-add back).
The batch is processed in chunks whose columns fit in cache (COLUMNS_BUDGET_BYTES).
Pooling and upsampling are direct Numba loops, parallel over the (n, c) planes.
"""
from __future__ import annotations

import numba
import numpy as np

from .geometry import (Pair, check_conv2d, check_conv2d_grad_output, check_pool2d,
                       check_same_dtype, check_upsample_grad)

# Columns of a chunk of samples take at most this many bytes (at least one sample per chunk).
COLUMNS_BUDGET_BYTES = 4 * 2**20

_jit = dict(nogil=True, cache=True)


# ---------------------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------------------
@numba.njit(parallel=True, **_jit)
def _im2col(x, n_start, cols, kernel, stride, padding, dilation, out_hw):
    """cols[(c*kH + i)*kW + j, b*Ho*Wo + oh*Wo + ow] = x[n_start + b, c, oh*s - p + i*d, ...],
    zero where the window reaches into the padding. x: (N, C, H, W); cols: (C*kH*kW, B*Ho*Wo)."""
    _, channels, height, width = x.shape
    k_h, k_w = kernel
    out_h, out_w = out_hw
    batch = cols.shape[1] // (out_h * out_w)
    for row in numba.prange(channels * k_h * k_w):
        c, i, j = row // (k_h * k_w), (row // k_w) % k_h, row % k_w
        for b in range(batch):
            plane = x[n_start + b, c]
            base = b * out_h * out_w
            for oh in range(out_h):
                ih = oh * stride[0] - padding[0] + i * dilation[0]
                line = base + oh * out_w
                if ih < 0 or ih >= height:
                    cols[row, line:line + out_w] = 0
                    continue
                for ow in range(out_w):
                    iw = ow * stride[1] - padding[1] + j * dilation[1]
                    cols[row, line + ow] = plane[ih, iw] if 0 <= iw < width else 0
    return cols


@numba.njit(parallel=True, **_jit)
def _col2im(cols, grad_x, n_start, kernel, stride, padding, dilation, out_hw):
    """The adjoint of _im2col: grad_x[n_start + b, c, ih, iw] += cols[row, column] for every
    column that _im2col filled from (ih, iw). Parallel over (b, c) planes, so no two threads
    ever add into the same plane."""
    _, channels, height, width = grad_x.shape
    k_h, k_w = kernel
    out_h, out_w = out_hw
    batch = cols.shape[1] // (out_h * out_w)
    for plane_index in numba.prange(batch * channels):
        b, c = plane_index // channels, plane_index % channels
        plane = grad_x[n_start + b, c]
        for i in range(k_h):
            for j in range(k_w):
                row = (c * k_h + i) * k_w + j
                for oh in range(out_h):
                    ih = oh * stride[0] - padding[0] + i * dilation[0]
                    if ih < 0 or ih >= height:
                        continue
                    line = b * out_h * out_w + oh * out_w
                    for ow in range(out_w):
                        iw = ow * stride[1] - padding[1] + j * dilation[1]
                        if 0 <= iw < width:
                            plane[ih, iw] += cols[row, line + ow]
    return grad_x


# ---------------------------------------------------------------------------------------
# Convolution: im2col + GEMM, chunk by chunk of samples
# ---------------------------------------------------------------------------------------
class _ConvPlan:
    """The shapes of one conv2d and the chunking of its batch, shared by the three passes."""

    def __init__(self, input_shape, weight_shape, stride, padding, dilation, groups,
                 out_hw, dtype):
        self.batch = input_shape[0]
        self.out_channels, channels_per_group, k_h, k_w = weight_shape
        self.groups = groups
        self.rows = channels_per_group * groups * k_h * k_w  # rows of the column matrix
        self.out_hw = tuple(out_hw)
        self.pixels = out_hw[0] * out_hw[1]
        self.dtype = np.dtype(dtype)
        self.geometry = ((k_h, k_w), tuple(stride), tuple(padding), tuple(dilation),
                         self.out_hw)
        sample_bytes = self.rows * self.pixels * self.dtype.itemsize
        self.chunk = max(1, min(self.batch, COLUMNS_BUDGET_BYTES // sample_bytes))
        self._columns = np.empty(self.rows * self.chunk * self.pixels, self.dtype)

    def chunks(self):
        """(first sample, number of samples) of each chunk."""
        for start in range(0, self.batch, self.chunk):
            yield start, min(self.chunk, self.batch - start)

    def columns(self, count: int) -> np.ndarray:
        """The (rows, count * pixels) column buffer for a chunk of `count` samples."""
        return self._columns[:self.rows * count * self.pixels].reshape(self.rows, -1)

    def by_group(self, matrix: np.ndarray) -> np.ndarray:
        """View a (channels, columns) matrix as (groups, channels / groups, columns)."""
        return matrix.reshape(self.groups, matrix.shape[0] // self.groups, matrix.shape[1])

    def output_columns(self, grad_output: np.ndarray, start: int, count: int) -> np.ndarray:
        """grad_output[start:start+count] as a (C_out, count * pixels) matrix; a copy only
        when the chunk holds more than one sample."""
        block = grad_output[start:start + count].reshape(count, self.out_channels, self.pixels)
        if count == 1:
            return block[0]
        return np.ascontiguousarray(block.transpose(1, 0, 2)).reshape(self.out_channels, -1)


def _as_pairs(*pairs) -> tuple:
    return tuple((int(pair[0]), int(pair[1])) for pair in pairs)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int) -> np.ndarray:
    """Cross-correlation as PyTorch's conv2d, without bias.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW) -> (N, C_out, H_out, W_out).
    """
    check_same_dtype("conv2d", x, weight)
    stride, padding, dilation = _as_pairs(stride, padding, dilation)
    out_hw = check_conv2d(x.shape, weight.shape, stride, padding, dilation, groups)
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    plan = _ConvPlan(x.shape, weight.shape, stride, padding, dilation, groups, out_hw, x.dtype)
    weight_matrix = plan.by_group(weight.reshape(plan.out_channels, -1))
    y = np.empty((plan.batch, plan.out_channels, *out_hw), dtype=x.dtype)
    for start, count in plan.chunks():
        cols = _im2col(x, start, plan.columns(count), *plan.geometry)
        product = np.matmul(weight_matrix, plan.by_group(cols))
        # (C_out, count, pixels) -> (count, C_out, pixels): NCHW order.
        y[start:start + count] = product.reshape(plan.out_channels, count,
                                                 *out_hw).transpose(1, 0, 2, 3)
    return y


def conv2d_backward_input(grad_output: np.ndarray, weight: np.ndarray, input_shape,
                          stride: Pair, padding: Pair, dilation: Pair,
                          groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its input; also conv_transpose2d's forward.

    grad_output: (N, C_out, H_out, W_out), weight: (C_out, C_in/groups, kH, kW)
    -> grad_x: input_shape (N, C_in, H, W).
    """
    check_same_dtype("conv2d_backward_input", grad_output, weight)
    stride, padding, dilation = _as_pairs(stride, padding, dilation)
    input_shape = tuple(int(size) for size in input_shape)
    out_hw = check_conv2d_grad_output(grad_output.shape, input_shape, weight.shape, stride,
                                      padding, dilation, groups)
    grad_output, weight = np.ascontiguousarray(grad_output), np.ascontiguousarray(weight)
    plan = _ConvPlan(input_shape, weight.shape, stride, padding, dilation, groups, out_hw,
                     grad_output.dtype)
    weight_matrix_t = plan.by_group(weight.reshape(plan.out_channels, -1)).transpose(0, 2, 1)
    grad_x = np.zeros(input_shape, dtype=grad_output.dtype)
    for start, count in plan.chunks():
        grad_cols = plan.columns(count)
        np.matmul(weight_matrix_t, plan.by_group(plan.output_columns(grad_output, start, count)),
                  out=plan.by_group(grad_cols))
        _col2im(grad_cols, grad_x, start, *plan.geometry)
    return grad_x


def conv2d_backward_weight(grad_output: np.ndarray, x: np.ndarray, weight_shape,
                           stride: Pair, padding: Pair, dilation: Pair,
                           groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its weight.

    grad_output: (N, C_out, H_out, W_out), x: (N, C_in, H, W) -> (C_out, C_in/groups, kH, kW).
    """
    check_same_dtype("conv2d_backward_weight", grad_output, x)
    stride, padding, dilation = _as_pairs(stride, padding, dilation)
    weight_shape = tuple(int(size) for size in weight_shape)
    out_hw = check_conv2d_grad_output(grad_output.shape, x.shape, weight_shape, stride,
                                      padding, dilation, groups)
    grad_output, x = np.ascontiguousarray(grad_output), np.ascontiguousarray(x)
    plan = _ConvPlan(x.shape, weight_shape, stride, padding, dilation, groups, out_hw, x.dtype)
    grad_weight = np.zeros((groups, plan.out_channels // groups, plan.rows // groups), x.dtype)
    for start, count in plan.chunks():
        cols = _im2col(x, start, plan.columns(count), *plan.geometry)
        grad_weight += np.matmul(plan.by_group(plan.output_columns(grad_output, start, count)),
                                 plan.by_group(cols).transpose(0, 2, 1))
    return grad_weight.reshape(weight_shape)


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
    kernel_size, stride, padding = _as_pairs(kernel_size, stride, padding)
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
    kernel_size, stride, padding = _as_pairs(kernel_size, stride, padding)
    out_hw = check_pool2d(x.shape, kernel_size, stride, padding)
    y = np.empty((*x.shape[:2], *out_hw), dtype=x.dtype)
    _avg_pool(_planes(x), _planes(y), kernel_size, stride, padding)
    return y


def avg_pool2d_backward(grad_output: np.ndarray, input_shape, kernel_size: Pair,
                        stride: Pair, padding: Pair) -> np.ndarray:
    """Gradient of avg_pool2d_forward: (N, C, H_out, W_out) -> input_shape (N, C, H, W)."""
    kernel_size, stride, padding = _as_pairs(kernel_size, stride, padding)
    check_pool2d(input_shape, kernel_size, stride, padding)
    grad_x = np.zeros(tuple(input_shape), dtype=grad_output.dtype)
    _avg_pool_backward(_planes(grad_output), _planes(grad_x), kernel_size, stride, padding)
    return grad_x


def upsample_nearest2d_forward(x: np.ndarray, scale: Pair) -> np.ndarray:
    """Nearest-neighbour upsampling by integer factors: (N, C, H, W) -> (N, C, sH*H, sW*W)."""
    (scale,) = _as_pairs(scale)
    n, c, h, w = x.shape
    y = np.empty((n, c, h * scale[0], w * scale[1]), dtype=x.dtype)
    _upsample_nearest(_planes(x), _planes(y), scale)
    return y


def upsample_nearest2d_backward(grad_output: np.ndarray, scale: Pair) -> np.ndarray:
    """Gradient of upsample_nearest2d_forward: (N, C, sH*H, sW*W) -> (N, C, H, W)."""
    (scale,) = _as_pairs(scale)
    check_upsample_grad(grad_output.shape, scale)
    n, c, h_out, w_out = grad_output.shape
    grad_x = np.zeros((n, c, h_out // scale[0], w_out // scale[1]), dtype=grad_output.dtype)
    _upsample_nearest_backward(_planes(grad_output), _planes(grad_x), scale)
    return grad_x
