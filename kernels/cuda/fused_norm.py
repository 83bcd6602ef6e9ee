"""The CUDA glue of the fused group norm (+ SiLU), batch norm and softmax (fused_norm.cu).

Each kernel gives one block to one independent slice: a (sample, group), a channel, a row.
The block size is the smallest power of two that covers the slice, between a warp and
BLOCK_THREADS. Same functions and signatures as kernels/reference.py; imported by
kernels/cuda/__init__.py, which compiles the .cu file on first use.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from . import _c_type, _kernel

SOURCE = "fused_norm.cu"
# The largest block: must equal BLOCK_THREADS in fused_norm.cu (the size of its shared scratch).
BLOCK_THREADS = 256
WARP_THREADS = 32
# group_norm_param_grads runs one thread per channel.
PARAM_GRAD_THREADS = 128


def _cupy():
    """CuPy as kernels/cuda/__init__.py holds it: the tests' CUDA-on-CPU runner swaps a
    stand-in in there, and every CuPy call here must follow."""
    return sys.modules[__package__].cupy


def _threads(count: int) -> int:
    """Threads for a block that strides over `count` elements: a power of two (the tree
    reduction needs one) from a warp up to BLOCK_THREADS."""
    threads = WARP_THREADS
    while threads < min(count, BLOCK_THREADS):
        threads *= 2
    return threads


def _run(kernel: str, dtype, blocks: int, threads: int, *args) -> None:
    _c_type(kernel, dtype)  # a wrong dtype is refused even when there is nothing to do
    if blocks == 0:
        return
    _kernel(SOURCE, kernel, dtype)((blocks,), (threads,), args)


def _planes(array):
    """A contiguous (N, C, S) view (or copy) of an (N, C, *) array."""
    cupy = _cupy()
    return cupy.ascontiguousarray(array).reshape(*array.shape[:2], math.prod(array.shape[2:]))


def _vector(values, channels: int, fill: float, dtype):
    """A contiguous (C,) copy of a per-channel vector in `dtype`, or `fill` where it is None."""
    cupy = _cupy()
    if values is None:
        return cupy.full(channels, fill, dtype=dtype)
    return cupy.ascontiguousarray(values.reshape(channels), dtype=dtype)


# ---------------------------------------------------------------------------------------
# Group norm
# ---------------------------------------------------------------------------------------
def group_norm_forward(x, num_groups: int, weight, bias, eps: float, silu: bool):
    """y = act(x_hat * weight + bias), x_hat normalised over each (sample, group), act = SiLU
    or the identity. x: (N, C, *); weight, bias: (C,) or None (ones, zeros).

    Returns y (the shape and dtype of x), mean and rstd = 1 / sqrt(var + eps): (N, G) float64.
    """
    cupy = _cupy()
    n, c = x.shape[:2]
    planes = _planes(x)
    y = cupy.empty_like(planes)
    mean = cupy.empty((n, num_groups), dtype=cupy.float64)
    rstd = cupy.empty((n, num_groups), dtype=cupy.float64)
    group_channels = c // num_groups
    _run("group_norm_forward", x.dtype, n * num_groups,
         _threads(group_channels * planes.shape[2]), planes,
         _vector(weight, c, 1.0, x.dtype), _vector(bias, c, 0.0, x.dtype), y, mean, rstd,
         np.int64(num_groups), np.int64(group_channels), np.int64(planes.shape[2]),
         np.float64(eps), np.int32(bool(silu)))
    return y.reshape(x.shape), mean, rstd


def group_norm_backward(grad_output, x, mean, rstd, num_groups: int, weight, bias,
                        silu: bool):
    """Gradients of group_norm_forward given its mean and rstd (N, G): grad_x (shape of x),
    grad_weight and grad_bias (C,), all in the dtype of x."""
    cupy = _cupy()
    n, c = x.shape[:2]
    planes = _planes(x)
    grad_x = cupy.empty_like(planes)
    sum_grad = cupy.empty((n, c), dtype=cupy.float64)
    sum_grad_x_hat = cupy.empty((n, c), dtype=cupy.float64)
    _run("group_norm_backward", x.dtype, n * num_groups, _threads(planes.shape[2]),
         _planes(cupy.ascontiguousarray(grad_output, dtype=x.dtype)), planes,
         cupy.ascontiguousarray(mean, dtype=cupy.float64),
         cupy.ascontiguousarray(rstd, dtype=cupy.float64), _vector(weight, c, 1.0, x.dtype),
         _vector(bias, c, 0.0, x.dtype), grad_x, sum_grad, sum_grad_x_hat,
         np.int64(num_groups), np.int64(c // num_groups), np.int64(planes.shape[2]),
         np.int32(bool(silu)))
    grad_weight = cupy.empty(c, dtype=x.dtype)
    grad_bias = cupy.empty(c, dtype=x.dtype)
    _run("group_norm_param_grads", x.dtype, -(-c // PARAM_GRAD_THREADS), PARAM_GRAD_THREADS,
         sum_grad, sum_grad_x_hat, grad_weight, grad_bias, np.int64(n), np.int64(c))
    return grad_x.reshape(x.shape), grad_weight, grad_bias


# ---------------------------------------------------------------------------------------
# Batch norm
# ---------------------------------------------------------------------------------------
def batch_norm_forward(x, weight, bias, running_mean, running_var, training: bool,
                       momentum: float, eps: float):
    """y = x_hat * weight + bias with x_hat normalised per channel over (N, *).

    Training: the batch's mean and biased variance normalise, and running_mean / running_var
    (when not None) are updated in place as PyTorch does, with the unbiased variance:
    running = (1 - momentum) * running + momentum * batch. Otherwise the running statistics
    normalise. Returns y (shape and dtype of x), mean and rstd: (C,) float64.
    """
    cupy = _cupy()
    n, c = x.shape[:2]
    planes = _planes(x)
    y = cupy.empty_like(planes)
    mean = cupy.empty(c, dtype=cupy.float64)
    rstd = cupy.empty(c, dtype=cupy.float64)
    # The kernel reads and writes the running statistics in x's dtype and layout.
    tracked = [None if r is None else cupy.ascontiguousarray(r, dtype=x.dtype)
               for r in (running_mean, running_var)]
    update = training and running_mean is not None and running_var is not None
    stats = [r if r is not None else cupy.zeros(c, dtype=x.dtype) for r in tracked]
    _run("batch_norm_forward", x.dtype, c, _threads(n * planes.shape[2]), planes,
         _vector(weight, c, 1.0, x.dtype), _vector(bias, c, 0.0, x.dtype), *stats, y, mean,
         rstd, np.int64(n), np.int64(c), np.int64(planes.shape[2]), np.float64(eps),
         np.float64(momentum), np.int32(bool(training)), np.int32(update))
    if update:
        for running, copy in zip((running_mean, running_var), tracked):
            if copy is not running:  # another dtype or layout: write the update back
                running[...] = copy
    return y.reshape(x.shape), mean, rstd


def batch_norm_backward(grad_output, x, mean, rstd, weight, training: bool):
    """Gradients of batch_norm_forward given its mean and rstd (C,): grad_x (shape of x),
    grad_weight and grad_bias (C,), all in the dtype of x."""
    cupy = _cupy()
    n, c = x.shape[:2]
    planes = _planes(x)
    grad_x = cupy.empty_like(planes)
    grad_weight = cupy.empty(c, dtype=x.dtype)
    grad_bias = cupy.empty(c, dtype=x.dtype)
    _run("batch_norm_backward", x.dtype, c, _threads(n * planes.shape[2]),
         _planes(cupy.ascontiguousarray(grad_output, dtype=x.dtype)), planes,
         cupy.ascontiguousarray(mean, dtype=cupy.float64),
         cupy.ascontiguousarray(rstd, dtype=cupy.float64), _vector(weight, c, 1.0, x.dtype),
         grad_x, grad_weight, grad_bias, np.int64(n), np.int64(c), np.int64(planes.shape[2]),
         np.int32(bool(training)))
    return grad_x.reshape(x.shape), grad_weight, grad_bias


# ---------------------------------------------------------------------------------------
# Softmax along the last axis
# ---------------------------------------------------------------------------------------
def softmax_forward(x):
    """y = exp(x - max) / sum exp(x - max) along the last axis; the shape and dtype of x."""
    cupy = _cupy()
    x = cupy.ascontiguousarray(x)
    y = cupy.empty_like(x)
    length = x.shape[-1] if x.ndim else 1
    if x.size:
        _run("softmax_forward", x.dtype, x.size // length, _threads(length), x, y,
             np.int64(length))
    return y


def softmax_backward(grad_output, y):
    """grad_x = y * (g - sum(g * y)) along the last axis, y the softmax's output."""
    cupy = _cupy()
    y = cupy.ascontiguousarray(y)
    grad_x = cupy.empty_like(y)
    length = y.shape[-1] if y.ndim else 1
    if y.size:
        _run("softmax_backward", y.dtype, y.size // length, _threads(length),
             cupy.ascontiguousarray(grad_output, dtype=y.dtype), y, grad_x, np.int64(length))
    return grad_x
