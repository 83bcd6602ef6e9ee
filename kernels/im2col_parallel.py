"""im2col and 1x1 convolutions as one parallel loop over the chunks of a batch, on Numba's
OpenMP threads, as winograd_parallel.py runs Winograd's: each chunk's padded copy, columns,
GEMMs (NumPy's OpenBLAS through cpu_blas) and scatter back run in one call without the GIL.
cpu_conv.py plans the chunks and buffers and keeps the same steps, chunk by chunk on its Python
thread pool, for what these loops do not take (float64, groups, no CBLAS symbol).

Shapes: x (N, C, H, W) or, for 1x1, (N, C, P); grad_output and y (N, C_out, P), P = H_out*W_out;
weight (C_out, rows), rows = C*kH*kW. Chunk k is samples starts[k] .. + counts[k], at most B;
worker w of the parallel loop takes chunks w, w + workers, ... in buffers of its own, the
leading axis of each: `padded` (workers, B, C, H_p, W_p) zero-bordered (see
cpu_columns.zero_bordered), or for a strided im2col `split` (workers, >= B*C*s_h*s_w*U*V), the
padded input in phases of the stride; the unused one of the two may be any array of its
dimensions. `table`, when not empty, is the
gather table of B samples (cpu_columns.gather_table) and the columns are gathered through it.
"""
from __future__ import annotations

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)
from . import cpu_blas
from .cpu_blas import gemm, gemm_strided
from .cpu_columns import (col2im, copy_from_interior, copy_interior, gather, im2col, pad_split,
                          scatter_add, unsplit)

_parallel = dict(parallel=True, nogil=True, cache=True)
_serial = dict(nogil=True, cache=True)


@numba.njit(**_serial)
def _split_buffer(split, count, channels, stride, padding, input_hw):
    """A (count, C, s_h, s_w, ceil(H_p/s_h), ceil(W_p/s_w)) view of the flat buffer split."""
    height, width = input_hw[0] + 2 * padding[0], input_hw[1] + 2 * padding[1]
    rows, row_w = -(-height // stride[0]), -(-width // stride[1])
    size = count * channels * stride[0] * stride[1] * rows * row_w
    return split[:size].reshape(count, channels, stride[0], stride[1], rows, row_w)


@numba.njit(**_serial)
def _split_view(x, start, count, padding, stride, padded, split):
    """Samples start.. of x with their zero padding, in phases of the stride (see
    _split_buffer), written into padded (stride 1) or split."""
    if stride[0] == 1 and stride[1] == 1:
        copy_interior(x, start, padded[:count], padding)
        return padded[:count].reshape(count, x.shape[1], 1, 1, padded.shape[2], padded.shape[3])
    return pad_split(x, start, _split_buffer(split, count, x.shape[1], stride, padding,
                                             x.shape[2:]), padding)


@numba.njit(**_serial)
def _wide_columns(x, start, count, padding, stride, kernel, dilation, out_hw, padded, split,
                  columns, table):
    """The (rows, count*P) columns of samples start.., every sample's pixels side by side."""
    rows = x.shape[1] * kernel[0] * kernel[1]
    pixels = out_hw[0] * out_hw[1]
    cols = columns[:rows * count * pixels].reshape(rows, count * pixels)
    if table.size:
        copy_interior(x, start, padded[:count], padding)
        return gather(padded.reshape(-1), table, cols)
    im2col(_split_view(x, start, count, padding, stride, padded, split),
           cols.reshape(rows, count, pixels), kernel, dilation, out_hw, True)
    return cols


@numba.njit(**_serial)
def _stack(by_sample, start, count, out):
    """out[o, b*P + p] = by_sample[start + b, o, p]: a chunk's (C_out, count*P) matrix."""
    channels, pixels = by_sample.shape[1], by_sample.shape[2]
    matrix = out[:channels * count * pixels].reshape(channels, count * pixels)
    for b in range(count):
        for o in range(channels):
            for p in range(pixels):
                matrix[o, b * pixels + p] = by_sample[start + b, o, p]
    return matrix


@numba.njit(**_serial)
def _unstack(matrix, by_sample, start, count):
    """by_sample[start + b, o, p] = matrix[o, b*P + p]: the adjoint of _stack."""
    channels, pixels = by_sample.shape[1], by_sample.shape[2]
    for b in range(count):
        for o in range(channels):
            for p in range(pixels):
                by_sample[start + b, o, p] = matrix[o, b * pixels + p]
    return by_sample


@numba.njit(**_serial)
def _forward_chunk(sgemm, x, weight, y, padding, stride, kernel, dilation, out_hw, start,
                   count, padded, split, columns, products, table, wide):
    """Samples start..start+count of y, in one worker's buffers."""
    channels_out, rows = weight.shape
    pixels = out_hw[0] * out_hw[1]
    if wide:  # one GEMM over the chunk's pixels, then into NCHW order
        cols = _wide_columns(x, start, count, padding, stride, kernel, dilation, out_hw, padded,
                             split, columns, table)
        product = products[:channels_out * count * pixels]
        gemm(sgemm, channels_out, count * pixels, rows, weight.ctypes.data, cols.ctypes.data,
             product.ctypes.data)
        _unstack(product.reshape(channels_out, count * pixels), y, start, count)
        return
    cols = columns[:count * rows * pixels].reshape(count, rows, pixels)
    im2col(_split_view(x, start, count, padding, stride, padded, split), cols, kernel, dilation,
           out_hw, False)
    for b in range(count):  # (C_out, rows) @ (rows, P), straight into y
        gemm(sgemm, channels_out, pixels, rows, weight.ctypes.data, cols[b].ctypes.data,
             y[start + b].ctypes.data)


@numba.njit(**_parallel)
def _forward(sgemm, x, weight, y, padding, stride, kernel, dilation, out_hw, starts, counts,
             padded, split, columns, products, table, wide):
    workers = columns.shape[0]  # worker w takes chunks w, w + workers, ... in its buffers
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _forward_chunk(sgemm, x, weight, y, padding, stride, kernel, dilation, out_hw,
                           starts[k], counts[k], padded[w], split[w], columns[w], products[w],
                           table, wide)
    return y


def forward(x, weight, y, padding, stride, kernel, dilation, out_hw, starts, counts, padded,
            split, columns, products, table, wide):
    """y = conv2d(x, weight): per chunk the columns, per-sample (C_out, rows) @ (rows, P) GEMMs,
    or if wide one over all the chunk's pixels into products (workers, >= C_out*B*P)."""
    return _forward(cpu_blas.sgemm, x, weight, y, padding, stride, kernel, dilation, out_hw,
                    starts, counts, padded, split, columns, products, table, wide)


@numba.njit(**_serial)
def _backward_input_chunk(sgemm, grad_output, weight, grad_x, padding, stride, kernel,
                          dilation, out_hw, start, count, padded, split, columns, grad_rows,
                          table):
    """Samples start..start+count of grad_x, in one worker's buffers."""
    channels_out, rows = weight.shape
    pixels = out_hw[0] * out_hw[1]
    if table.size:  # W^T @ the chunk's (C_out, count*P), scattered back through the table
        matrix = _stack(grad_output, start, count, grad_rows)
        cols = columns[:rows * count * pixels].reshape(rows, count * pixels)
        gemm_strided(sgemm, True, False, rows, count * pixels, channels_out, weight.ctypes.data,
                     rows, matrix.ctypes.data, count * pixels, 0.0, cols.ctypes.data,
                     count * pixels)
        target = padded[:count]
        target[:] = 0
        scatter_add(cols, table, target.reshape(-1))
        copy_from_interior(target, grad_x, start, padding)
        return
    cols = columns[:count * rows * pixels].reshape(count, rows, pixels)
    for b in range(count):  # W^T (rows, C_out) @ grad_output[n] (C_out, P)
        gemm_strided(sgemm, True, False, rows, pixels, channels_out, weight.ctypes.data, rows,
                     grad_output[start + b].ctypes.data, pixels, 0.0, cols[b].ctypes.data,
                     pixels)
    split_grad = _split_buffer(split, count, grad_x.shape[1], stride, padding, grad_x.shape[2:])
    split_grad[:] = 0
    unsplit(col2im(cols, split_grad, kernel, dilation, out_hw), grad_x, start, padding)


@numba.njit(**_parallel)
def _backward_input(sgemm, grad_output, weight, grad_x, padding, stride, kernel, dilation,
                    out_hw, starts, counts, padded, split, columns, grad_rows, table):
    workers = columns.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _backward_input_chunk(sgemm, grad_output, weight, grad_x, padding, stride, kernel,
                                  dilation, out_hw, starts[k], counts[k], padded[w], split[w],
                                  columns[w], grad_rows[w], table)
    return grad_x


def backward_input(grad_output, weight, grad_x, padding, stride, kernel, dilation, out_hw,
                   starts, counts, padded, split, columns, grad_rows, table):
    """grad_x = the adjoint of conv2d in its input: per chunk W^T times the chunk's gradient,
    then col2im (per sample) or, with a table, one wide GEMM and a scatter-add; grad_rows
    (workers, >= C_out*B*P) holds the wide route's (C_out, count*P)."""
    return _backward_input(cpu_blas.sgemm, grad_output, weight, grad_x, padding, stride,
                           kernel, dilation, out_hw, starts, counts, padded, split, columns,
                           grad_rows, table)


@numba.njit(**_parallel)
def _backward_weight(sgemm, grad_output, x, padding, stride, kernel, dilation, out_hw, starts,
                     counts, padded, split, columns, grad_rows, table, sums):
    channels_out, rows = sums.shape[1], sums.shape[2]
    workers = columns.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            cols = _wide_columns(x, starts[k], counts[k], padding, stride, kernel, dilation,
                                 out_hw, padded[w], split[w], columns[w], table)
            matrix = _stack(grad_output, starts[k], counts[k], grad_rows[w])
            inner = matrix.shape[1]  # count*P: (C_out, count*P) @ (count*P, rows)
            gemm_strided(sgemm, False, True, channels_out, rows, inner, matrix.ctypes.data,
                         inner, cols.ctypes.data, inner, 0.0 if k == w else 1.0,
                         sums[w].ctypes.data, rows)
    return sums


def backward_weight(grad_output, x, padding, stride, kernel, dilation, out_hw, starts, counts,
                    padded, split, columns, grad_rows, table, sums):
    """sums[w] (C_out, rows) = the sum over worker w's chunks of the chunk's (C_out, count*P)
    gradient times its wide columns transposed; summed over the workers, the weight
    gradient."""
    return _backward_weight(cpu_blas.sgemm, grad_output, x, padding, stride, kernel, dilation,
                            out_hw, starts, counts, padded, split, columns, grad_rows, table,
                            sums)


# ---------------------------------------------------------------------------------------
# 1x1: every sample's (C, P) image is its own column matrix
# ---------------------------------------------------------------------------------------
@numba.njit(**_parallel)
def _pointwise(sgemm, images, weight, out, transpose, starts, counts, workers):
    rows, inner = (weight.shape[1], weight.shape[0]) if transpose else weight.shape
    pixels = images.shape[2]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            for n in range(starts[k], starts[k] + counts[k]):
                gemm_strided(sgemm, transpose, False, rows, pixels, inner, weight.ctypes.data,
                             weight.shape[1], images[n].ctypes.data, pixels, 0.0,
                             out[n].ctypes.data, pixels)
    return out


def pointwise(images, weight, out, transpose, starts, counts, workers):
    """out[n] = W @ images[n] (the forward: x (N, C, P) -> y (N, C_out, P)), or with transpose
    W^T @ images[n] (the input gradient: grad_output -> grad_x); W (C_out, C)."""
    return _pointwise(cpu_blas.sgemm, images, weight, out, transpose, starts, counts, workers)


@numba.njit(**_parallel)
def _pointwise_backward_weight(sgemm, grad_output, x, starts, counts, sums):
    channels_out, channels = sums.shape[1], sums.shape[2]
    pixels = x.shape[2]
    workers = sums.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            for n in range(starts[k], starts[k] + counts[k]):  # += g[n] (C_out, P) @ x[n]^T
                gemm_strided(sgemm, False, True, channels_out, channels, pixels,
                             grad_output[n].ctypes.data, pixels, x[n].ctypes.data, pixels,
                             0.0 if n == starts[w] else 1.0, sums[w].ctypes.data, channels)
    return sums


def pointwise_backward_weight(grad_output, x, starts, counts, sums):
    """sums[w] (C_out, C) = the sum over worker w's samples of grad_output[n] @ x[n]^T."""
    return _pointwise_backward_weight(cpu_blas.sgemm, grad_output, x, starts, counts, sums)


def empty_table(dtype=np.int32) -> np.ndarray:
    """The `table` argument when the columns are not gathered."""
    return np.zeros((0, 0), dtype)
