"""Scratch buffers and the data movement of im2col convolution on the CPU, for cpu_conv.py:
zero-bordered padded copies, im2col and col2im (serial Numba loops over the (b, c) planes of a
chunk, reading the padded input in phases of the stride), and for images of few pixels a gather
through a table of source indices and its adjoint, a scatter-add. Buffers are kept per thread:
cpu_conv runs the chunks of a batch on several threads at once.
"""
from __future__ import annotations

import collections
import functools
import math
import threading

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)

# Scratch arrays up to this size are kept between calls (a few per thread and dtype).
SCRATCH_KEEP_BYTES = 64 * 2**20
# Zero-bordered buffers for padded inputs kept per thread (see zero_bordered), one per shape.
BORDERED_KEEP = 16

_jit = dict(nogil=True, cache=True)  # nogil: chunks run on several threads at once
_workspace = threading.local()


def scratch(slot: str, shape, dtype) -> np.ndarray:
    """A scratch array for intermediate results, kept per thread and reused across calls.

    Fresh multi-megabyte arrays come from the kernel as untouched pages, and the first write to
    each page faults: with a new padded input and new transform buffers on every call, a
    64-channel 4x4 Winograd forward spent half its time (0.6 of 1.3 ms) in page faults."""
    size, dtype = int(np.prod(shape)), np.dtype(dtype)
    if size * dtype.itemsize > SCRATCH_KEEP_BYTES:  # one huge sample: not worth keeping
        return np.empty(shape, dtype)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    if (slot, dtype) not in buffers or buffers[slot, dtype].size < size:
        buffers[slot, dtype] = np.empty(size, dtype)
    return buffers[slot, dtype][:size].reshape(shape)


# ---------------------------------------------------------------------------------------
# Padding, im2col, col2im: serial loops over the (b, c) planes of a chunk
# ---------------------------------------------------------------------------------------
# The loops below index with unsigned integers (_U): numba wraps negative signed indices
# around, and that test on every access keeps LLVM from vectorizing the copies. Unsigned
# indices made the 4x4 stride-2 im2col 2x faster than signed ones.
_U = np.uint64


def zero_bordered(shape, dtype, layout) -> np.ndarray:
    """A per-thread scratch array of `shape` for padded copies with the same `layout`
    (padding and input size): created zeroed, and then only ever written inside its border, so
    the border is still zero at the next call and only the interior is copied. The
    BORDERED_KEEP most recently used are kept.

    Writing the border again on every call (one short loop per row of every plane) took 5x the
    time of the copy alone: 82 against 15 us for 32 samples of 64 channels of 4x4."""
    dtype = np.dtype(dtype)
    if math.prod(shape) * dtype.itemsize > SCRATCH_KEEP_BYTES:
        return np.zeros(shape, dtype)
    kept = _workspace.__dict__.setdefault("bordered", collections.OrderedDict())
    key = (tuple(shape), dtype, layout)
    if key in kept:
        kept.move_to_end(key)
    else:
        kept[key] = np.zeros(shape, dtype)
        if len(kept) > BORDERED_KEEP:
            kept.popitem(last=False)
    return kept[key]


@numba.njit(**_jit)
def copy_interior(x, n_start, padded, padding):
    """padded[b, c, p_h + h, p_w + w] = x[n_start + b, c, h, w]; the rest of padded is left as
    it is (zero, see zero_bordered)."""
    batch, channels, height, width = padded.shape[0], x.shape[1], x.shape[2], x.shape[3]
    pad_h, pad_w = _U(padding[0]), _U(padding[1])
    for plane in range(batch * channels):
        b, c = _U(plane // channels), _U(plane % channels)
        n = _U(n_start) + b
        for h in range(_U(height)):
            for w in range(_U(width)):
                padded[b, c, pad_h + h, pad_w + w] = x[n, c, h, w]
    return padded


def pad(x, start: int, count: int, padding, padded_hw) -> np.ndarray:
    """Samples start..start+count of x (N, C, H, W) with zeros around them: (count, C, *padded_hw),
    x's pixels at offset `padding` and zero elsewhere (padded_hw may exceed H + 2 p_h, W + 2 p_w:
    Winograd's last tiles read past the padding)."""
    buffer = zero_bordered((count, x.shape[1], *padded_hw), x.dtype, (padding, x.shape[2:]))
    return copy_interior(x, start, buffer, padding)


@numba.njit(**_jit)
def pad_split(x, n_start, split, padding):
    """The zero-padded input in phases of the stride: split[b, c, r_h, r_w, u, v] =
    padded[b, c, u*s_h + r_h, v*s_w + r_w] (padded: x[n_start + b] with its zero border, and
    zero past it), where (s_h, s_w) = split.shape[2:4].

    In this layout a strided im2col reads every tap's rows at unit stride (see im2col), so
    its loops vectorize like those of a stride-1 convolution."""
    batch, channels, height, width = split.shape[0], x.shape[1], x.shape[2], x.shape[3]
    stride_h, stride_w, rows, row_w = split.shape[2], split.shape[3], split.shape[4], split.shape[5]
    pad_h, pad_w = padding
    for plane in range(batch * channels):
        b, c = _U(plane // channels), _U(plane % channels)
        n = _U(n_start) + b
        for r_h in range(_U(stride_h)):
            for u in range(_U(rows)):
                h = int(u * _U(stride_h) + r_h) - pad_h
                for r_w in range(_U(stride_w)):
                    if h < 0 or h >= height:
                        for v in range(_U(row_w)):
                            split[b, c, r_h, r_w, u, v] = 0
                        continue
                    # Columns v with 0 <= v*s_w + r_w - p_w < width.
                    first = max(0, -((int(r_w) - pad_w) // stride_w))
                    last = max(first, min(row_w, (width - 1 - int(r_w) + pad_w) // stride_w + 1))
                    for v in range(_U(first)):
                        split[b, c, r_h, r_w, u, v] = 0
                    for v in range(_U(first), _U(last)):
                        split[b, c, r_h, r_w, u, v] = x[n, c, _U(h),
                                                        _U(int(v * _U(stride_w) + r_w) - pad_w)]
                    for v in range(_U(last), _U(row_w)):
                        split[b, c, r_h, r_w, u, v] = 0
    return split


@numba.njit(**_jit)
def im2col(split, cols, kernel, dilation, out_hw, rows_first):
    """cols[b, (c*kH + i)*kW + j, oh*W_out + ow] = padded[b, c, oh*s_h + i*d_h, ow*s_w + j*d_w],
    with padded held in phases of the stride (split, from pad_split; for stride 1 the padded
    array as (B, C, 1, 1, H_p, W_p)): that element is split[b, c, (i*d_h) % s_h, (j*d_w) % s_w,
    oh + (i*d_h) // s_h, ow + (j*d_w) // s_w], so each tap reads rows at unit stride.

    cols: contiguous, (B, C*kH*kW, H_out*W_out) (each sample's column matrix one block, written
    front to back: 2-3x faster than rows interleaved across samples), or with rows_first
    (C*kH*kW, B, H_out*W_out), the columns of all samples side by side for one wide GEMM.
    (Writing the second through a transposed view of it took twice the time: numba compiles
    copies through arbitrary strides, which do not vectorize.)
    """
    batch, channels = split.shape[0], split.shape[1]
    stride_h, stride_w = split.shape[2], split.shape[3]
    k_h, k_w = kernel
    out_h, out_w = _U(out_hw[0]), _U(out_hw[1])
    for plane in range(batch * channels):
        b, c = _U(plane // channels), _U(plane % channels)
        for i in range(k_h):
            r_h, q_h = _U((i * dilation[0]) % stride_h), _U((i * dilation[0]) // stride_h)
            for j in range(k_w):
                r_w, q_w = _U((j * dilation[1]) % stride_w), _U((j * dilation[1]) // stride_w)
                row = _U((int(c) * k_h + i) * k_w + j)
                target = cols[row, b] if rows_first else cols[b, row]
                for oh in range(out_h):
                    for ow in range(out_w):
                        target[oh * out_w + ow] = split[b, c, r_h, r_w, oh + q_h, ow + q_w]
    return cols


@numba.njit(**_jit)
def col2im(cols, split_grad, kernel, dilation, out_hw):
    """The adjoint of im2col, into the phases of the stride: split_grad[b, c, (i*d_h) % s_h,
    (j*d_w) % s_w, oh + (i*d_h) // s_h, ow + (j*d_w) // s_w] += cols[b, (c*kH + i)*kW + j,
    oh*W_out + ow]: unit-stride reads and writes, where scattering at the stride into the
    padded image does not vectorize."""
    batch, channels = cols.shape[0], split_grad.shape[1]
    stride_h, stride_w = split_grad.shape[2], split_grad.shape[3]
    k_h, k_w = kernel
    out_h, out_w = _U(out_hw[0]), _U(out_hw[1])
    for plane in range(batch * channels):
        b, c = _U(plane // channels), _U(plane % channels)
        for i in range(k_h):
            r_h, q_h = _U((i * dilation[0]) % stride_h), _U((i * dilation[0]) // stride_h)
            for j in range(k_w):
                r_w, q_w = _U((j * dilation[1]) % stride_w), _U((j * dilation[1]) // stride_w)
                row = _U((int(c) * k_h + i) * k_w + j)
                for oh in range(out_h):
                    for ow in range(out_w):
                        split_grad[b, c, r_h, r_w, oh + q_h, ow + q_w] += cols[b, row,
                                                                               oh * out_w + ow]
    return split_grad


@numba.njit(**_jit)
def unsplit(split, grad_x, n_start, padding):
    """grad_x[n_start + b, c, h, w] = padded[b, c, h + p_h, w + p_w], padded held in phases of
    the stride as pad_split leaves it: the inverse of pad_split on the unpadded part."""
    batch, channels = split.shape[0], grad_x.shape[1]
    height, width = grad_x.shape[2], grad_x.shape[3]
    stride_h, stride_w = split.shape[2], split.shape[3]
    pad_h, pad_w = padding
    for plane in range(batch * channels):
        b, c = _U(plane // channels), _U(plane % channels)
        n = _U(n_start) + b
        for h in range(height):
            r_h, u = _U((h + pad_h) % stride_h), _U((h + pad_h) // stride_h)
            for r_w in range(stride_w):
                # Columns w with (w + p_w) % s_w == r_w: w = first + k*s_w.
                first = (r_w - pad_w) % stride_w
                offset = _U((first + pad_w) // stride_w)
                for k in range(_U((width - first + stride_w - 1) // stride_w)):
                    grad_x[n, c, _U(h), _U(first) + k * _U(stride_w)] = split[b, c, r_h, _U(r_w),
                                                                              u, offset + k]
    return grad_x


@functools.lru_cache(maxsize=16)
def gather_table(batch, channels, padded_hw, kernel, dilation, out_hw, stride) -> np.ndarray:
    """Wide im2col as one gather: table[(c*kH + i)*kW + j, b*P + oh*W_out + ow] (P = H_out*W_out)
    is the flat index of padded[b, c, oh*s_h + i*d_h, ow*s_w + j*d_w] in a zero-bordered
    (batch, C, H_p, W_p) array. Read-only; shared by the threads."""
    (k_h, k_w), (d_h, d_w), (s_h, s_w) = kernel, dilation, stride
    height, width = padded_hw
    c, i, j, b, oh, ow = np.ix_(*(np.arange(n) for n in (channels, k_h, k_w, batch, *out_hw)))
    index = ((b * channels + c) * height + oh * s_h + i * d_h) * width + ow * s_w + j * d_w
    table = index.astype(np.int32 if index.max() < 2**31 else np.int64)
    table = table.reshape(channels * k_h * k_w, batch * out_hw[0] * out_hw[1])
    table.flags.writeable = False
    return table


@numba.njit(**_jit)
def gather(source, table, out):
    """out[r, q] = source[table[r, q]] (source flat) for the columns q of out, which may be fewer
    than the table's (a chunk of fewer samples than the table was made for)."""
    for r in range(out.shape[0]):
        for q in range(out.shape[1]):
            out[r, q] = source[table[r, q]]
    return out


@numba.njit(**_jit)
def scatter_add(values, table, target):
    """target[table[r, q]] += values[r, q] (target flat) for the columns q of values: the
    adjoint of gather."""
    for r in range(values.shape[0]):
        for q in range(values.shape[1]):
            target[table[r, q]] += values[r, q]
    return target


@numba.njit(**_jit)
def copy_from_interior(padded, grad_x, n_start, padding):
    """grad_x[n_start + b, c, h, w] = padded[b, c, p_h + h, p_w + w]: the adjoint of pad."""
    batch, (channels, height, width) = padded.shape[0], grad_x.shape[1:]
    pad_h, pad_w = _U(padding[0]), _U(padding[1])
    for plane in range(batch * channels):
        b, c = _U(plane // channels), _U(plane % channels)
        n = _U(n_start) + b
        for h in range(_U(height)):
            for w in range(_U(width)):
                grad_x[n, c, h, w] = padded[b, c, pad_h + h, pad_w + w]
    return grad_x


@numba.njit(**_jit)
def copy_interior_channels_last(x, n_start, count, padded, padding):
    """padded[b, p_h + h, p_w + w, c] = x[n_start + b, c, h, w] for b < count; the rest is left
    as it is."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    pad_h, pad_w = _U(padding[0]), _U(padding[1])
    for b in range(_U(count)):  # written in order, read at a stride: 2-3x faster than reverse
        n = _U(n_start) + b
        for h in range(_U(height)):
            for w in range(_U(width)):
                for c in range(_U(channels)):
                    padded[b, pad_h + h, pad_w + w, c] = x[n, c, h, w]
    return padded


@numba.njit(**_jit)
def copy_interior_split(x, n_start, count, padded, padding):
    """padded[b, p_h + h, w' % 2, w' // 2, c] = x[n_start + b, c, h, w] for b < count, where
    w' = p_w + w: channels last with the columns split by parity (winograd.transform_split's
    layout); the rest is left as it is."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    pad_h, pad_w = _U(padding[0]), _U(padding[1])
    for b in range(_U(count)):  # written in order, read at a stride, as above
        n = _U(n_start) + b
        for h in range(_U(height)):
            for w in range(_U(width)):
                column = pad_w + w
                for c in range(_U(channels)):
                    padded[b, pad_h + h, column & _U(1), column >> _U(1), c] = x[n, c, h, w]
    return padded


def split_columns_shape(count: int, padded_hw, channels: int) -> tuple:
    """The shape of copy_interior_split's buffer: (count, H_p, 2, W_p/2, C), W_p even."""
    return (count, padded_hw[0], 2, padded_hw[1] // 2, channels)


def pad_split_columns(x, start: int, count: int, padding, padded_hw) -> np.ndarray:
    """As pad, channels last and the columns split by parity (copy_interior_split): zero
    outside x's pixels."""
    buffer = zero_bordered(split_columns_shape(count, padded_hw, x.shape[1]), x.dtype,
                           ("split columns", padding, x.shape[2:]))
    return copy_interior_split(x, start, count, buffer, padding)
