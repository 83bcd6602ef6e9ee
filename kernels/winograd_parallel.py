"""Winograd F(2x2, 3x3) forward convolutions of small images as one parallel loop over the
chunks of a batch, on Numba's OpenMP threads: each chunk's padded copy, input transform, 16
GEMMs (NumPy's OpenBLAS through cpu_blas) and output transform run in one call without the GIL,
where cpu_conv.py's thread pool hands each chunk to a Python thread (about 80 us a call on
these virtual cores). The layout is winograd.py's channels-last one. float32 only (the BLAS
routine is sgemm); cpu_conv.py falls back otherwise. (The weight gradient in the same way ran
no faster than through the pool: 92.7 against 93.8 ms for the U-Net 8x8 step on two threads,
114 against 111 on one.)
"""
from __future__ import annotations

import numba

from . import cpu_blas
from .cpu_blas import gemm
from .cpu_columns import copy_interior_channels_last
from .winograd import transform_input_channels_last, transform_output_channels_last

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
