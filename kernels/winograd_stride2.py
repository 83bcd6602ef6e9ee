"""4x4 stride-2 convolutions (the DCGAN's) as Winograd F(2x2, 2x2) over the phases of the
stride, with 1.78x fewer multiplications than im2col + GEMM, on the CPU.

The phases: with x_p the zero-padded input and X_pq[u, v] = x_p[2u + p, 2v + q] for p, q in
{0, 1}, and the kernel's taps split the same way, g_pq[a, b] = w[2a + p, 2b + q], the
convolution is

    y[i, j] = sum_pq sum_ab g_pq[a, b] X_pq[i + a, j + b]:

a 2x2 stride-1 convolution over 4C channels, the four phases of each input channel. Each 2x2
tile of outputs needs the 3x3 patch d of every phase under it, and Winograd's F(2x2, 2x2) gives
the tile as A^T (U * V) A with V = B^T d B and U = G g G^T: 9 products where the direct sum has
16. Summed over the 4C channels, the products are 9 GEMMs, (tiles, 4C) @ (4C, C_out).

    B^T = [[1, -1, 0], [0, 1, 0], [0, -1, 1]]
    G   = [[1, 0], [1, 1], [0, 1]]
    A^T = [[1, 1, 0], [0, 1, 1]]

All three hold only 0 and 1 and -1, so the transforms add and subtract and round no more than
the direct sum does. The gradients come the same way:
- The weight gradient is the identity read the other way: g_out's 2x2 tiles play the kernel,
  G (A here) takes them to 3x3, and 9 GEMMs of inner dimension `tiles` sum the products with
  the same V; G^T . G maps the sums back to the 2x2 taps of each phase.
- The input gradient of phase pq is a stride-1 convolution of g_out with g_pq flipped, read at
  an offset of the phase's own: phase pq's rows u start at the first whose input row 2u + p -
  padding is inside x. So each phase transforms g_out once and runs 9 GEMMs (tiles, C_out) @
  (C_out, C), and its outputs go to every other row and column of x.

Everything runs channels last (C-contiguous vectors, as in winograd.py's channels-last
transforms): each loop of a transform writes one plane from a few reads, and vectorizes across
the channels. The chunks of a batch run as one parallel loop on Numba's OpenMP threads, each
chunk's copies, transforms and GEMMs (NumPy's OpenBLAS through cpu_blas) in one call. float32
only, without groups; cpu_conv.py says when this path pays and falls back to im2col otherwise.
"""
from __future__ import annotations

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)
from . import cpu_blas
from .cpu_blas import gemm_strided
from .cpu_columns import copy_interior_channels_last
from .winograd import entry_terms, signed_sum, unstage

_jit = dict(nogil=True, cache=True)
_U = np.uint64  # unsigned indices, as in cpu_columns.py: no wrap-around checks in the loops

# Row r of B^T, of G (= A: the grad_output transform's matrix) and of A^T as up to two
# (index, sign) terms: (first, sign, second, sign, terms).
B_T_ROWS = ((0, 1.0, 1, -1.0, 2), (1, 1.0, 1, 0.0, 1), (2, 1.0, 1, -1.0, 2))
A_ROWS = ((0, 1.0, 0, 0.0, 1), (0, 1.0, 1, 1.0, 2), (1, 1.0, 1, 0.0, 1))
A_T_ROWS = ((0, 1.0, 1, 1.0, 2), (1, 1.0, 2, 1.0, 2))


def applies(weight_shape, stride, dilation) -> bool:
    """Whether this path computes the convolution: a 4x4 kernel, stride 2, dilation 1."""
    return tuple(weight_shape[2:]) == (4, 4) and stride == (2, 2) and dilation == (1, 1)


def tiles(out_hw) -> tuple[int, int]:
    """The 2x2 output tiles down and across (a last, half-filled tile when odd)."""
    return (out_hw[0] + 1) // 2, (out_hw[1] + 1) // 2


def padded_hw(input_hw, padding, out_hw) -> tuple[int, int]:
    """The padded input's height and width: 4 * tiles + 2, which the tiles read, and at least
    padding + the input, which the copy writes."""
    return tuple(max(4 * count + 2, pad + size)
                 for count, pad, size in zip(tiles(out_hw), padding, input_hw))


def phases(size: int, pad: int, out_size: int):
    """Per phase p of one axis of the input gradient: (first, tiles), where phase p's outputs
    u = first, first + 1, ... are the rows 2u + p - pad inside the input's `size`, in tiles of
    two; and the height of grad_output padded by one row above, enough for every tile's
    three rows."""
    result, rows = [], out_size + 1
    for p in range(2):
        first = max(0, -(-(pad - p) // 2))
        end = -(-(size + pad - p) // 2)  # one past the last u inside the input
        count = -(-max(0, end - first) // 2)
        result.append((first, count))
        rows = max(rows, first + 2 * count + 1)  # tile t reads rows first + 2t .. + 2
    return tuple(result), rows


@numba.njit(inline="always", **_jit)
def _g(g0, g1):
    """G g (= A g)."""
    return g0, g0 + g1, g1


@numba.njit(inline="always", **_jit)
def _g_t(m0, m1, m2):
    """G^T m."""
    return m0 + m1, m1 + m2


@numba.njit(parallel=True, **_jit)
def transform_taps(weight, out, flip):
    """out[3r + s, o, 2p + q, c] = (G g G^T)[r, s] of kernel (o, c)'s taps g = g_pq, or with
    flip g[a, b] = g_pq[1 - a, 1 - b]. weight: (C_out, C, 4, 4); out: (9, C_out, 4, C)."""
    channels_out, channels = weight.shape[:2]
    for o in numba.prange(channels_out):
        for p in range(2):
            for q in range(2):
                for c in range(channels):  # each loop writes 9 rows, one per plane
                    taps = weight[o, c]
                    if flip:
                        g00, g01 = taps[2 + p, 2 + q], taps[2 + p, q]
                        g10, g11 = taps[p, 2 + q], taps[p, q]
                    else:
                        g00, g01 = taps[p, q], taps[p, 2 + q]
                        g10, g11 = taps[2 + p, q], taps[2 + p, 2 + q]
                    column0, column1 = _g(g00, g10), _g(g01, g11)  # G g, by column
                    for r in range(3):
                        row = _g(column0[r], column1[r])  # (G g) G^T, row r
                        for s in range(3):
                            out[3 * r + s, o, 2 * p + q, c] = row[s]
    return out


def transform_weight(weight: np.ndarray, flip: bool = False) -> np.ndarray:
    """U: (C_out, C, 4, 4) -> (9, C_out, 4, C), entry (o, 2p + q, c) of plane 3r + s being
    (G g_pq G^T)[r, s] of kernel (o, c): seen as (9, C_out, 4C), the forward's 9 weights; with
    flip, of the flipped taps f[a, b] = g_pq[1 - a, 1 - b], and plane k's (C_out, C) matrix
    [k, :, 2p + q] the weight of phase pq's input gradient."""
    return transform_taps(weight, np.empty((9, weight.shape[0], 4, weight.shape[1]),
                                           weight.dtype), flip)


@numba.njit(parallel=True, **_jit)
def weight_gradient(sums, grad_weight):
    """grad_weight[o, c, 2a + p, 2b + q] = (G^T m G)[a, b], the adjoint of transform_weight,
    for m[r, s] = the sum over workers w of sums[w, 3r + s, o, (2p + q) * C + c]. sums:
    (workers, 9, C_out, 4C); grad_weight: (C_out, C, 4, 4)."""
    workers, channels_out, columns = sums.shape[0], sums.shape[2], sums.shape[3]
    channels = columns // 4
    for o in numba.prange(channels_out):
        m = np.empty((9, columns), sums.dtype)  # row o of the 9 planes, summed over workers
        for k in range(9):
            for column in range(columns):
                m[k, column] = sums[0, k, o, column]
            for w in range(1, workers):
                for column in range(columns):
                    m[k, column] += sums[w, k, o, column]
        for p in range(2):
            for q in range(2):
                for c in range(channels):
                    column = (2 * p + q) * channels + c
                    rows0 = _g_t(m[0, column], m[3, column], m[6, column])  # G^T m, by column
                    rows1 = _g_t(m[1, column], m[4, column], m[7, column])
                    rows2 = _g_t(m[2, column], m[5, column], m[8, column])
                    for a in range(2):
                        first, second = _g_t(rows0[a], rows1[a], rows2[a])  # (G^T m) G
                        grad_weight[o, c, 2 * a + p, q] = first
                        grad_weight[o, c, 2 * a + p, 2 + q] = second
    return grad_weight


# ---------------------------------------------------------------------------------------
# The transforms, channels last
# ---------------------------------------------------------------------------------------
@numba.njit(**_jit)
def transform_tiles(padded, batch, planes, tiles_hw, origin_hw, tile_step, element_step, rows,
                    block, blocks):
    """planes[3r + s, ((b*tiles + t)*blocks + block)*C + c] = (R d R^T)[r, s] for the 3x3 patch
    d[i, j] = padded[b, o_h + tile_step*ty + element_step*i, o_w + tile_step*tx +
    element_step*j, c] of tile t = ty * tiles_w + tx, R the 3x3 matrix of `rows` (B^T_ROWS or
    A_ROWS, A being 3x2 with a third column of zeros: the patch's last row and column unread),
    for b < batch.

    padded: (>= batch, H_p, W_p, C), C-contiguous; planes: (9, >= batch*tiles*blocks*C),
    C-contiguous."""
    height, width, channels = padded.shape[1:]
    source, target = padded.reshape(-1), planes.reshape(-1)
    tiles_h, tiles_w = _U(tiles_hw[0]), _U(tiles_hw[1])
    C, plane = _U(channels), _U(planes.shape[1])
    row, column = _U(element_step) * _U(width) * C, _U(element_step) * C
    kind = padded.dtype.type  # the signs in the input's type: float64 ones made it all float64
    row_offsets, column_offsets = (_U(0), row, _U(2) * row), (_U(0), column, _U(2) * column)
    for b in range(_U(batch)):
        for ty in range(tiles_h):
            for tx in range(tiles_w):
                corner = ((b * _U(height) + _U(origin_hw[0]) + _U(tile_step) * ty) * _U(width)
                          + _U(origin_hw[1]) + _U(tile_step) * tx) * C
                start = (((b * tiles_h + ty) * tiles_w + tx) * _U(blocks) + _U(block)) * C
                for r in range(3):
                    for s in range(3):
                        offsets, signs, terms = entry_terms(rows, r, s, row_offsets,
                                                            column_offsets)
                        signed_sum(source, (corner + offsets[0], corner + offsets[1],
                                            corner + offsets[2], corner + offsets[3]),
                                   (kind(signs[0]), kind(signs[1]), kind(signs[2]),
                                    kind(signs[3])),
                                   terms, target, _U(3 * r + s) * plane + start, C)
    return planes


@numba.njit(**_jit)
def untransform_tiles(planes, b, tiles_hw, origin_hw, tile_step, element_step, staging,
                      out_hw, channels):
    """staging[((b*H + h)*W + w)*C + c] = (A^T m A)[r, s] for the 3x3 m at planes[:, (b*tiles
    + t)*C + c], at h = o_h + tile_step*ty + element_step*r (and w alike) where inside out_hw
    (H, W); the rest of staging is left as it is. planes: (9, >= (b + 1)*tiles*C),
    C-contiguous; staging: images channels last, flat."""
    channels = _U(channels)
    source = planes.reshape(-1)
    tiles_h, tiles_w = _U(tiles_hw[0]), _U(tiles_hw[1])
    out_h, out_w = _U(out_hw[0]), _U(out_hw[1])
    plane = _U(planes.shape[1])
    one = planes.dtype.type(1)
    row_offsets = (_U(0), _U(3) * plane, _U(6) * plane)  # m[i, j] at plane 3i + j
    column_offsets = (_U(0), plane, _U(2) * plane)
    for ty in range(tiles_h):
        for tx in range(tiles_w):
            start = ((_U(b) * tiles_h + ty) * tiles_w + tx) * channels
            for r in range(2):
                h = _U(origin_hw[0]) + _U(tile_step) * ty + _U(element_step * r)
                if h >= out_h:
                    continue
                for s in range(2):
                    w = _U(origin_hw[1]) + _U(tile_step) * tx + _U(element_step * s)
                    if w >= out_w:
                        continue
                    offsets, signs, terms = entry_terms(A_T_ROWS, r, s, row_offsets,
                                                        column_offsets)
                    signed_sum(source, (start + offsets[0], start + offsets[1],
                                         start + offsets[2], start + offsets[3]),
                                (one, one, one, one), terms, staging,
                                ((_U(b) * out_h + h) * out_w + w) * channels, channels)
    return staging


# ---------------------------------------------------------------------------------------
# The three convolutions as parallel loops over the chunks of a batch. Chunk k is samples
# starts[k] .. + counts[k]; worker w takes chunks w, w + workers, ... in buffers of its own
# (the leading axis of each): padded copies zero-bordered, planes and products (9, >= the
# chunk's tiles * channels), staging (>= B * pixels * channels), B >= every count.
# ---------------------------------------------------------------------------------------
@numba.njit(**_jit)
def _transform_input(x, start, count, padded, planes, padding, tiles_hw):
    """V of samples start.. of x into planes: the padded copy, then each phase's patches."""
    copy_interior_channels_last(x, start, count, padded, padding)
    for p in range(2):
        for q in range(2):
            transform_tiles(padded, count, planes, tiles_hw, (p, q), 4, 2, B_T_ROWS, 2 * p + q,
                            4)


@numba.njit(**_jit)
def _unstage_chunk(staging, y, start, count):
    """y[start + b] (NCHW) = staging's image b (channels last), for b < count."""
    channels, pixels = _U(y.shape[1]), _U(y.shape[2] * y.shape[3])
    target = y.reshape(-1)
    for b in range(_U(count)):
        unstage(staging, b * pixels * channels, target, (_U(start) + b) * channels * pixels,
                channels, pixels)


@numba.njit(nogil=True, cache=True)
def _forward_chunk(sgemm, x, weight, y, padding, tiles_hw, start, count, padded, planes,
                   products, staging):
    channels, channels_out = x.shape[1], y.shape[1]
    rows = count * tiles_hw[0] * tiles_hw[1]
    _transform_input(x, start, count, padded, planes, padding, tiles_hw)
    for k in range(9):  # (B*tiles, 4C) @ U^T, U (C_out, 4C)
        gemm_strided(sgemm, False, True, rows, channels_out, 4 * channels,
                     planes[k].ctypes.data, 4 * channels, weight[k].ctypes.data,
                     4 * channels, 0.0, products[k].ctypes.data, channels_out)
    for b in range(count):
        untransform_tiles(products, b, tiles_hw, (0, 0), 2, 1, staging, y.shape[2:],
                          channels_out)
    _unstage_chunk(staging, y, start, count)


@numba.njit(parallel=True, nogil=True, cache=True)
def _forward(sgemm, x, weight, y, padding, tiles_hw, starts, counts, padded, planes,
             products, staging):
    workers = padded.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _forward_chunk(sgemm, x, weight, y, padding, tiles_hw, starts[k], counts[k],
                           padded[w], planes[w], products[w], staging[w])
    return y


def forward(x, weight, y, padding, tiles_hw, starts, counts, padded, planes, products,
            staging):
    """y (N, C_out, H_out, W_out) = the convolution of x (N, C, H, W) with U = weight
    (9, C_out, 4C) (transform_weight). padded (workers, B, H_p, W_p, C) (padded_hw), planes
    (workers, 9, >= B*tiles*4C), products (workers, 9, >= B*tiles*C_out), staging
    (workers, >= B*H_out*W_out*C_out)."""
    return _forward(cpu_blas.sgemm, x, weight, y, padding, tiles_hw, starts, counts, padded,
                    planes, products, staging)


@numba.njit(nogil=True, cache=True)
def _backward_weight_chunk(sgemm, grad_output, x, padding, tiles_hw, start, count, padded,
                           planes, padded_grad, grad_planes, sums, beta):
    channels, channels_out = x.shape[1], grad_output.shape[1]
    rows = count * tiles_hw[0] * tiles_hw[1]
    _transform_input(x, start, count, padded, planes, padding, tiles_hw)
    copy_interior_channels_last(grad_output, start, count, padded_grad, (0, 0))
    transform_tiles(padded_grad, count, grad_planes, tiles_hw, (0, 0), 2, 1, A_ROWS, 0, 1)
    for k in range(9):  # (B*tiles, C_out)^T @ (B*tiles, 4C)
        gemm_strided(sgemm, True, False, channels_out, 4 * channels, rows,
                     grad_planes[k].ctypes.data, channels_out, planes[k].ctypes.data,
                     4 * channels, beta, sums[k].ctypes.data, 4 * channels)


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
    """sums[w] = the 9 products (9, C_out, 4C), summed over worker w's chunks, of the
    transformed input and grad_output; summed over the workers, the weight gradient in the
    Winograd domain (weight_gradient maps it back). padded and planes as in forward;
    padded_grad (workers, B, 2*tiles_h, 2*tiles_w, C_out), zero-bordered; grad_planes
    (workers, 9, >= B*tiles*C_out); sums (workers, 9, C_out, 4C). A worker without chunks
    leaves its sums as they were: there are never more workers than chunks."""
    return _backward_weight(cpu_blas.sgemm, grad_output, x, padding, tiles_hw, starts, counts,
                            padded, planes, padded_grad, grad_planes, sums)


@numba.njit(nogil=True, cache=True)
def _backward_input_chunk(sgemm, grad_output, weight, grad_x, padding, firsts, tile_counts,
                          start, count, padded_grad, grad_planes, products, staging):
    channels, channels_out = grad_x.shape[1], grad_output.shape[1]
    copy_interior_channels_last(grad_output, start, count, padded_grad, (1, 1))
    for p in range(2):
        for q in range(2):
            tiles_hw = (tile_counts[p], tile_counts[2 + q])
            rows = count * tiles_hw[0] * tiles_hw[1]
            if rows == 0:
                continue
            # The patch of outputs (u, v) starts at grad_output's row u - 1: padded row u.
            transform_tiles(padded_grad, count, grad_planes, tiles_hw,
                            (firsts[p], firsts[2 + q]), 2, 1, B_T_ROWS, 0, 1)
            for k in range(9):  # (B*tiles, C_out) @ (C_out, C), rows 4C apart
                gemm_strided(sgemm, False, False, rows, channels, channels_out,
                             grad_planes[k].ctypes.data, channels_out,
                             weight[k, 0, 2 * p + q].ctypes.data, 4 * channels, 0.0,
                             products[k].ctypes.data, channels)
            # Output u of phase p is input row 2u + p - padding.
            origin = (2 * firsts[p] + p - padding[0], 2 * firsts[2 + q] + q - padding[1])
            for b in range(count):
                untransform_tiles(products, b, tiles_hw, origin, 4, 2, staging,
                                  grad_x.shape[2:], channels)
    _unstage_chunk(staging, grad_x, start, count)


@numba.njit(parallel=True, nogil=True, cache=True)
def _backward_input(sgemm, grad_output, weight, grad_x, padding, firsts, tile_counts, starts,
                    counts, padded_grad, grad_planes, products, staging):
    workers = padded_grad.shape[0]
    for w in numba.prange(workers):
        for k in range(w, starts.size, workers):
            _backward_input_chunk(sgemm, grad_output, weight, grad_x, padding, firsts,
                                  tile_counts, starts[k], counts[k], padded_grad[w],
                                  grad_planes[w], products[w], staging[w])
    return grad_x


def backward_input(grad_output, weight, grad_x, padding, firsts, tile_counts, starts, counts,
                   padded_grad, grad_planes, products, staging):
    """grad_x (N, C, H, W) = the input gradient, from grad_output (N, C_out, H_out, W_out) and
    U = weight (9, C_out, 4, C) (transform_weight with flip). firsts and tile_counts: (rows p=0,
    rows p=1, columns q=0, columns q=1) of phases(). padded_grad (workers, B, rows, columns,
    C_out), zero-bordered, grad_output one row and column in; grad_planes (workers, 9, >=
    B*tiles*C_out) and products (workers, 9, >= B*tiles*C) for the phase of most tiles;
    staging (workers, >= B*H*W*C). Every input pixel is some phase's output, so all of
    grad_x is written."""
    return _backward_input(cpu_blas.sgemm, grad_output, weight, grad_x, padding, firsts,
                           tile_counts, starts, counts, padded_grad, grad_planes, products,
                           staging)
