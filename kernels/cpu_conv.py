"""Convolution on the CPU (cpu.py's conv2d functions): serial Numba loops move the data,
NumPy's BLAS (OpenBLAS) does the GEMMs, and the chunks of a batch run on parallel threads.

Three algorithms, chosen per call:
- im2col + GEMM: each chunk of samples is padded into a zero-bordered buffer and expanded into
  one (C_in*kH*kW, H_out*W_out) column block per sample; one stacked GEMM with the weight writes
  the NCHW output directly (or, with few output pixels, one wide GEMM over all the chunk's
  samples). Chunks keep the columns in cache (COLUMNS_BUDGET_BYTES). With a stride, the padded
  input is held in the phases of the stride (cpu_columns.pad_split), so that every tap's rows
  are read and, in col2im, accumulated at unit stride; with few pixels per sample the wide
  columns are one gather through a table of indices instead (GATHER_TABLE_BYTES).
- Winograd F(2x2, 3x3) (winograd.py) for 3x3 stride-1 convolutions with WINOGRAD_MIN_CHANNELS
  or more channels: 2.25x less GEMM work.
- Winograd F(2x2, 2x2) over the four phases of the stride (winograd_stride2.py) for 4x4
  stride-2 convolutions in float32 with STRIDE2_WINOGRAD_MIN_CHANNELS or more channels: 1.78x
  less GEMM work.
1x1 convolutions are plain GEMMs (gemm_conv.py). The copies, and the scratch buffers they
write, are in cpu_columns.py.

Threads: the batch is cut into at least as many chunks as threads (numba.get_num_threads(),
set by NUMBA_NUM_THREADS, but only as many as have MACS_PER_THREAD multiply-adds or
BYTES_PER_THREAD of columns each), and each thread pads, transforms and multiplies whole
chunks in buffers of its own, with BLAS on one thread (process-wide; see
cpu_blas.hold_to_one_thread). In float32 without groups a convolution is one parallel loop over
the chunks on Numba's OpenMP threads (winograd_parallel.py, im2col_parallel.py), each chunk's
steps one call that calls OpenBLAS from Numba; otherwise the chunks go to a Python thread
pool (the calling thread takes chunks too), whose threads queue for the GIL between a chunk's
steps. OpenBLAS's own threads barely speed up the small stacked GEMMs (1.1x for Winograd's),
and handing each copy loop to Numba's thread pool on its own moved the data between the
cores' caches: two threads ran no faster than one.

Measured (float32, 3x3, padding 1, one thread; benchmarks/bench_conv_direct.py): a direct
Numba loop nest took 6.3x (N=32, C=64, 16x16), 1.6x (N=64, C=32, 32x32) and 11x (N=64, C=128,
8x8) the time of im2col + GEMM. Padding first and writing each sample's columns as one block
made im2col 3x faster than copying with bounds checks into rows shared by all samples (the
layout gemm_conv.py keeps for the GPU).
"""
from __future__ import annotations

import concurrent.futures
import functools
import math
import os

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)
from . import (cpu_blas, cpu_fused, gemm_conv, im2col_parallel, winograd, winograd_parallel,
               winograd_stride2)
from .cpu_columns import (col2im, copy_from_interior, gather, gather_table, im2col, pad,
                          pad_split, pad_split_columns, scatter_add, scratch,
                          split_columns_shape, unsplit, zero_bordered)
from .geometry import (Pair, conv2d_backward_input_args, conv2d_backward_weight_args,
                       conv2d_forward_args)

# Columns of a chunk of samples take at most this many bytes (at least one sample per chunk).
# 1 to 4 MiB measured best; for N=64, C=32, 32x32 the whole batch's 72 MiB of columns made
# forward + backward 1.8x slower than 4 MiB chunks, which stay in cache between im2col and GEMM.
COLUMNS_BUDGET_BYTES = 4 * 2**20

# Winograd trades GEMM work (2.25x less) for transforms that grow with channels * pixels, so
# it pays once the GEMM dominates. Forward + backward, one thread, against im2col + GEMM: 0.54-0.8
# of the time at 48-128 channels on 4x4 to 32x32 images, 0.85-1.01 at 32 channels, and 0.83-1.15
# at 16. The channels counted are those of one group, the fewer of input and output.
WINOGRAD_MIN_CHANNELS = 32
# Winograd's chunks hold their transformed input and products within this many bytes, so that
# they stay in a core's L2 cache between the transforms and the GEMMs, but give the GEMMs at
# least WINOGRAD_ROWS_PER_CHANNEL rows (tiles) per channel of the wider side, so that each
# plane's (C, C_out) weight is used often enough per load. One thread, forward + both
# gradients, against 4 MiB chunks: N=32, C=64, 16x16 11.3 against 14.6 ms; N=64, C=32, 32x32
# 31.9 against 42.8. At N=64, C=128, 8x8, 64 rows took 21.7 ms, 128 rows 20.0, 256 rows 17.9.
WINOGRAD_BUDGET_BYTES = 2**20
WINOGRAD_ROWS_PER_CHANNEL = 2
# Images of fewer tiles across than this go through Winograd's channels-last transforms and
# GEMMs (winograd.py), the rest channels first: now every size, for all three convolutions.
# Forward + both gradients, one thread: 6.2 against 8.8 ms at N=64, C=64, 8x8; 5.4 against
# 7.5 at N=32, C=32, 16x16. Forward and input gradient, channels first against channels last,
# one thread: N=64, C=32, 32x32 8.9 and 8.9 against 8.5 and 8.5 ms; N=16, C=64, 28x28 4.6 and
# 4.6 against 3.9 and 4.2; N=16, C=32, 64x64 12.3 and 12.3 against 11.6 and 11.3; N=16,
# C=128, 32x32 22.5 and 21.9 against 24.0 and 21.8 (two threads 11.1 and 11.2 against 11.3
# and 11.4). Channels first had measured faster at 32x32 (13.5 against 17.3 ms) before the
# staged output transform and the blocks of winograd.unstage. The weight gradient had been
# channels last at every size already (at 32x32 15.0 against 17.1 ms).
WINOGRAD_CHANNELS_LAST_TILES = math.inf
# The channels-last output transform stages each sample's outputs from this many pixels a
# channel up (see winograd.transform_output_channels_last): 16x16 outputs of 64 channels took
# 70 against 24 us a chunk of two, 8x8 and 4x4 the same either way.
STAGED_OUTPUT_PIXELS = 128
# Their forward (and input gradient) in float32 as one parallel loop on Numba's threads
# (winograd_parallel.py) rather than chunks handed to the Python pool; and so their weight
# gradient. Two threads, N=64: 0.43 against 0.59 ms for 64 channels of 4x4, 0.57 against 0.74
# for 32 of 8x8. On one thread the loop had run 0-6 % slower than one chunk without it, and
# took the chunks there; since its grad_output transform went channels last it is faster on
# one thread too: 0.54 against 0.66 ms for 32 channels of 8x8, 7.1 against 9.4 of 32x32.
PARALLEL_WINOGRAD = True
PARALLEL_WINOGRAD_WEIGHT_GRADIENT = True

# 4x4 stride-2 convolutions in float32 without groups, with at least this many channels (the
# fewer of input and output), go through Winograd F(2x2, 2x2) over the phases of the stride
# (winograd_stride2.py): 1.78x less GEMM work than im2col. None: never. Forward + both
# gradients, N=64, one thread, against im2col: 64 -> 128 channels of 16x16 19.0 against 27.6
# ms, 16 -> 32 of 16x16 2.8 against 4.4, 8 -> 16 of 16x16 1.8 against 2.0 (1.06 either way on
# two threads).
STRIDE2_WINOGRAD_MIN_CHANNELS = 16
# ... but their input gradient only for inputs of at most this many pixels: its per-phase GEMMs
# are (B*tiles, C_out) @ (C_out, C), and on larger images they ran slower than im2col's. One
# thread, N=64 unless said, against im2col: 16x16, 64 <- 128 channels 7.1 against 9.3 ms;
# 28x28, 128 <- 64 19.1 against 41.1; but 32x32 (N=32), 64 <- 128 17.6 against 16.9, and 64x64
# (N=16), 32 <- 64 13.9 against 10.7.
STRIDE2_INPUT_GRADIENT_MAX_PIXELS = 28 * 28
# Their chunks hold their buffers within STRIDE2_BUDGET_BYTES, but give the GEMMs at least
# this many rows (tiles) per channel of the wider side of their weight: the forward's (C_out,
# 4C) weight is read whole for every chunk, the weight gradient's sums read and written. N=64,
# one thread, ms by samples per chunk of 2, 4, 8, 16 and 32:
# - forward, 64 -> 128 channels of 16x16 9.5, 7.2, 6.3, 6.1, 6.2; 128 -> 256 of 8x8 22.3, 13.3,
#   9.2, 6.7, 5.8;
# - weight gradient, the same two: 5.6, 5.5, 5.6, 6.1, 6.3; 9.2, 6.1, 5.3, 4.9, 5.0;
# - input gradient (its weight (C_out, C) per phase): 6.6-7.3 at every size and 6.4-9.9 at
#   8x8, but 32 -> 64 channels of 16x16 2.1 up to 8 samples and 2.8 at 32.
STRIDE2_BUDGET_BYTES = 2**20
STRIDE2_ROWS_PER_CHANNEL = {"forward": 2, "weight gradient": 0.5, "input gradient": 0.5}

# im2col and 1x1 convolutions in float32 without groups as one parallel loop on Numba's threads
# (im2col_parallel.py) rather than chunks handed to the Python pool.
PARALLEL_IM2COL = True

# Below this many output pixels per sample, a chunk's im2col forward is one GEMM over all its
# samples' pixels rather than one per sample: for the 4x4 stride-2 DCGAN convolution (8x8
# output) the per-sample GEMMs ran at 0.85 of the speed of one wide GEMM.
WIDE_GEMM_PIXELS = 256

# Wide columns of few pixels per sample are gathered through a table of source indices (see
# cpu_columns.gather_table) when the table takes at most this many bytes: the copy loops'
# inner runs are one output row long, and for the DCGAN's 4x4 stride-2 convolution (2x2
# output) padding and im2col took 329 us where the zero-bordered copy and the gather take 62
# (64 samples, 32 channels); 146 against 406 us for the U-Net's 8x8 -> 4x4 downsampling,
# 1.35x at 7x7.
GATHER_TABLE_BYTES = 4 * 2**20

# Threads for the chunks of one convolution; None: numba.get_num_threads(), but only as many as
# have MACS_PER_THREAD multiply-adds or BYTES_PER_THREAD each (a value set here is used as it is).
THREADS = None
# Waking a pool thread and waiting for it costs about 80 us on an idle machine (two no-op chunks),
# more than small convolutions take: on two threads the DCGAN's 4x4 layers of 1.6 million
# multiply-adds ran at 0.3-0.7x of their one-thread speed, those of 8.4 million at 1.1-1.25x.
MACS_PER_THREAD = 3 * 2**20
# ... or at least this many bytes of columns (or, for 1x1, input and output) each: the DCGAN's
# 28x28 convolutions down to one output channel or pixel are few multiply-adds over many bytes
# (0.4 million over 1.6 MB of columns), and ran 1.7x faster on two threads.
BYTES_PER_THREAD = 256 * 2**10


_jit = dict(nogil=True, cache=True)  # nogil: chunks run on several threads at once


# ---------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------
def threads() -> int:
    """How many threads one convolution uses."""
    return max(1, THREADS if THREADS is not None else numba.get_num_threads())


@functools.lru_cache(maxsize=None)
def _executor(count: int, process: int) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of `count` threads, one per process: a forked child inherits the parent's pool
    object but none of its threads, and would wait on it for ever."""
    return concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="minigen-conv")


def _one_loop(dtype, groups: int) -> bool:
    """Whether a convolution can run as one parallel loop (winograd_parallel.py,
    im2col_parallel.py): float32 (the BLAS routine is sgemm), no groups, and NumPy's CBLAS
    symbol found."""
    return cpu_blas.available and groups == 1 and dtype == np.float32


def threads_for(macs: int, nbytes: int = 0) -> int:
    """How many threads a convolution of `macs` multiply-adds over `nbytes` of columns uses
    (see MACS_PER_THREAD and BYTES_PER_THREAD)."""
    if THREADS is not None:
        return max(1, THREADS)
    return max(1, min(numba.get_num_threads(),
                      max(macs // MACS_PER_THREAD, nbytes // BYTES_PER_THREAD)))


def _plan_chunks(batch: int, per_sample_bytes: int, macs: int,
                 budget: int = None) -> tuple[list, int]:
    """The chunks (first sample, number of samples) of a convolution and how many threads
    share them (threads_for), holding BLAS to one thread once more than one may run."""
    if threads() > 1:  # BLAS's spinning threads would fight the chunks and the other kernels
        cpu_blas.hold_to_one_thread()
    count = threads_for(macs, batch * per_sample_bytes)
    chunks = list(_chunks(batch, per_sample_bytes, count, budget))
    return chunks, min(count, len(chunks))


def _parallel_chunks(batch: int, per_sample_bytes: int, macs: int, budget: int = None):
    """_plan_chunks' chunks as arrays (starts, counts) for the one-loop paths, and how many
    workers share them (each with one set of buffers, taking every workers-th chunk)."""
    chunks, workers = _plan_chunks(batch, per_sample_bytes, macs, budget)
    starts, counts = (np.array(column, dtype=np.int64) for column in zip(*chunks))
    return starts, counts, max(1, workers)


def _run_chunks(batch: int, per_sample_bytes: int, macs: int, body, budget: int = None) -> list:
    """[body(start, count) for each chunk of the batch], the chunks spread over
    threads_for(macs) threads."""
    chunks, count = _plan_chunks(batch, per_sample_bytes, macs, budget)
    if count <= 1:
        return [body(start, size) for start, size in chunks]
    # The calling thread takes chunks too, from the same queue as count - 1 pool threads: one
    # hand-off fewer per call than waiting for count of them (next() on a range iterator is
    # atomic under the GIL).
    results = [None] * len(chunks)
    order = iter(range(len(chunks)))

    def drain() -> None:
        for index in order:
            results[index] = body(*chunks[index])

    pool = _executor(count - 1, os.getpid())
    helpers = [pool.submit(drain) for _ in range(count - 1)]
    try:
        drain()
    finally:
        for helper in helpers:
            helper.result()
    return results


def _rows_budget(budget: int, rows: int, tiles: int, sample_bytes: int) -> int:
    """A transform's chunk budget: `budget` bytes, but enough samples of `tiles` GEMM rows
    each for `rows` rows (see WINOGRAD_ROWS_PER_CHANNEL), and never over
    COLUMNS_BUDGET_BYTES."""
    return min(COLUMNS_BUDGET_BYTES, max(budget, -(-rows // tiles) * sample_bytes))


def _chunks(batch: int, per_sample_bytes: int, count: int = None, budget: int = None):
    """(first sample, number of samples) of each chunk: under `budget` bytes each (default
    COLUMNS_BUDGET_BYTES), at least `count` (default threads()) of them when the batch allows,
    and as many as the threads can share evenly (chunks of 21, 21, 21 and 1 samples left one of
    two threads idle a third of the time on a 1x1 convolution; 16 each do not)."""
    count = threads() if count is None else count
    budget = COLUMNS_BUDGET_BYTES if budget is None else budget
    largest = max(1, budget // per_sample_bytes)
    pieces = max(1, min(batch, count * math.ceil(batch / (largest * count))))
    chunk = math.ceil(batch / pieces)
    for start in range(0, batch, chunk):
        yield start, min(chunk, batch - start)


# ---------------------------------------------------------------------------------------
# im2col + GEMM
# ---------------------------------------------------------------------------------------
class _Im2colPlan:
    """The geometry of one conv2d, its chunks, and each chunk's padded input and columns."""

    def __init__(self, input_shape, weight_shape, stride, padding, dilation, groups, out_hw,
                 dtype):
        self.batch, self.in_channels, height, width = input_shape
        self.out_channels, _, k_h, k_w = weight_shape
        self.groups, self.padding, self.stride, self.dtype = groups, padding, stride, dtype
        self.rows = self.in_channels * k_h * k_w
        self.pixels = out_hw[0] * out_hw[1]
        self.geometry = ((k_h, k_w), dilation, tuple(out_hw))
        self.padded_hw = (height + 2 * padding[0], width + 2 * padding[1])
        # The padded image in phases of the stride (see _pad_split).
        self.split_shape = (self.in_channels, *stride,
                            *(-(-size // step) for size, step in zip(self.padded_hw, stride)))

    def run(self, body) -> list:
        """body(start, count) for each chunk, on as many threads as the work pays for."""
        macs = self.batch * self.out_channels * (self.rows // self.groups) * self.pixels
        return _run_chunks(self.batch, self.rows * self.pixels * self.dtype.itemsize, macs, body)

    def padded(self, x, start: int, count: int):
        """Samples start..start+count of x (N, C, H, W) with their zero padding, in phases of
        the stride: (count, C, s_h, s_w, ceil(H_p/s_h), ceil(W_p/s_w))."""
        if self.stride != (1, 1):
            return pad_split(x, start, scratch("padded", (count, *self.split_shape), self.dtype),
                             self.padding)
        if self.padding == (0, 0):
            return x[start:start + count].reshape(count, *self.split_shape)
        return pad(x, start, count, self.padding, self.padded_hw).reshape(count, *self.split_shape)

    def columns(self, x, start: int, count: int, wide: bool = False):
        """The columns of samples start.. of x in a scratch buffer: (count, rows, pixels), or
        if wide (rows, count*pixels), every sample's pixels side by side."""
        shape = (self.rows, count, self.pixels) if wide else (count, self.rows, self.pixels)
        if wide and self.gathers(count):
            padded = pad(x, start, count, self.padding, self.padded_hw)
            return gather(padded.reshape(-1), self.table(count),
                          scratch("columns", (self.rows, count * self.pixels), self.dtype))
        cols = im2col(self.padded(x, start, count), scratch("columns", shape, self.dtype),
                      *self.geometry, wide)
        return cols.reshape(self.rows, -1) if wide else cols

    def gathers(self, count: int) -> bool:
        """Whether wide columns of `count` samples go through a gather table (see
        GATHER_TABLE_BYTES)."""
        return self.rows * count * self.pixels * 4 <= GATHER_TABLE_BYTES

    def table(self, count: int) -> np.ndarray:
        return gather_table(count, self.in_channels, self.padded_hw, *self.geometry, self.stride)

    def by_group(self, matrices):
        return gemm_conv.by_group(matrices, self.groups)

    # The one-loop paths (im2col_parallel.py): run()'s chunks, with one set of buffers each.
    def parallel_applies(self) -> bool:
        return PARALLEL_IM2COL and _one_loop(self.dtype, self.groups)

    def parallel_chunks(self):
        """run()'s chunks as (starts, counts), the most samples in one, and the workers
        (_parallel_chunks), each with one set of buffers."""
        starts, counts, workers = _parallel_chunks(
            self.batch, self.rows * self.pixels * self.dtype.itemsize,
            self.batch * self.out_channels * self.rows * self.pixels)
        return starts, counts, int(counts.max()), workers

    def parallel_inputs(self, input_hw, workers: int, most: int, bordered: bool):
        """(padded, split) for im2col_parallel: the zero-bordered padded copies when the
        columns are gathered or the stride is 1 (bordered), else the flat phase buffers."""
        if bordered:
            padded = zero_bordered((workers, most, self.in_channels, *self.padded_hw),
                                   self.dtype, ("parallel", self.padding, tuple(input_hw)))
            return padded, np.empty((workers, 0), self.dtype)
        split = scratch("padded", (workers, most * math.prod(self.split_shape)), self.dtype)
        return np.empty((workers, 0, 0, 0, 0), self.dtype), split

    def parallel_table(self, most: int, gathers: bool) -> np.ndarray:
        return self.table(most) if gathers else im2col_parallel.empty_table()


def _forward_parallel(plan: _Im2colPlan, x, weight):
    """_forward's im2col by im2col_parallel.forward."""
    starts, counts, most, workers = plan.parallel_chunks()
    wide = plan.pixels < WIDE_GEMM_PIXELS
    gathers = wide and plan.gathers(most)
    padded, split = plan.parallel_inputs(x.shape[2:], workers, most,
                                         gathers or plan.stride == (1, 1))
    columns = scratch("columns", (workers, plan.rows * most * plan.pixels), plan.dtype)
    products = scratch("product", (workers, plan.out_channels * most * plan.pixels
                                   if wide else 0), plan.dtype)
    y = np.empty((plan.batch, plan.out_channels, plan.pixels), dtype=x.dtype)
    return im2col_parallel.forward(x, weight.reshape(plan.out_channels, -1), y, plan.padding,
                                   plan.stride, *plan.geometry[:2], plan.geometry[2], starts,
                                   counts, padded, split, columns, products,
                                   plan.parallel_table(most, gathers), wide)


def _forward(x, weight, stride, padding, dilation, groups, out_hw):
    """conv2d of contiguous arrays, geometry checked: Winograd for 3x3 stride 1, else each
    chunk's columns (B, rows, pixels) times the (C_out, rows) weight, a stacked GEMM whose
    output is NCHW already."""
    if _winograd_pays(weight.shape, stride, dilation, groups):
        return _winograd_forward(x, weight, padding, groups, out_hw)
    if _stride2_pays(weight.shape, stride, dilation, groups, x.dtype):
        return _Stride2Plan(x.shape, weight.shape[0], padding, out_hw, x.dtype).forward(x, weight)
    plan = _Im2colPlan(x.shape, weight.shape, stride, padding, dilation, groups, out_hw, x.dtype)
    if plan.parallel_applies():
        return _forward_parallel(plan, x, weight).reshape(plan.batch, plan.out_channels, *out_hw)
    weight_groups = plan.by_group(weight.reshape(plan.out_channels, -1))
    y = np.empty((plan.batch, plan.out_channels, plan.pixels), dtype=x.dtype)

    def chunk(start: int, count: int) -> None:
        if plan.pixels >= WIDE_GEMM_PIXELS:
            np.matmul(weight_groups, plan.by_group(plan.columns(x, start, count)),
                      out=plan.by_group(y[start:start + count]))
            return
        # Few pixels per sample: one GEMM over all the chunk's pixels, (rows, B*pixels), then
        # the (C_out, B, pixels) product moved into NCHW order.
        matrix = plan.columns(x, start, count, wide=True)
        product = np.matmul(weight_groups, plan.by_group(matrix),
                            out=scratch("product", (plan.groups, plan.out_channels // plan.groups,
                                                    count * plan.pixels), plan.dtype))
        y[start:start + count] = product.reshape(plan.out_channels, count,
                                                 plan.pixels).transpose(1, 0, 2)

    plan.run(chunk)
    return y.reshape(plan.batch, plan.out_channels, *out_hw)


def _pointwise_parallel_applies(dtype, groups: int) -> bool:
    return PARALLEL_IM2COL and _one_loop(dtype, groups)


def _pointwise_chunks(images, other):
    """The chunks (starts, counts) of a 1x1 convolution between images and other (N, C', ...),
    and the workers that share them (_parallel_chunks)."""
    macs = images.shape[0] * images[0].size * other.shape[1]
    return _parallel_chunks(images.shape[0], (images[0].size + other[0].size) * images.itemsize,
                            macs)


def _pointwise_parallel(images, weight, out, transpose: bool):
    """A 1x1 convolution's forward (out[n] = W images[n]) or with transpose its input gradient
    (W^T images[n]) by im2col_parallel.pointwise."""
    starts, counts, workers = _pointwise_chunks(images, out)
    return im2col_parallel.pointwise(images.reshape(*images.shape[:2], -1),
                                     weight.reshape(weight.shape[0], -1),
                                     out.reshape(*out.shape[:2], -1), transpose, starts, counts,
                                     workers)


def _covers_input(input_hw, weight_shape, padding: Pair, dilation: Pair, groups: int) -> bool:
    """Whether the kernel covers the whole unpadded input, one output pixel per sample (a DCGAN
    discriminator's last layer, and as its input gradient a generator's first): then the
    convolution is one matrix product of the flattened samples and kernels, with no columns
    to build (the 7x7 one of 128 channels, batch 64, 0.88 ms with im2col)."""
    return (tuple(weight_shape[2:]) == tuple(input_hw) and padding == (0, 0)
            and dilation == (1, 1) and groups == 1)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int, bias: np.ndarray | None = None) -> np.ndarray:
    """Cross-correlation as PyTorch's conv2d, plus bias[c] on output channel c when given.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW), bias: (C_out,) or None
    -> (N, C_out, H_out, W_out).
    """
    stride, padding, dilation, out_hw = conv2d_forward_args(x, weight, stride, padding,
                                                            dilation, groups, bias)
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    if (bias is not None and x.shape[0] and _winograd_pays(weight.shape, stride, dilation, groups)
            and not _covers_input(x.shape[2:], weight.shape, padding, dilation, groups)):
        return _winograd_forward(x, weight, padding, groups, out_hw, bias)
    y = _conv2d_forward(x, weight, stride, padding, dilation, groups, out_hw)
    return y if bias is None else cpu_fused.add_channel_bias(y, bias)


def _conv2d_forward(x, weight, stride, padding, dilation, groups, out_hw):
    if x.shape[0] == 0:  # an empty batch: no chunks to cut
        return np.zeros((0, weight.shape[0], *out_hw), x.dtype)
    if _covers_input(x.shape[2:], weight.shape, padding, dilation, groups):
        products = x.reshape(x.shape[0], -1) @ weight.reshape(weight.shape[0], -1).T
        return products.reshape(x.shape[0], weight.shape[0], 1, 1)
    if gemm_conv.is_pointwise(weight.shape, stride, padding):
        y = np.empty((x.shape[0], weight.shape[0], *out_hw), x.dtype)
        if _pointwise_parallel_applies(x.dtype, groups):
            return _pointwise_parallel(x, weight, y, False).reshape(y.shape)
        _run_chunks(x.shape[0], (x[0].size + y[0].size) * x.itemsize,
                    x.shape[0] * weight.size * math.prod(out_hw),
                    lambda start, count: gemm_conv.pointwise_forward(
                        np, x[start:start + count], weight, groups, out_hw,
                        out=y[start:start + count]))
        return y
    return _forward(x, weight, stride, padding, dilation, groups, out_hw)


def conv2d_backward_input(grad_output: np.ndarray, weight: np.ndarray, input_shape,
                          stride: Pair, padding: Pair, dilation: Pair,
                          groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its input; also conv_transpose2d's forward.

    grad_output: (N, C_out, H_out, W_out), weight: (C_out, C_in/groups, kH, kW)
    -> grad_x: input_shape (N, C_in, H, W).
    """
    stride, padding, dilation, input_shape, out_hw = conv2d_backward_input_args(
        grad_output, weight, input_shape, stride, padding, dilation, groups)
    grad_output, weight = np.ascontiguousarray(grad_output), np.ascontiguousarray(weight)
    if input_shape[0] == 0:
        return np.zeros(input_shape, grad_output.dtype)
    if _covers_input(input_shape[2:], weight.shape, padding, dilation, groups):
        products = grad_output.reshape(grad_output.shape[0], -1) @ weight.reshape(weight.shape[0],
                                                                                  -1)
        return products.reshape(input_shape)
    if gemm_conv.is_pointwise(weight.shape, stride, padding):
        grad_x = np.empty(input_shape, grad_output.dtype)
        if _pointwise_parallel_applies(grad_output.dtype, groups):
            return _pointwise_parallel(grad_output, weight, grad_x, True).reshape(input_shape)
        _run_chunks(grad_x.shape[0], (grad_x[0].size + grad_output[0].size) * grad_x.itemsize,
                    grad_x.shape[0] * weight.size * math.prod(grad_output.shape[2:]),
                    lambda start, count: gemm_conv.pointwise_backward_input(
                        np, grad_output[start:start + count], weight, groups,
                        (count, *input_shape[1:]), out=grad_x[start:start + count]))
        return grad_x
    if (_stride2_pays(weight.shape, stride, dilation, groups, grad_output.dtype)
            and math.prod(input_shape[2:]) <= STRIDE2_INPUT_GRADIENT_MAX_PIXELS):
        return _Stride2Plan(input_shape, weight.shape[0], padding, out_hw,
                            grad_output.dtype).backward_input(grad_output, weight)
    plan = _Im2colPlan(input_shape, weight.shape, stride, padding, dilation, groups, out_hw,
                       grad_output.dtype)
    full_padding = gemm_conv.full_padding(weight.shape, padding, dilation)
    scatters = plan.pixels < WIDE_GEMM_PIXELS and plan.gathers(1)
    # Column elements per sample: of the convolution below, and of the scatter route.
    as_convolution = plan.out_channels * math.prod(weight.shape[2:]) * math.prod(input_shape[2:])
    if (stride == (1, 1) and min(full_padding) >= 0
            and not (scatters and plan.rows * plan.pixels < as_convolution)):
        # With stride 1 the gradient is a convolution too (see gemm_conv.transposed_kernel),
        # and the forward's contiguous im2col beats col2im's scattered read-modify-write;
        # but not where that convolution has more columns, reading mostly padding: the DCGAN
        # generator's first layer (1x1 -> 7x7, 100 -> 128 channels, batch 64) took 29.5 ms as
        # a convolution of the 1x1 input padded to 13x13, and 1.8 ms as one GEMM and a scatter.
        return _forward(grad_output, gemm_conv.transposed_kernel(np, weight, groups), stride,
                        full_padding, dilation, groups, input_shape[2:])
    by_sample = grad_output.reshape(plan.batch, plan.out_channels, plan.pixels)
    grad_x = np.empty(input_shape, dtype=grad_output.dtype)
    if plan.parallel_applies():
        starts, counts, most, workers = plan.parallel_chunks()
        gathers = scatters and plan.gathers(most)
        if gathers:  # zeroed on every call, so not a zero-bordered buffer
            padded = scratch("scatter", (workers, most, plan.in_channels, *plan.padded_hw),
                             plan.dtype)
            split = np.empty((workers, 0), plan.dtype)
        else:
            padded, split = plan.parallel_inputs(input_shape[2:], workers, most, False)
        wide_size = plan.out_channels * most * plan.pixels if gathers else 0
        return im2col_parallel.backward_input(
            by_sample, weight.reshape(plan.out_channels, -1), grad_x, plan.padding, plan.stride,
            *plan.geometry, starts, counts, padded, split,
            scratch("columns", (workers, plan.rows * most * plan.pixels), plan.dtype),
            scratch("product", (workers, wide_size), plan.dtype),
            plan.parallel_table(most, gathers))
    weight_groups_t = plan.by_group(weight.reshape(plan.out_channels, -1)).swapaxes(-1, -2)

    def chunk(start: int, count: int) -> None:
        if scatters and plan.gathers(count):
            # Few pixels: one GEMM over the chunk's pixels, scattered back through the gather
            # table (for the DCGAN's 2x2 -> 4x4 transposed convolution, 532 -> 250 us with 64
            # samples of 64 channels, against per-sample GEMMs, col2im and unsplit).
            grad_rows = scratch("product", (plan.out_channels, count, plan.pixels), plan.dtype)
            grad_rows[:] = by_sample[start:start + count].transpose(1, 0, 2)
            cols = scratch("columns", (plan.rows, count * plan.pixels), plan.dtype)
            np.matmul(weight_groups_t, plan.by_group(grad_rows.reshape(plan.out_channels, -1)),
                      out=plan.by_group(cols))
            padded = scratch("padded", (count, plan.in_channels, *plan.padded_hw), plan.dtype)
            padded.fill(0)
            scatter_add(cols, plan.table(count), padded.reshape(-1))
            copy_from_interior(padded, grad_x, start, padding)
            return
        cols = scratch("columns", (count, plan.rows, plan.pixels), plan.dtype)
        np.matmul(weight_groups_t, plan.by_group(by_sample[start:start + count]),
                  out=plan.by_group(cols))
        split_grad = scratch("padded", (count, *plan.split_shape), plan.dtype)
        split_grad.fill(0)
        unsplit(col2im(cols, split_grad, *plan.geometry), grad_x, start, padding)

    plan.run(chunk)
    return grad_x


def conv2d_backward_weight(grad_output: np.ndarray, x: np.ndarray, weight_shape,
                           stride: Pair, padding: Pair, dilation: Pair,
                           groups: int) -> np.ndarray:
    """Gradient of conv2d with respect to its weight.

    grad_output: (N, C_out, H_out, W_out), x: (N, C_in, H, W) -> (C_out, C_in/groups, kH, kW).
    """
    stride, padding, dilation, weight_shape, out_hw = conv2d_backward_weight_args(
        grad_output, x, weight_shape, stride, padding, dilation, groups)
    grad_output, x = np.ascontiguousarray(grad_output), np.ascontiguousarray(x)
    if x.shape[0] == 0:  # the sum over no samples
        return np.zeros(weight_shape, x.dtype)
    if _covers_input(x.shape[2:], weight_shape, padding, dilation, groups):
        products = grad_output.reshape(x.shape[0], -1).T @ x.reshape(x.shape[0], -1)
        return products.reshape(weight_shape)
    if gemm_conv.is_pointwise(weight_shape, stride, padding):
        if _pointwise_parallel_applies(x.dtype, groups):
            starts, counts, workers = _pointwise_chunks(x, grad_output)
            sums = scratch("sums", (workers, weight_shape[0], weight_shape[1]), x.dtype)
            im2col_parallel.pointwise_backward_weight(
                grad_output.reshape(*grad_output.shape[:2], -1), x.reshape(*x.shape[:2], -1),
                starts, counts, sums)
            return sums.sum(axis=0).reshape(weight_shape)
        return sum(_run_chunks(
            x.shape[0], (x[0].size + grad_output[0].size) * x.itemsize,
            x.shape[0] * math.prod(weight_shape) * math.prod(grad_output.shape[2:]),
            lambda start, count: gemm_conv.pointwise_backward_weight(
                np, grad_output[start:start + count], x[start:start + count], groups,
                weight_shape)))
    if _winograd_pays(weight_shape, stride, dilation, groups):
        return _winograd_backward_weight(grad_output, x, weight_shape, padding, groups)
    if _stride2_pays(weight_shape, stride, dilation, groups, x.dtype):
        return _Stride2Plan(x.shape, weight_shape[0], padding, out_hw,
                            x.dtype).backward_weight(grad_output, x)
    plan = _Im2colPlan(x.shape, weight_shape, stride, padding, dilation, groups, out_hw, x.dtype)
    if plan.parallel_applies():
        starts, counts, most, workers = plan.parallel_chunks()
        gathers = plan.gathers(most)
        padded, split = plan.parallel_inputs(x.shape[2:], workers, most,
                                             gathers or plan.stride == (1, 1))
        sums = scratch("sums", (workers, plan.out_channels, plan.rows), plan.dtype)
        im2col_parallel.backward_weight(
            grad_output.reshape(plan.batch, plan.out_channels, plan.pixels), x, plan.padding,
            plan.stride, *plan.geometry, starts, counts, padded, split,
            scratch("columns", (workers, plan.rows * most * plan.pixels), plan.dtype),
            scratch("product", (workers, plan.out_channels * most * plan.pixels),
                    plan.dtype), plan.parallel_table(most, gathers), sums)
        return sums.sum(axis=0).reshape(weight_shape)
    by_pixel = grad_output.reshape(plan.batch, plan.out_channels, plan.pixels).transpose(0, 2, 1)

    def chunk(start: int, count: int):
        # One GEMM whose inner dimension runs over all the chunk's pixels: the columns as
        # (rows, B*pixels) times grad_output as (B*pixels, C_out). Per-sample products would
        # have only H_out*W_out there, which halves BLAS's speed at 8x8.
        matrix = plan.columns(x, start, count, wide=True)
        pixels_by_channel = np.ascontiguousarray(by_pixel[start:start + count]).reshape(
            count * plan.pixels, groups, -1).transpose(1, 0, 2)
        return np.matmul(plan.by_group(matrix), pixels_by_channel)

    grad_weight_t = sum(plan.run(chunk))  # (groups, rows/g, C_out/g)
    return np.ascontiguousarray(grad_weight_t.swapaxes(-1, -2)).reshape(weight_shape)


# ---------------------------------------------------------------------------------------
# 3x3, stride 1: Winograd F(2x2, 3x3) (winograd.py)
# ---------------------------------------------------------------------------------------
def _winograd_pays(weight_shape, stride, dilation, groups) -> bool:
    channels = min(weight_shape[0] // groups, weight_shape[1])
    return (winograd.applies(weight_shape, stride, dilation)
            and channels >= WINOGRAD_MIN_CHANNELS)


class _WinogradPlan:
    """The tiling of one F(2x2, 3x3) convolution, its chunks, and each chunk's buffers: the
    padded input, its 16 transformed planes (16, C, B*tiles), or with channels_last
    (16, B*tiles, C), and the products (16, C_out, B*tiles)."""

    def __init__(self, input_shape, channels_out, padding, groups, out_hw, dtype):
        self.batch, self.channels = input_shape[:2]
        self.channels_out, self.groups, self.padding = channels_out, groups, padding
        self.dtype, self.padded_hw = dtype, winograd.padded_hw(out_hw)
        self.tiles_hw = winograd.tiles(out_hw)
        self.tiles = self.tiles_hw[0] * self.tiles_hw[1]
        self.out_pixels = out_hw[0] * out_hw[1]
        self.channels_last = groups == 1 and self.tiles_hw[1] < WINOGRAD_CHANNELS_LAST_TILES
        # The work is counted as the direct convolution's multiply-adds.
        self.macs = (self.batch * channels_out * (self.channels // groups) * 9
                     * self.out_pixels)
        self.sample_bytes = 16 * (self.channels + channels_out) * self.tiles * dtype.itemsize
        self.budget = _rows_budget(WINOGRAD_BUDGET_BYTES,
                                   WINOGRAD_ROWS_PER_CHANNEL * max(self.channels, channels_out),
                                   self.tiles, self.sample_bytes)

    def run(self, body) -> list:
        """body(start, count) for each chunk, on as many threads as the work pays for."""
        return _run_chunks(self.batch, self.sample_bytes, self.macs, body, self.budget)

    def _planes(self, slot: str, channels: int, count: int):
        """A (16, channels*count*tiles + 16) scratch buffer. The transforms write (or read) all
        16 planes at once; planes 2^k bytes apart would share the same few cache sets and evict
        each other (input transform 6x slower at N=32, C=64, 16x16), so each plane starts one
        cache line past the previous one's end."""
        return scratch(slot, (16, channels * count * self.tiles + 16), self.dtype)

    def planes(self, slot: str, channels: int, count: int):
        """A (16, channels, count*tiles) scratch buffer (see _planes)."""
        return self._planes(slot, channels, count)[:, :-16].reshape(16, channels, -1)

    def transformed_input(self, x, start: int, count: int):
        """B^T d B of every tile of samples start.. of x: (16, C, count*tiles), or with
        channels_last (16, count*tiles, C)."""
        if self.channels_last:
            padded = pad_split_columns(x, start, count, self.padding, self.padded_hw)
            planes = winograd.transform_input_channels_last(
                padded, self._planes("columns", self.channels, count), self.tiles_hw)
            return planes[:, :-16].reshape(16, -1, self.channels)
        padded = pad(x, start, count, self.padding, self.padded_hw)
        return winograd.transform_input(padded, self.planes("columns", self.channels, count),
                                        self.tiles_hw)

    def transformed_grad_output(self, grad_output, start: int, count: int):
        """A g A^T of every 2x2 tile of samples start.. of grad_output: (16, C_out,
        count*tiles), or with channels_last (16, count*tiles, C_out)."""
        if not self.channels_last:
            return winograd.transform_grad_output(
                grad_output, start, self.planes("products", self.channels_out, count),
                self.tiles_hw)
        padded = pad_split_columns(grad_output, start, count, (0, 0), self.grad_padded_hw)
        planes = winograd.transform_grad_output_channels_last(
            padded, self._planes("products", self.channels_out, count), self.tiles_hw)
        return planes[:, :-16].reshape(16, -1, self.channels_out)

    @property
    def grad_padded_hw(self):
        """grad_output's height and width rounded up to whole tiles (zeros past its edge)."""
        return 2 * self.tiles_hw[0], 2 * self.tiles_hw[1]

    def by_group(self, matrices):
        return gemm_conv.by_group(matrices, self.groups)

    def _parallel_buffers(self, x):
        """run()'s chunks as (starts, counts), and per worker the zero-bordered padded copy
        and the transformed input planes, for the one-loop paths (winograd_parallel.py): with
        channels_last (workers, B, H_p, W_p, C) and (workers, 16, B*tiles*C + 16), else
        (workers, B, C, H_p, W_p) and (workers, 16 * (C*B*tiles + 16))."""
        starts, counts, workers = _parallel_chunks(self.batch, self.sample_bytes, self.macs,
                                                   self.budget)
        most = int(counts.max())
        if self.channels_last:
            shape = (workers, *split_columns_shape(most, self.padded_hw, self.channels))
            layout = "parallel, split columns"
        else:
            shape = (workers, most, self.channels, *self.padded_hw)
            layout = "parallel, channels first"
        padded = zero_bordered(shape, self.dtype, (layout, self.padding, x.shape[2:]))
        return starts, counts, padded, self._worker_planes("columns", workers, self.channels,
                                                           most)

    def _worker_planes(self, slot: str, workers: int, channels: int, most: int):
        """Per worker, 16 planes of channels * most*tiles, each 16 elements longer (see
        _planes): channels last as (workers, 16, ...), else flat (workers, 16 * ...)."""
        size = channels * most * self.tiles + 16
        shape = (workers, 16, size) if self.channels_last else (workers, 16 * size)
        return scratch(slot, shape, self.dtype)

    def run_parallel(self, x, transformed_weight, y, bias=None):
        """The forward as one parallel loop over run()'s chunks (winograd_parallel.py), in the
        layouts of the methods above, with one set of buffers per worker thread; with the
        channels last, bias (C_out,) (or empty: none) is added by the output transform."""
        starts, counts, padded, planes = self._parallel_buffers(x)
        workers, most = padded.shape[0], int(counts.max())
        products = self._worker_planes("products", workers, self.channels_out, most)
        if not self.channels_last:
            return winograd_parallel.forward_channels_first(
                x, np.ascontiguousarray(transformed_weight), y, self.padding, self.tiles_hw,
                starts, counts, padded, planes, products)
        rows = scratch("rows", (workers, 8, self.channels_out), self.dtype)
        weight_t = np.ascontiguousarray(transformed_weight.swapaxes(-1, -2))  # U^T (16, C, C_out)
        return winograd_parallel.forward(x, weight_t, y, self.padding, self.tiles_hw, starts,
                                         counts, padded, planes, products, rows,
                                         self.staging(workers), bias)

    def backward_weight_parallel(self, grad_output, x):
        """The weight gradient's 16 summed products (16, C_out, C) as one parallel loop over
        run()'s chunks (winograd_parallel.py)."""
        starts, counts, padded, planes = self._parallel_buffers(x)
        workers, most = padded.shape[0], int(counts.max())
        sums = scratch("sums", (workers, 16, self.channels_out, self.channels), self.dtype)
        if not self.channels_last:
            grad_planes = scratch("products", (workers, 16 * (self.channels_out * most
                                                              * self.tiles + 16)), self.dtype)
            winograd_parallel.backward_weight_channels_first(
                grad_output, x, self.padding, self.tiles_hw, starts, counts, padded, planes,
                grad_planes, sums)
            return sums.sum(axis=0)
        padded_grad = zero_bordered(
            (workers, *split_columns_shape(most, self.grad_padded_hw, self.channels_out)),
            self.dtype, ("parallel, split columns", (0, 0), grad_output.shape[2:]))
        grad_planes = self._worker_planes("products", workers, self.channels_out, most)
        winograd_parallel.backward_weight(grad_output, x, self.padding, self.tiles_hw, starts,
                                          counts, padded, planes, padded_grad, grad_planes, sums)
        return sums.sum(axis=0)

    def staging(self, workers: int):
        """Per worker, the channels-last staging image of transform_output_channels_last, or
        none (an empty one) below STAGED_OUTPUT_PIXELS."""
        staged = self.out_pixels >= STAGED_OUTPUT_PIXELS
        return scratch("staging", (workers, self.out_pixels * self.channels_out if staged else 0),
                       self.dtype)

    def parallel_applies(self) -> bool:
        return PARALLEL_WINOGRAD and _one_loop(self.dtype, self.groups)


def _winograd_forward(x, weight, padding, groups, out_hw, bias=None):
    """The Winograd convolution (+ bias: added by the channels-last output transform, or in
    place after the channels-first one)."""
    plan = _WinogradPlan(x.shape, weight.shape[0], padding, groups, out_hw, x.dtype)
    transformed_weight = plan.by_group(winograd.transform_weight(weight))
    y = np.empty((plan.batch, plan.channels_out, *out_hw), dtype=x.dtype)
    if not plan.channels_last:
        y = _winograd_forward_channels_first(plan, x, transformed_weight, y)
        return y if bias is None else cpu_fused.add_channel_bias(y, bias)
    bias = np.zeros(0, x.dtype) if bias is None else np.ascontiguousarray(bias)
    if plan.parallel_applies():
        return plan.run_parallel(x, transformed_weight[:, 0], y, bias)
    weight_t = transformed_weight[:, 0].swapaxes(-1, -2)  # U^T: (B*tiles, C) @ U^T per plane

    def chunk(start: int, count: int) -> None:
        transformed = plan.transformed_input(x, start, count)
        products = plan._planes("products", plan.channels_out, count)
        np.matmul(transformed, weight_t, out=products[:, :-16].reshape(16, -1, plan.channels_out))
        winograd.transform_output_channels_last(
            products, y, start, count, plan.tiles_hw,
            scratch("rows", (8, plan.channels_out), plan.dtype), plan.staging(1)[0], bias)

    plan.run(chunk)
    return y


def _winograd_forward_channels_first(plan, x, transformed_weight, y):
    """y = the Winograd convolution with the channels first (plan.channels_last false)."""
    if plan.parallel_applies():
        return plan.run_parallel(x, transformed_weight[:, 0], y)

    def chunk(start: int, count: int) -> None:
        transformed = plan.transformed_input(x, start, count)
        products = plan.planes("products", plan.channels_out, count)
        np.matmul(transformed_weight, plan.by_group(transformed), out=plan.by_group(products))
        winograd.transform_output(products, y, start, plan.tiles_hw)

    plan.run(chunk)
    return y


def _winograd_backward_weight(grad_output, x, weight_shape, padding, groups):
    plan = _WinogradPlan(x.shape, weight_shape[0], padding, groups, grad_output.shape[2:],
                         x.dtype)
    if plan.parallel_applies() and PARALLEL_WINOGRAD_WEIGHT_GRADIENT:
        return winograd.weight_gradient(plan.backward_weight_parallel(grad_output, x))

    def chunk(start: int, count: int):
        transformed = plan.transformed_input(x, start, count)
        grad_planes = plan.transformed_grad_output(grad_output, start, count)
        if plan.channels_last:  # (B*tiles, C_out)^T @ (B*tiles, C) per plane
            return np.matmul(grad_planes.swapaxes(-1, -2), transformed)
        return np.matmul(plan.by_group(grad_planes), plan.by_group(transformed).swapaxes(-1, -2))

    sums = sum(plan.run(chunk))  # (16, groups, C_out/g, C_in/g), or (16, C_out, C_in)
    return winograd.weight_gradient(sums.reshape(16, *weight_shape[:2]))


# ---------------------------------------------------------------------------------------
# 4x4, stride 2: Winograd F(2x2, 2x2) over the phases of the stride (winograd_stride2.py)
# ---------------------------------------------------------------------------------------
def _stride2_pays(weight_shape, stride, dilation, groups, dtype) -> bool:
    return (STRIDE2_WINOGRAD_MIN_CHANNELS is not None and _one_loop(dtype, groups)
            and winograd_stride2.applies(weight_shape, stride, dilation)
            and min(weight_shape[:2]) >= STRIDE2_WINOGRAD_MIN_CHANNELS)


class _Stride2Plan:
    """The tiling of one 4x4 stride-2 convolution by winograd_stride2.py, its chunks (as
    Winograd's: WINOGRAD_BUDGET_BYTES, but enough tiles for the weights), and per worker its
    buffers."""

    def __init__(self, input_shape, channels_out, padding, out_hw, dtype):
        self.batch, self.channels = input_shape[:2]
        self.input_hw, self.out_hw = tuple(input_shape[2:]), tuple(out_hw)
        self.channels_out, self.padding, self.dtype = channels_out, padding, dtype
        self.tiles_hw = winograd_stride2.tiles(out_hw)
        self.tiles = self.tiles_hw[0] * self.tiles_hw[1]
        self.macs = self.batch * channels_out * self.channels * 16 * math.prod(out_hw)

    def _chunks(self, step: str, tiles: int, sample_elements: int, weight_side: int):
        """(starts, counts, the most samples in one, workers) for `step` (see _parallel_chunks
        and STRIDE2_ROWS_PER_CHANNEL), a sample being `tiles` rows of the GEMMs and
        `sample_elements` of the buffers."""
        sample_bytes = sample_elements * self.dtype.itemsize
        budget = _rows_budget(STRIDE2_BUDGET_BYTES,
                              math.ceil(STRIDE2_ROWS_PER_CHANNEL[step] * weight_side), tiles,
                              sample_bytes)
        starts, counts, workers = _parallel_chunks(self.batch, sample_bytes, self.macs, budget)
        return starts, counts, int(counts.max()), workers

    def _input_chunks(self, step: str):
        """_chunks of the forward or the weight gradient: per tile the 9 planes of 4C inputs
        and C_out outputs."""
        return self._chunks(step, self.tiles, 9 * (4 * self.channels + self.channels_out)
                            * self.tiles, max(4 * self.channels, self.channels_out))

    def _planes(self, slot: str, workers: int, size: int):
        """Per worker 9 planes of `size` elements, each 16 longer (see _WinogradPlan._planes)."""
        return scratch(slot, (workers, 9, size + 16), self.dtype)

    def _padded_input(self, x, workers: int, most: int):
        shape = (workers, most, *winograd_stride2.padded_hw(self.input_hw, self.padding,
                                                            self.out_hw), self.channels)
        return zero_bordered(shape, self.dtype, ("stride 2", self.padding, self.input_hw))

    def _staging(self, workers: int, most: int, hw, channels: int):
        return scratch("staging", (workers, most * math.prod(hw) * channels), self.dtype)

    def forward(self, x, weight):
        starts, counts, most, workers = self._input_chunks("forward")
        columns = most * self.tiles
        y = np.empty((self.batch, self.channels_out, *self.out_hw), self.dtype)
        weight = winograd_stride2.transform_weight(weight).reshape(9, self.channels_out, -1)
        return winograd_stride2.forward(
            x, weight, y, self.padding, self.tiles_hw, starts, counts,
            self._padded_input(x, workers, most),
            self._planes("columns", workers, columns * 4 * self.channels),
            self._planes("products", workers, columns * self.channels_out),
            self._staging(workers, most, self.out_hw, self.channels_out))

    def backward_weight(self, grad_output, x):
        starts, counts, most, workers = self._input_chunks("weight gradient")
        columns = most * self.tiles
        padded_grad = zero_bordered((workers, most, 2 * self.tiles_hw[0], 2 * self.tiles_hw[1],
                                     self.channels_out), self.dtype,
                                    ("stride 2 grad", self.out_hw))
        sums = scratch("sums", (workers, 9, self.channels_out, 4 * self.channels), self.dtype)
        winograd_stride2.backward_weight(
            grad_output, x, self.padding, self.tiles_hw, starts, counts,
            self._padded_input(x, workers, most),
            self._planes("columns", workers, columns * 4 * self.channels), padded_grad,
            self._planes("products", workers, columns * self.channels_out), sums)
        return winograd_stride2.weight_gradient(
            sums, np.empty((self.channels_out, self.channels, 4, 4), self.dtype))

    def backward_input(self, grad_output, weight):
        (rows, rows_height), (columns, columns_width) = (
            winograd_stride2.phases(size, pad, out)
            for size, pad, out in zip(self.input_hw, self.padding, self.out_hw))
        firsts = np.array([rows[0][0], rows[1][0], columns[0][0], columns[1][0]], np.int64)
        tile_counts = np.array([rows[0][1], rows[1][1], columns[0][1], columns[1][1]], np.int64)
        phase_tiles = int(tile_counts[:2].max() * tile_counts[2:].max())  # the most of a phase
        starts, counts, most, workers = self._chunks(
            "input gradient", phase_tiles,
            9 * phase_tiles * (self.channels + self.channels_out)
            + math.prod(self.input_hw) * self.channels, max(self.channels, self.channels_out))
        tiles = most * phase_tiles
        padded_grad = zero_bordered((workers, most, rows_height, columns_width,
                                     self.channels_out), self.dtype,
                                    ("stride 2 input grad", self.out_hw))
        grad_x = np.empty((self.batch, self.channels, *self.input_hw), self.dtype)
        return winograd_stride2.backward_input(
            grad_output, winograd_stride2.transform_weight(weight, flip=True), grad_x,
            self.padding, firsts, tile_counts, starts, counts, padded_grad,
            self._planes("columns", workers, tiles * self.channels_out),
            self._planes("products", workers, tiles * self.channels),
            self._staging(workers, most, self.input_hw, self.channels))
