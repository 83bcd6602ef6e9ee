"""The CPU kernels: Numba loops for data movement, NumPy's BLAS (OpenBLAS) for the GEMMs.

Convolution lives in cpu_conv.py (im2col + GEMM, Winograd F(2x2, 3x3) for 3x3 stride-1
convolutions, 1x1 as plain GEMMs; the chunks of a batch on parallel threads) and is exported
from here, as are the matrix products of cpu_matmul.py and the fused group norm, batch norm and
softmax of cpu_fused_norm.py. Pooling and upsampling are direct Numba loops, parallel over the
(n, c) planes. All Numba functions are compiled on first use and cached (cache=True) in a
directory per version of the kernel sources (numba_cache.py).
"""
from __future__ import annotations

import ctypes
import os

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)
from .geometry import Pair, as_pairs, check_pool2d, check_upsample, check_upsample_grad

# Numba's thread pool: its OpenMP layer, with the idle threads spinning a while between loops.
# - The "workqueue" layer's threads sleep between parallel loops, and waking them cost 60-120 us
#   per loop on these (virtual) cores, more than most of the fused kernels take: the U-Net 8x8
#   step's 150 parallel loops spent 20 ms of its 131 waking threads (omp: 2 us per loop).
# - GNU OpenMP's threads spin for GOMP_SPINCOUNT iterations (about a millisecond at SPIN_COUNT)
#   before they sleep. While convolutions ran on a Python thread pool (cpu_conv.py), a
#   spinning thread took a core from them and 10,000 did best; with the convolutions of
#   float32 models on the OpenMP threads too (winograd_parallel.py, im2col_parallel.py), the
#   next loop finds them awake: the U-Net 8x8 step on two threads took 80 ms spinning 10,000,
#   71 ms spinning 300,000 (GNU's default), and the DCGAN 28x28 one 13.0 against 12.6.
# libgomp reads GOMP_SPINCOUNT when it loads (at the first parallel loop), so it is set here;
# a value already in the environment, or an explicit NUMBA_THREADING_LAYER, wins. Where no
# OpenMP runtime loads, Numba falls back to workqueue.
SPIN_COUNT = 300_000
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
    os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))

# glibc's malloc hands blocks of more than 128 KiB (an activation of a small model) to mmap and
# gives freed memory at the top of its heap back to the system; the next array of that size
# then touches fresh pages, each a page fault. A training step holds its activations until
# the backward, so nearly every new array did: the U-Net 8x8 step on two threads took 2,800
# faults and 93 ms, against 37 faults and 86 ms with both limits raised (MALLOC_MMAP_THRESHOLD
# bytes and larger from mmap, MALLOC_TRIM_THRESHOLD bytes free before any goes back). The
# process then keeps its peak memory, as PyTorch's caching allocators do. A malloc setting in
# the environment (MALLOC_SETTINGS, or glibc.malloc in GLIBC_TUNABLES) wins; other C
# libraries are left alone.
MALLOC_MMAP_THRESHOLD = 32 * 2**20  # glibc's upper bound for this setting on 64-bit systems
MALLOC_TRIM_THRESHOLD = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                   "MALLOC_MMAP_MAX_")


def _keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see MALLOC_MMAP_THRESHOLD); whether it did."""
    if (any(name in os.environ for name in MALLOC_SETTINGS)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to load, or no mallopt (not glibc)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


KEEPS_FREED_MEMORY = _keep_freed_memory()

from .cpu_conv import (conv2d_backward_input, conv2d_backward_weight,  # noqa: E402
                       conv2d_forward)
from .cpu_matmul import matmul  # noqa: E402,F401
from .cpu_fused_norm import (batch_norm_backward, batch_norm_forward,  # noqa: E402
                             group_norm_backward, group_norm_forward, softmax_backward,
                             softmax_forward)

_jit = dict(nogil=True, cache=True)


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


# The fused bias + activation and the multi-tensor parameter updates (cpu_fused.py).
from .cpu_fused import (adam_update, add, bias_act_backward, bias_act_forward,  # noqa: E402,F401
                        conv2d_backward_bias, ema_update, grad_norm, scale_grads, sgd_update)
