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

from . import cpu_blas
from .cpu_blas import gemm
from .cpu_columns import copy_interior_channels_last
from .winograd import (transform_grad_output, transform_input_channels_last,
                       transform_output_channels_last)

available = cpu_blas.available


@numba.njit(parallel=True, nogil=True, cache=True)
def _forward(sgemm, x, weight_t, y, padding, tiles_hw, starts, counts, padded, planes,
             products, rows):
    channels, channels_out = x.shape[1], y.shape[1]
    tiles = tiles_hw[0] * tiles_hw[1]
    for k in numba.prange(starts.size):
        start, count = starts[k], counts[k]
        copy_interior_channels_last(x, start, count, padded[k], padding)
        transform_input_channels_last(padded[k], planes[k], tiles_hw)
        for p in range(16):
            gemm(sgemm, count * tiles, channels_out, channels, planes[k, p].ctypes.data,
                 weight_t[p].ctypes.data, products[k, p].ctypes.data)
        transform_output_channels_last(products[k], y, start, count, tiles_hw, rows[k])
    return y


def forward(x, weight_t, y, padding, tiles_hw, starts, counts, padded, planes, products, rows):
    """y = the convolution of x (N, C, H, W) with U^T = weight_t (16, C, C_out), chunk k being
    samples starts[k] .. + counts[k]. Per chunk: padded (chunks, B, H_p, W_p, C), zero-bordered;
    planes (chunks, 16, >= B*tiles*C); products (chunks, 16, >= B*tiles*C_out); rows (chunks,
    8, C_out); B >= every count."""
    return _forward(cpu_blas.sgemm, x, weight_t, y, padding, tiles_hw, starts, counts, padded,
                    planes, products, rows)


@numba.njit(parallel=True, nogil=True, cache=True)
def _backward_weight(sgemm, grad_output, x, padding, tiles_hw, starts, counts, padded, planes,
                     grad_planes, sums):
    channels, channels_out = x.shape[1], grad_output.shape[1]
    tiles = tiles_hw[0] * tiles_hw[1]
    for k in numba.prange(starts.size):
        start, count = starts[k], counts[k]
        copy_interior_channels_last(x, start, count, padded[k], padding)
        transform_input_channels_last(padded[k], planes[k], tiles_hw)
        # (16, C_out, B*tiles), each plane starting 16 elements past the previous one's end
        # (planes 2^k bytes apart would share cache sets: this transform ran 5x slower).
        columns, size = count * tiles, grad_planes.itemsize
        transformed = as_strided(grad_planes[k], shape=(16, channels_out, columns),
                                 strides=((channels_out * columns + 16) * size, columns * size,
                                          size))
        transform_grad_output(grad_output, start, transformed, tiles_hw)
        for p in range(16):  # (C_out, B*tiles) @ (B*tiles, C)
            gemm(sgemm, channels_out, channels, columns, transformed[p].ctypes.data,
                 planes[k, p].ctypes.data, sums[k, p].ctypes.data)
    return sums


def backward_weight(grad_output, x, padding, tiles_hw, starts, counts, padded, planes,
                    grad_planes, sums):
    """sums[k] = the 16 products of chunk k's transformed grad_output (C_out, B*tiles) and
    transformed input (B*tiles, C), which summed over the chunks give the weight gradient in
    the Winograd domain. Buffers as in forward, and per chunk grad_planes (chunks, >= 16*C_out*
    B*tiles + 256) and sums (chunks, 16, C_out, C)."""
    return _backward_weight(cpu_blas.sgemm, grad_output, x, padding, tiles_hw, starts, counts,
                            padded, planes, grad_planes, sums)
