"""Winograd F(2x2, 3x3) convolutions of small images as one parallel loop over the chunks of
a batch, on Numba's OpenMP threads: each chunk's padded copy, input transform, 16 GEMMs (NumPy's
OpenBLAS through cpu_blas) and output transform run in one call without the GIL, where
cpu_conv.py's thread pool hands each chunk to a Python thread (about 80 us a call on these
virtual cores, and the threads then queue for the GIL between the steps of a chunk). The weight
gradient runs the same way, each chunk's 16 products into a sum of its own that the caller adds
up. The layout is winograd.py's channels-last one. float32 only (the BLAS routine is sgemm);
cpu_conv.py falls back otherwise.
"""
from __future__ import annotations

import numba
from numpy.lib.stride_tricks import as_strided

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)
from . import cpu_blas
from .cpu_blas import gemm, gemm_strided
from .cpu_columns import copy_interior, copy_interior_split
from .winograd import (transform_grad_output, transform_grad_output_channels_last,
                       transform_input, transform_input_channels_last, transform_output,
                       transform_output_channels_last)


@numba.njit(nogil=True, cache=True)
def _forward_chunk(sgemm, x, weight_t, y, padding, tiles_hw, start, count, padded, planes,
                   products, rows, staging, bias):
    """Samples start..start+count of y, in one worker's buffers."""
    channels, channels_out = x.shape[1], y.shape[1]
    tiles = tiles_hw[0] * tiles_hw[1]
    copy_interior_split(x, start, count, padded, padding)
    transform_input_channels_last(padded[:count], planes, tiles_hw)
    for p in range(16):  # (B*tiles, C) @ (C, C_out)
        gemm(sgemm, count * tiles, channels_out, channels, planes[p].ctypes.data,
             weight_t[p].ctypes.data, products[p].ctypes.data)
    transform_output_channels_last(products, y, start, count, tiles_hw, rows, staging, bias)


@numba.njit(parallel=True, nogil=True, cache=True)
def _forward(sgemm, x, weight_t, y, padding, tiles_hw, starts, counts, padded, planes,
             products, rows, staging, bias):
    workers = padded.shape[0]  # worker w takes chunks w, w + workers, ... in its buffers
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _forward_chunk(sgemm, x, weight_t, y, padding, tiles_hw, starts[k], counts[k],
                           padded[w], planes[w], products[w], rows[w], staging[w], bias)
    return y


def forward(x, weight_t, y, padding, tiles_hw, starts, counts, padded, planes, products, rows,
            staging, bias):
    """y = the convolution of x (N, C, H, W) with U^T = weight_t (16, C, C_out), chunk k being
    samples starts[k] .. + counts[k]. One set of buffers per worker thread (the leading axis):
    padded (workers, B, H_p, W_p, C), zero-bordered; planes (workers, 16, >= B*tiles*C);
    products (workers, 16, >= B*tiles*C_out); rows (workers, 8, C_out); staging (workers,
    H_out*W_out*C_out or 0: see winograd.transform_output_channels_last); B >= every count.
    bias: (C_out,) added to every output, or empty for none."""
    return _forward(cpu_blas.sgemm, x, weight_t, y, padding, tiles_hw, starts, counts, padded,
                    planes, products, rows, staging, bias)


@numba.njit(nogil=True, cache=True)
def _planes_view(flat, rows, columns):
    """A (16, rows, columns) view of a worker's flat buffer, each plane starting 16 elements
    past the previous one's end (planes 2^k bytes apart would share cache sets: the
    grad_output transform ran 5x slower)."""
    size = flat.itemsize
    return as_strided(flat, shape=(16, rows, columns),
                      strides=((rows * columns + 16) * size, columns * size, size))


@numba.njit(nogil=True, cache=True)
def _backward_weight_chunk(sgemm, grad_output, x, padding, tiles_hw, start, count, padded,
                           planes, padded_grad, grad_planes, sums, beta):
    """sums (+)= chunk start..start+count's 16 products, in one worker's buffers."""
    channels, channels_out = x.shape[1], grad_output.shape[1]
    columns = count * tiles_hw[0] * tiles_hw[1]
    copy_interior_split(x, start, count, padded, padding)
    transform_input_channels_last(padded[:count], planes, tiles_hw)
    copy_interior_split(grad_output, start, count, padded_grad, (0, 0))
    transform_grad_output_channels_last(padded_grad[:count], grad_planes, tiles_hw)
    for p in range(16):  # (B*tiles, C_out)^T @ (B*tiles, C)
        gemm_strided(sgemm, True, False, channels_out, channels, columns,
                     grad_planes[p].ctypes.data, channels_out, planes[p].ctypes.data, channels,
                     beta, sums[p].ctypes.data, channels)


@numba.njit(parallel=True, nogil=True, cache=True)
def _backward_weight(sgemm, grad_output, x, padding, tiles_hw, starts, counts, padded, planes,
                     padded_grad, grad_planes, sums):
    workers = padded.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _backward_weight_chunk(sgemm, grad_output, x, padding, tiles_hw, starts[k],
                                   counts[k], padded[w], planes[w], padded_grad[w],
                                   grad_planes[w], sums[w], 0.0 if k == w else 1.0)
    return sums


def backward_weight(grad_output, x, padding, tiles_hw, starts, counts, padded, planes,
                    padded_grad, grad_planes, sums):
    """sums[w] = the 16 products, summed over worker w's chunks, of a chunk's transformed
    grad_output (B*tiles, C_out)^T and transformed input (B*tiles, C); summed over the
    workers, the weight gradient in the Winograd domain. Buffers as in forward, and per worker
    padded_grad (workers, B, 2*tiles_h, 2, tiles_w, C_out), zero past grad_output's edge,
    grad_planes (workers, 16, >= B*tiles*C_out) and sums (workers, 16, C_out, C)."""
    return _backward_weight(cpu_blas.sgemm, grad_output, x, padding, tiles_hw, starts, counts,
                            padded, planes, padded_grad, grad_planes, sums)


# ---------------------------------------------------------------------------------------
# Channels first, for images too wide for the channels-last transforms: padded (workers, B, C,
# H_p, W_p) zero-bordered; planes, products and grad_planes flat per worker, seen as
# (16, rows, B*tiles) planes by _planes_view
# ---------------------------------------------------------------------------------------
@numba.njit(nogil=True, cache=True)
def _forward_first_chunk(sgemm, x, weight, y, padding, tiles_hw, start, count, padded, planes,
                         products):
    channels, channels_out = x.shape[1], y.shape[1]
    columns = count * tiles_hw[0] * tiles_hw[1]
    copy_interior(x, start, padded[:count], padding)
    transformed = transform_input(padded[:count], _planes_view(planes, channels, columns),
                                  tiles_hw)
    out = _planes_view(products, channels_out, columns)
    for p in range(16):  # U (C_out, C) @ V (C, B*tiles)
        gemm(sgemm, channels_out, columns, channels, weight[p].ctypes.data,
             transformed[p].ctypes.data, out[p].ctypes.data)
    transform_output(out, y, start, tiles_hw)


@numba.njit(parallel=True, nogil=True, cache=True)
def _forward_first(sgemm, x, weight, y, padding, tiles_hw, starts, counts, padded, planes,
                   products):
    workers = padded.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _forward_first_chunk(sgemm, x, weight, y, padding, tiles_hw, starts[k], counts[k],
                                 padded[w], planes[w], products[w])
    return y


def forward_channels_first(x, weight, y, padding, tiles_hw, starts, counts, padded, planes,
                           products):
    """y = the convolution of x with U = weight (16, C_out, C), channels first; per worker
    padded (workers, B, C, H_p, W_p) zero-bordered, planes and products (workers, >= 16 *
    (C or C_out) * B*tiles + 256)."""
    return _forward_first(cpu_blas.sgemm, x, weight, y, padding, tiles_hw, starts, counts,
                          padded, planes, products)


@numba.njit(nogil=True, cache=True)
def _backward_weight_first_chunk(sgemm, grad_output, x, padding, tiles_hw, start, count,
                                 padded, planes, grad_planes, sums, beta):
    channels, channels_out = x.shape[1], grad_output.shape[1]
    columns = count * tiles_hw[0] * tiles_hw[1]
    copy_interior(x, start, padded[:count], padding)
    transformed = transform_input(padded[:count], _planes_view(planes, channels, columns),
                                  tiles_hw)
    grads = transform_grad_output(grad_output, start,
                                  _planes_view(grad_planes, channels_out, columns), tiles_hw)
    for p in range(16):  # (C_out, B*tiles) @ (C, B*tiles)^T
        gemm_strided(sgemm, False, True, channels_out, channels, columns, grads[p].ctypes.data,
                     columns, transformed[p].ctypes.data, columns, beta, sums[p].ctypes.data,
                     channels)


@numba.njit(parallel=True, nogil=True, cache=True)
def _backward_weight_first(sgemm, grad_output, x, padding, tiles_hw, starts, counts, padded,
                           planes, grad_planes, sums):
    workers = padded.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _backward_weight_first_chunk(sgemm, grad_output, x, padding, tiles_hw, starts[k],
                                         counts[k], padded[w], planes[w], grad_planes[w],
                                         sums[w], 0.0 if k == w else 1.0)
    return sums


def backward_weight_channels_first(grad_output, x, padding, tiles_hw, starts, counts, padded,
                                   planes, grad_planes, sums):
    """As backward_weight, channels first (buffers as in forward_channels_first; sums
    (workers, 16, C_out, C))."""
    return _backward_weight_first(cpu_blas.sgemm, grad_output, x, padding, tiles_hw, starts,
                                  counts, padded, planes, grad_planes, sums)
