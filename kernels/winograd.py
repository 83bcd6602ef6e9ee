"""Winograd's minimal filtering F(2x2, 3x3) on the CPU: 3x3 stride-1 convolutions with 2.25x
fewer multiplications than im2col + GEMM (Lavin and Gray, 2016).

Each 2x2 block of outputs ("tile") needs the 4x4 patch of input under it. In the transformed
domain, V = B^T d B for the patch d and U = G g G^T for the 3x3 kernel g, the 2x2 outputs are
A^T (U * V) A: 16 elementwise products where the direct sum has 36. Summed over input channels,
the products become 16 GEMMs, (C_out, C_in) @ (C_in, tiles), which do all the work; the serial
Numba loops here only transform (cpu_conv.py runs the chunks of a batch on parallel threads).
The weight gradient is the same identity read the other way (the transposition principle): the
sum over tiles of (A g_out A^T) * (B^T d B), mapped back by G^T . G, where 16 GEMMs of inner
dimension `tiles` do the sum. cpu_conv.py picks this path for 3x3 kernels
with stride 1 and dilation 1. For small images the input and output transforms also come with
the channels last (the end of this file), where the loops vectorize across channels.

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
"""
from __future__ import annotations

import functools

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)

_jit = dict(nogil=True, cache=True)  # nogil: cpu_conv runs chunks on several threads

G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=None)
def _g_kron(dtype) -> np.ndarray:
    """The weight transform as one (16, 9) matrix: row 4a + b, column 3i + j is G[a, i] G[b, j]."""
    return np.kron(G, G).astype(dtype)


def applies(weight_shape, stride, dilation) -> bool:
    """Whether F(2x2, 3x3) computes this convolution: a 3x3 kernel, stride 1, dilation 1."""
    return tuple(weight_shape[2:]) == (3, 3) and stride == (1, 1) and dilation == (1, 1)


def tiles(out_hw) -> tuple[int, int]:
    """The number of 2x2 output tiles down and across (a last, half-filled tile when odd)."""
    return (out_hw[0] + 1) // 2, (out_hw[1] + 1) // 2


def padded_hw(out_hw) -> tuple[int, int]:
    """The input height and width that the tiles read: 2 * tiles + 2. An odd output size reads
    one row or column past the padded input, so the caller's buffer is that much larger."""
    tiles_h, tiles_w = tiles(out_hw)
    return 2 * tiles_h + 2, 2 * tiles_w + 2


def transform_weight(weight: np.ndarray) -> np.ndarray:
    """U = G g G^T of each 3x3 kernel: (C_out, C_in/groups, 3, 3) -> (16, C_out, C_in/groups).
    Entry 4a + b of U is sum_ij G[a, i] G[b, j] g[i, j]: one GEMM with the Kronecker product."""
    transformed = _g_kron(weight.dtype) @ weight.reshape(-1, 9).T  # (16, C_out * C_in/g)
    return transformed.reshape(16, *weight.shape[:2])


def weight_gradient(products: np.ndarray) -> np.ndarray:
    """G^T M G of each summed product: (16, C_out, C_in/groups) -> (C_out, C_in/groups, 3, 3),
    the adjoint of transform_weight."""
    by_kernel = products.reshape(16, -1).T @ _g_kron(products.dtype)
    return by_kernel.reshape(*products.shape[1:], 3, 3)


# The 1-D transforms, each the product with one 4-long side of B^T, A^T or A. The 2-D ones
# apply them to the rows of a tile and then to the columns of the result. Written on scalars,
# so that the loops over a row of tiles vectorize across tiles.
@numba.njit(inline="always", **_jit)
def _b_t(d0, d1, d2, d3):
    """B^T d."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@numba.njit(inline="always", **_jit)
def _a_t(m0, m1, m2, m3):
    """A^T m."""
    return m0 + m1 + m2, m1 - m2 - m3


@numba.njit(inline="always", **_jit)
def _a(g0, g1):
    """A g."""
    return g0, g0 + g1, g0 - g1, -g1


@numba.njit(inline="always", **_jit)
def _store(transformed, plane, channel, column, values):
    """transformed[plane + s, channel, column] = values[s] for s < 4."""
    transformed[plane, channel, column] = values[0]
    transformed[plane + 1, channel, column] = values[1]
    transformed[plane + 2, channel, column] = values[2]
    transformed[plane + 3, channel, column] = values[3]


@numba.njit(**_jit)
def transform_input(padded, transformed, tiles_hw):
    """transformed[4r + s, c, b*tiles + t] = (B^T d B)[r, s] for the 4x4 patch d at (2*ty, 2*tx)
    of padded[b, c]. padded: (B, C, >= 2*tiles_h + 2, >= 2*tiles_w + 2); transformed:
    (16, C, B*tiles_h*tiles_w)."""
    batch, channels = padded.shape[0], padded.shape[1]
    tiles_h, tiles_w = tiles_hw
    for plane in range(batch * channels):
        b, c = plane // channels, plane % channels
        image = padded[b, c]
        for ty in range(tiles_h):
            h, first = 2 * ty, (b * tiles_h + ty) * tiles_w
            for tx in range(tiles_w):
                w = 2 * tx
                # B^T d column by column: columns[k][r] = (B^T d)[r, k]
                column0 = _b_t(image[h, w], image[h + 1, w], image[h + 2, w], image[h + 3, w])
                column1 = _b_t(image[h, w + 1], image[h + 1, w + 1], image[h + 2, w + 1],
                               image[h + 3, w + 1])
                column2 = _b_t(image[h, w + 2], image[h + 1, w + 2], image[h + 2, w + 2],
                               image[h + 3, w + 2])
                column3 = _b_t(image[h, w + 3], image[h + 1, w + 3], image[h + 2, w + 3],
                               image[h + 3, w + 3])
                # then (B^T d) B row by row, into planes 4r .. 4r + 3
                _store(transformed, 0, c, first + tx,
                       _b_t(column0[0], column1[0], column2[0], column3[0]))
                _store(transformed, 4, c, first + tx,
                       _b_t(column0[1], column1[1], column2[1], column3[1]))
                _store(transformed, 8, c, first + tx,
                       _b_t(column0[2], column1[2], column2[2], column3[2]))
                _store(transformed, 12, c, first + tx,
                       _b_t(column0[3], column1[3], column2[3], column3[3]))
    return transformed


@numba.njit(inline="always", **_jit)
def _output_tile(products, o, column):
    """(A^T m A) of the 4x4 m = products[:, o, column]: the tile's four outputs, row-major."""
    row0 = _a_t(products[0, o, column], products[4, o, column], products[8, o, column],
                products[12, o, column])
    row1 = _a_t(products[1, o, column], products[5, o, column], products[9, o, column],
                products[13, o, column])
    row2 = _a_t(products[2, o, column], products[6, o, column], products[10, o, column],
                products[14, o, column])
    row3 = _a_t(products[3, o, column], products[7, o, column], products[11, o, column],
                products[15, o, column])
    y00, y01 = _a_t(row0[0], row1[0], row2[0], row3[0])
    y10, y11 = _a_t(row0[1], row1[1], row2[1], row3[1])
    return y00, y01, y10, y11


@numba.njit(**_jit)
def transform_output(products, y, n_start, tiles_hw):
    """y[n_start + b, o, 2*ty + r, 2*tx + s] = (A^T m A)[r, s] for the 4x4 m gathered from
    products[:, o, b*tiles + t]; a half-filled last tile writes only its rows and columns
    inside y. products: (16, C_out, B*tiles); y: (N, C_out, H_out, W_out)."""
    channels, columns = products.shape[1], products.shape[2]
    tiles_h, tiles_w = tiles_hw
    batch = columns // (tiles_h * tiles_w)
    out_h, out_w = y.shape[2], y.shape[3]
    full_w = out_w // 2  # tiles with both columns inside y
    for plane in range(batch * channels):
        b, o = plane // channels, plane % channels
        image = y[n_start + b, o]
        for ty in range(tiles_h):
            h, first = 2 * ty, (b * tiles_h + ty) * tiles_w
            two_rows = h + 1 < out_h
            for tx in range(full_w):
                y00, y01, y10, y11 = _output_tile(products, o, first + tx)
                image[h, 2 * tx], image[h, 2 * tx + 1] = y00, y01
                if two_rows:
                    image[h + 1, 2 * tx], image[h + 1, 2 * tx + 1] = y10, y11
            if full_w < tiles_w:  # odd width: the last tile's left column only
                y00, _, y10, _ = _output_tile(products, o, first + full_w)
                image[h, 2 * full_w] = y00
                if two_rows:
                    image[h + 1, 2 * full_w] = y10
    return y


@numba.njit(**_jit)
def transform_grad_output(grad_output, n_start, transformed, tiles_hw):
    """transformed[4r + s, o, b*tiles + t] = (A g A^T)[r, s] for the 2x2 tile g at (2*ty, 2*tx)
    of grad_output[n_start + b, o], zero past its last row or column. A = (A^T)^T is 4x2."""
    channels = grad_output.shape[1]
    out_h, out_w = grad_output.shape[2], grad_output.shape[3]
    tiles_h, tiles_w = tiles_hw
    batch = transformed.shape[2] // (tiles_h * tiles_w)
    zero, one = grad_output.dtype.type(0), grad_output.dtype.type(1)
    for plane in range(batch * channels):
        b, o = plane // channels, plane % channels
        image = grad_output[n_start + b, o]
        for ty in range(tiles_h):
            h, first = 2 * ty, (b * tiles_h + ty) * tiles_w
            second_row = min(h + 1, out_h - 1)  # read twice but zeroed when past the edge
            keep = zero if h + 1 >= out_h else one
            for tx in range(tiles_w):
                w = 2 * tx
                right = min(w + 1, out_w - 1)
                keep_right = zero if w + 1 >= out_w else one
                column0 = _a(image[h, w], keep * image[second_row, w])
                column1 = _a(keep_right * image[h, right],
                             keep * keep_right * image[second_row, right])
                _store(transformed, 0, o, first + tx, _a(column0[0], column1[0]))
                _store(transformed, 4, o, first + tx, _a(column0[1], column1[1]))
                _store(transformed, 8, o, first + tx, _a(column0[2], column1[2]))
                _store(transformed, 12, o, first + tx, _a(column0[3], column1[3]))
    return transformed


# ---------------------------------------------------------------------------------------
# The input and grad_output transforms with the channels last
# ---------------------------------------------------------------------------------------
# On images a few tiles across, transform_input's loops run a handful of iterations per row
# and stay scalar: at 8x8 and 4x4 the transforms took more time than the GEMMs. Here the
# padded image is channels last with its columns split by parity, (B, H_p, 2, W_p/2, C):
# column 2u + q of row h at [h, q, u]. The transformed planes are (16, B*tiles, C), and entry
# (r, s) of a whole row of tiles is then one loop over tiles_w*C contiguous elements of each
# of its (up to) four terms: the patches' column j of tile tx is [q, tx + j // 2] for q = j % 2.
# One loop writes one plane, since LLVM leaves a loop that writes all 16 planes scalar (it
# cannot check so many pointers for overlap). With a loop per tile over its C channels
# instead, a 32x32 sample of 32 channels took 27 against 13 us: most of the time went into
# starting the 16 short loops of every tile. Indices are unsigned (_U), as in cpu_columns.py.
_U = np.uint64
# The rows of B^T (4x4) and of A (4x2) as (first, sign, second, sign, terms): row r of R d is
# sign * d[first] (+ sign * d[second] where terms is 2).
B_T_ROWS = ((0, 1.0, 2, -1.0, 2), (1, 1.0, 2, 1.0, 2), (2, 1.0, 1, -1.0, 2), (1, 1.0, 3, -1.0, 2))
A_ROWS = ((0, 1.0, 0, 0.0, 1), (0, 1.0, 1, 1.0, 2), (0, 1.0, 1, -1.0, 2), (1, -1.0, 1, 0.0, 1))


@numba.njit(inline="always", **_jit)
def signed_sum(source, offsets, signs, terms, target, start, length):
    """target[start + k] = sum over the first `terms` t of signs[t] * source[offsets[t] + k],
    for k < length, added in that order."""
    a, b, c_, d = offsets
    if terms == 4:
        for k in range(length):
            target[start + k] = (signs[0] * source[a + k] + signs[1] * source[b + k]
                                 + signs[2] * source[c_ + k] + signs[3] * source[d + k])
    elif terms == 2:
        for k in range(length):
            target[start + k] = signs[0] * source[a + k] + signs[1] * source[b + k]
    else:
        for k in range(length):
            target[start + k] = signs[0] * source[a + k]


@numba.njit(inline="always", **_jit)
def entry_terms(rows, r, s, row_offsets, column_offsets):
    """The source offsets and signs of M[r, s] = sum_ij R[r, i] d[i, j] R[s, j], R given by its
    rows' terms and d[i, j] at row_offsets[i] + column_offsets[j]: (offsets, signs, terms),
    the terms in the order (i0 j0, i0 j1, i1 j0, i1 j1)."""
    i0, si0, i1, si1, ni = rows[r]
    j0, sj0, j1, sj1, nj = rows[s]
    if nj == 2:
        offsets = (row_offsets[i0] + column_offsets[j0], row_offsets[i0] + column_offsets[j1],
                   row_offsets[i1] + column_offsets[j0], row_offsets[i1] + column_offsets[j1])
        signs = (si0 * sj0, si0 * sj1, si1 * sj0, si1 * sj1)
    else:  # (i0 j0, i1 j0): one term across
        offsets = (row_offsets[i0] + column_offsets[j0], row_offsets[i1] + column_offsets[j0],
                   _U(0), _U(0))
        signs = (si0 * sj0, si1 * sj0, 0.0, 0.0)
    return offsets, signs, ni * nj


@numba.njit(**_jit)
def transform_split(padded, planes, tiles_hw, rows):
    """planes[4r + s, (b*tiles + t)*C + c] = (R d R^T)[r, s] for the patch d at (2*ty, 2*tx) of
    image b of padded, R the 4-row matrix of `rows` (B_T_ROWS: the input's 4x4 patches; A_ROWS:
    grad_output's 2x2 tiles). padded: (B, H_p, 2, >= tiles_w + 1 (or tiles_w for A), C), the
    columns split by parity, C-contiguous; planes: (16, >= B*tiles*C), C-contiguous (a plane's
    rows may be padded)."""
    batch, height, _, half, channels = padded.shape
    source, target = padded.reshape(-1), planes.reshape(-1)
    tiles_h, tiles_w = _U(tiles_hw[0]), _U(tiles_hw[1])
    C, plane = _U(channels), _U(planes.shape[1])
    kind = padded.dtype.type  # the signs in the input's type: float64 ones made it all float64
    row = _U(2) * _U(half) * C  # between the rows of padded
    parity = _U(half) * C  # between a row's even and odd columns
    length = tiles_w * C  # a row of tiles
    row_offsets = (_U(0), row, _U(2) * row, _U(3) * row)
    column_offsets = (_U(0), parity, C, parity + C)  # columns 2tx + j, j < 4, from tile tx's
    for b in range(_U(batch)):
        for ty in range(tiles_h):
            corner = (b * _U(height) + ty + ty) * row
            start = (b * tiles_h + ty) * length
            for r in range(4):
                for s in range(4):
                    offsets, signs, terms = entry_terms(rows, r, s, row_offsets, column_offsets)
                    signed_sum(source, (corner + offsets[0], corner + offsets[1],
                                        corner + offsets[2], corner + offsets[3]),
                               (kind(signs[0]), kind(signs[1]), kind(signs[2]), kind(signs[3])),
                               terms, target, _U(4 * r + s) * plane + start, length)
    return planes


@numba.njit(**_jit)
def transform_input_channels_last(padded, planes, tiles_hw):
    """planes[4r + s, (b*tiles + t)*C + c] = (B^T d B)[r, s] for the 4x4 patch d at (2*ty, 2*tx)
    of padded[b], (B, >= 2*tiles_h + 2, 2, >= tiles_w + 1, C) split by parity (see above)."""
    return transform_split(padded, planes, tiles_hw, B_T_ROWS)


@numba.njit(**_jit)
def transform_grad_output_channels_last(padded_grad, planes, tiles_hw):
    """planes[4r + s, (b*tiles + t)*C_out + o] = (A g A^T)[r, s] for the 2x2 tile g at (2*ty,
    2*tx) of padded_grad[b], (B, 2*tiles_h, 2, tiles_w, C_out) split by parity: grad_output
    channels last, zero past its last row or column."""
    return transform_split(padded_grad, planes, tiles_hw, A_ROWS)


@numba.njit(inline="always", **_jit)
def _combine3(source, first, second, third, signs, target, start, channels, step):
    """target[start + c*step] = the signed sum of source[first + c], .., source[third + c]."""
    for c in range(channels):
        target[start + c * step] = (signs[0] * source[first + c] + signs[1] * source[second + c]
                                    + signs[2] * source[third + c])


@numba.njit(**_jit)
def unstage(staging, start, target, image, channels, pixels):
    """target[image + c*pixels + p] = staging[start + p*C + c]: one sample from channels last
    into NCHW, in blocks of 16 channels by 16 pixels, each channel's 16 pixels (one cache line
    of y) written at once. Writing the 16 channels of one pixel at a time put 16 writes `pixels`
    apart in flight, which at 1024 pixels (4 KiB) share one set of the L1 cache: 64 channels
    took 187 against 23 us, 32 channels of 4096 pixels 373 against 45."""
    for first in range(_U(0), channels, _U(16)):
        last = min(first + _U(16), channels)
        for block in range(_U(0), pixels, _U(16)):
            end = min(block + _U(16), pixels)
            for c in range(first, last):
                for p in range(block, end):
                    target[image + c * pixels + p] = staging[start + p * channels + c]


@numba.njit(**_jit)
def transform_output_channels_last(planes, y, n_start, count, tiles_hw, rows, staging, bias):
    """y[n_start + b, o, 2*ty + r, 2*tx + s] = (A^T m A)[r, s], for b < count, inside y only,
    where m is the 4x4 at planes[:, (b*tiles + t)*C_out + o]: planes (16, >= count*tiles*C_out),
    C-contiguous, the products in the layout of transform_input_channels_last. A^T m goes
    through rows, an (8, C_out) C-contiguous scratch array, by the same one-plane-per-loop
    rule. y (NCHW, C-contiguous) is written at its stride, or, given a staging array of at
    least H_out*W_out*C_out elements (empty: none), each sample's outputs go there channels
    last first and then into y (unstage): where a sample's channels lie far apart in y, writes
    at that stride are slow (16x16 outputs, 64 channels: 70 against 24 us a chunk of two).
    bias: (C_out,) added to every output (into rows[1] and rows[5], which both outputs of
    their row add), or empty for none."""
    channels = _U(y.shape[1])
    tiles_h, tiles_w = _U(tiles_hw[0]), _U(tiles_hw[1])
    out_h, out_w = _U(y.shape[2]), _U(y.shape[3])
    source, middle, target = planes.reshape(-1), rows.reshape(-1), y.reshape(-1)
    plane, pixels = _U(planes.shape[1]), out_h * out_w
    one = y.dtype.type(1)
    add, subtract = (one, one, one), (one, -one, -one)  # A^T's rows: (1, 1, 1, 0), (0, 1, -1, -1)
    staged, biased = staging.size > 0, bias.size > 0
    written = staging.reshape(-1) if staged else target
    step, column = (_U(1), channels) if staged else (pixels, _U(1))  # between channels, pixels
    for b in range(_U(count)):
        image = (_U(n_start) + b) * channels * pixels
        base = _U(0) if staged else image
        for ty in range(tiles_h):
            for tx in range(tiles_w):
                start = ((b * tiles_h + ty) * tiles_w + tx) * channels
                for j in range(4):  # rows[4r + j] = (A^T m)[r, j]
                    _combine3(source, start + _U(j) * plane, start + _U(4 + j) * plane,
                              start + _U(8 + j) * plane, add, middle, _U(j) * channels,
                              channels, _U(1))
                    _combine3(source, start + _U(4 + j) * plane, start + _U(8 + j) * plane,
                              start + _U(12 + j) * plane, subtract, middle,
                              _U(4 + j) * channels, channels, _U(1))
                if biased:  # y[r, 0] and y[r, 1] both add (A^T m)[r, 1]
                    for c in range(channels):
                        middle[channels + c] += bias[c]
                        middle[_U(5) * channels + c] += bias[c]
                h, w = ty + ty, tx + tx
                for r in range(2):  # y[r, s] = ((A^T m) A)[r, s]
                    if h + _U(r) >= out_h:
                        continue
                    pixel = base + ((h + _U(r)) * out_w + w) * column
                    first = _U(4 * r) * channels
                    _combine3(middle, first, first + channels, first + _U(2) * channels, add,
                              written, pixel, channels, step)
                    if w + _U(1) < out_w:
                        _combine3(middle, first + channels, first + _U(2) * channels,
                                  first + _U(3) * channels, subtract, written, pixel + column,
                                  channels, step)
        if staged:
            unstage(written, _U(0), target, image, channels, pixels)
    return y
