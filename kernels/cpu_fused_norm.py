"""Fused normalisation and softmax on the CPU: Numba loops, parallel over independent slices.

Group norm (+ affine, + optional SiLU) runs one thread per task of whole groups of one
sample: the statistics, then the normalisation with the affine transform, then the
activation as one loop over the task's memory while it is in cache; the backward likewise.
Batch norm runs one thread per channel, softmax one per row. Statistics are accumulated in
float64, shifted by the slice's first value so that a large mean does not cancel the variance
away. Exported through cpu.py; reference.py holds the NumPy oracle with the same signatures.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)

# error_model="numpy": a float division need not check for zero (Python's ZeroDivisionError
# check keeps LLVM from vectorising a loop); reassoc lets the float64 sums vectorise.
_jit = dict(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})

# e^t for float32 data in float32 arithmetic that LLVM vectorises (math.exp is a scalar call
# 5-10x slower): t = n ln 2 + r with n an integer (ln 2 in two parts, Cody and Waite), e^r by its
# Taylor series to degree 7 (|r| <= ln 2 / 2: truncation below 1e-8), and 2^n built from its
# bits. Within 1.3 ulp of e^t over the clamped range; clamping t to +-EXP_LIMIT only moves
# sigmoid(z) for |z| > 40, by less than e^-40. float64 data uses math.exp.
EXP_LIMIT = np.float32(40.0)
LOG2_E = np.float32(1.4426950408889634)
LN2_HIGH = np.float32(0.693359375)  # 8 significant bits: n * LN2_HIGH is exact
LN2_LOW = np.float32(-2.12194440e-4)  # ln 2 - LN2_HIGH
EXP_TAYLOR = tuple(np.float32(1.0 / math.factorial(k)) for k in range(8))
FLOAT32_BIAS, FLOAT32_MANTISSA_BITS = np.int32(127), np.int32(23)
# Group norm tasks: at least this many per thread when the batch allows (see _groups_per_task).
TASKS_PER_THREAD = 4


# ---------------------------------------------------------------------------------------
# Helpers shared by the wrappers
# ---------------------------------------------------------------------------------------
def _as_planes(array: np.ndarray) -> np.ndarray:
    """A contiguous (N, C, S) view (or copy) of an (N, C, *) array."""
    return np.ascontiguousarray(array).reshape(*array.shape[:2], math.prod(array.shape[2:]))


def _vector(values, channels: int, fill: float) -> np.ndarray:
    """A contiguous float64 (C,) copy of a per-channel vector, or `fill` where it is None."""
    if values is None:
        return np.full(channels, fill)
    return np.ascontiguousarray(values, dtype=np.float64).reshape(channels)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (a bit cast, which vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@numba.njit(inline="always", **_jit)
def _exp_float32(t):
    """e^t of a float32 t, in float32 (see EXP_LIMIT). (Numba's min and max pass a NaN on, so
    NaN stays NaN.)"""
    t = min(max(t, -EXP_LIMIT), EXP_LIMIT)
    n = np.floor(t * LOG2_E + np.float32(0.5))
    r = t - n * LN2_HIGH - n * LN2_LOW
    power = EXP_TAYLOR[7]
    for k in range(6, -1, -1):
        power = power * r + EXP_TAYLOR[k]
    return power * _float32_from_bits((np.int32(n) + FLOAT32_BIAS) << FLOAT32_MANTISSA_BITS)


@numba.njit(**_jit)
def _silu_in_place(z, exact):
    """z = z sigmoid(z) over a contiguous 1-D array; exact: math.exp (float64 data), else
    _exp_float32 (two loops, so that each vectorises)."""
    if exact:
        for i in range(z.size):
            z[i] = z[i] / (1.0 + math.exp(-z[i]))
    else:
        one = np.float32(1.0)
        for i in range(z.size):
            z[i] = z[i] / (one + _exp_float32(-z[i]))


@numba.njit(**_jit)
def _silu_grad_in_place(grad_output, z, exact):
    """z = grad_output * d/dz (z sigmoid(z)) = grad_output * s (1 + z (1 - s)), s = sigmoid(z),
    over contiguous 1-D arrays (exact as in _silu_in_place)."""
    if exact:
        for i in range(z.size):
            s = 1.0 / (1.0 + math.exp(-z[i]))
            z[i] = grad_output[i] * s * (1.0 + z[i] * (1.0 - s))
    else:
        one = np.float32(1.0)
        for i in range(z.size):
            s = one / (one + _exp_float32(-z[i]))
            z[i] = grad_output[i] * s * (one + z[i] * (one - s))


# ---------------------------------------------------------------------------------------
# Group norm: one thread per task of a sample's groups
# ---------------------------------------------------------------------------------------
# The arrays reach the kernels as (tasks, groups per task, C/G, S): a task is one or more
# whole groups of one sample, contiguous in memory, so that SiLU and its derivative run as one
# long loop over the task (rows of 16 pixels, one per channel, left LLVM's vectorised loops
# mostly to their scalar remainders: a 4x4 U-Net layer's forward took 155 us, now 61).
@numba.njit(**_jit)
def _shifted_sums(values, shift):
    """sum (x - shift) and sum (x - shift)^2 over a contiguous 1-D array, in float64. The row
    helpers are functions of their own: inlined into the parallel loops, LLVM did not
    vectorise them."""
    total, total_sq = 0.0, 0.0
    for i in range(values.size):
        d = values[i] - shift
        total += d
        total_sq += d * d
    return total, total_sq


@numba.njit(**_jit)
def _affine_row(row, shift, scale, offset, out):
    """out = (row - shift) * scale + offset, in the row's dtype (shift: a value of the group,
    so that row - shift is exact where a mean far from zero would cancel x * scale)."""
    for i in range(row.size):
        out[i] = (row[i] - shift) * scale + offset


@numba.njit(**_jit)
def _write_z(x, mean, rstd, weight, bias, first_group, z):
    """z = x_hat * w + b for one task's groups (x, z: (groups per task, C/G, S)), the groups
    being first_group.. of weight and bias (G, C/G); x_hat = (x - shift) rstd + (shift - mean)
    rstd with shift the group's first value."""
    cast = x.dtype.type
    for j in range(x.shape[0]):
        g, shift = first_group + j, x[j, 0, 0]
        for c in range(x.shape[1]):
            scale = rstd[j] * weight[g, c]
            _affine_row(x[j, c], shift, cast(scale), cast(bias[g, c] + (shift - mean[j]) * scale),
                        z[j, c])


@numba.njit(parallel=True, **_jit)
def _group_norm_forward(x, weight, bias, eps, silu, exact, y, mean, rstd):
    """x, y: (tasks, groups per task, C/G, S); weight, bias: (G, C/G) float64; mean, rstd:
    (tasks, groups per task) float64."""
    tasks, per_task, group_channels, size = x.shape
    groups = weight.shape[0]
    count = group_channels * size
    for task in numba.prange(tasks):
        for j in range(per_task):
            values = x[task, j].reshape(-1)
            shift = np.float64(values[0])
            total, total_sq = _shifted_sums(values, shift)
            shifted_mean = total / count
            variance = max(total_sq / count - shifted_mean * shifted_mean, 0.0)
            mean[task, j] = shift + shifted_mean
            rstd[task, j] = 1.0 / math.sqrt(variance + eps)
        _write_z(x[task], mean[task], rstd[task], weight, bias, task * per_task % groups,
                 y[task])
        if silu:
            _silu_in_place(y[task].reshape(-1), exact)
    return y


@numba.njit(**_jit)
def _channel_grad_sums(grad_z, x, shift, rstd, offset):
    """sum g and sum g * x_hat over one channel's row, g = grad_z, x_hat = (x - shift) rstd +
    offset in the row's dtype; the sums in float64."""
    total, total_x_hat = 0.0, 0.0
    for i in range(x.size):
        grad = np.float64(grad_z[i])
        total += grad
        total_x_hat += grad * np.float64((x[i] - shift) * rstd + offset)
    return total, total_x_hat


@numba.njit(**_jit)
def _channel_grad_x(grad_z, x, shift, rstd, offset, scale, constant, slope, grad_x):
    """grad_x = rstd * (g * w - mean_grad - x_hat * mean_grad_x_hat) = g scale - constant -
    x_hat slope over one channel's row, x_hat as in _channel_grad_sums (grad_z and grad_x may
    be the same array)."""
    for i in range(x.size):
        x_hat = (x[i] - shift) * rstd + offset
        grad_x[i] = grad_z[i] * scale - constant - x_hat * slope


@numba.njit(parallel=True, **_jit)
def _group_norm_backward(grad_output, x, mean, rstd, weight, bias, silu, exact, grad_x,
                         sum_grad, sum_grad_x_hat):
    """With SiLU, g (the gradient at z, after SiLU's derivative) is first written into grad_x
    (z, then g in place); without, g is grad_output. Then per channel the sums of g and
    g * x_hat, and g turned into the input gradient. Shapes as in the forward; sum_grad,
    sum_grad_x_hat: (tasks, groups per task, C/G) float64."""
    tasks, per_task, group_channels, size = x.shape
    groups = weight.shape[0]
    count = group_channels * size
    cast = x.dtype.type
    for task in numba.prange(tasks):
        first_group = task * per_task % groups
        grad_z = grad_output
        if silu:
            _write_z(x[task], mean[task], rstd[task], weight, bias, first_group, grad_x[task])
            _silu_grad_in_place(grad_output[task].reshape(-1), grad_x[task].reshape(-1), exact)
            grad_z = grad_x
        for j in range(per_task):
            g, shift = first_group + j, x[task, j, 0, 0]
            group_rstd = rstd[task, j]
            rstd_cast, offset = cast(group_rstd), cast((shift - mean[task, j]) * group_rstd)
            group_sum, group_sum_x_hat = 0.0, 0.0  # of g_hat = g * w and of g_hat * x_hat
            for c in range(group_channels):
                channel_sum, channel_sum_x_hat = _channel_grad_sums(
                    grad_z[task, j, c], x[task, j, c], shift, rstd_cast, offset)
                sum_grad[task, j, c], sum_grad_x_hat[task, j, c] = channel_sum, channel_sum_x_hat
                group_sum += weight[g, c] * channel_sum
                group_sum_x_hat += weight[g, c] * channel_sum_x_hat
            constant = cast(group_rstd * group_sum / count)
            slope = cast(group_rstd * group_sum_x_hat / count)
            for c in range(group_channels):
                _channel_grad_x(grad_z[task, j, c], x[task, j, c], shift, rstd_cast, offset,
                                cast(group_rstd * weight[g, c]), constant, slope,
                                grad_x[task, j, c])
    return grad_x


def _groups_per_task(samples: int, num_groups: int) -> int:
    """All of a sample's groups per task when the batch gives every thread TASKS_PER_THREAD
    tasks, else the most (a divisor of num_groups) that still does, down to one."""
    wanted = TASKS_PER_THREAD * numba.get_num_threads()
    for per_task in range(num_groups, 0, -1):
        if num_groups % per_task == 0 and samples * (num_groups // per_task) >= wanted:
            return per_task
    return 1


def _tasks(planes: np.ndarray, num_groups: int, per_task: int) -> np.ndarray:
    """(N, C, S) planes as (tasks, groups per task, C/G, S)."""
    n, c, s = planes.shape
    return planes.reshape(n * num_groups // per_task, per_task, c // num_groups, s)


def group_norm_forward(x: np.ndarray, num_groups: int, weight, bias, eps: float,
                       silu: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = act(x_hat * weight + bias), x_hat normalised over each (sample, group), act = SiLU
    or the identity. x: (N, C, *); weight, bias: (C,) or None (ones, zeros).

    Returns y (the shape and dtype of x), mean and rstd = 1 / sqrt(var + eps): (N, G) float64.
    """
    n, c = x.shape[:2]
    planes = _as_planes(x)
    y = np.empty_like(planes)
    mean, rstd = np.empty((n, num_groups)), np.empty((n, num_groups))
    if y.size:
        per_task = _groups_per_task(n, num_groups)
        _group_norm_forward(_tasks(planes, num_groups, per_task),
                            _vector(weight, c, 1.0).reshape(num_groups, -1),
                            _vector(bias, c, 0.0).reshape(num_groups, -1), float(eps),
                            bool(silu), x.dtype != np.float32, _tasks(y, num_groups, per_task),
                            mean.reshape(-1, per_task), rstd.reshape(-1, per_task))
    return y.reshape(x.shape), mean, rstd


def group_norm_backward(grad_output: np.ndarray, x: np.ndarray, mean: np.ndarray,
                        rstd: np.ndarray, num_groups: int, weight, bias,
                        silu: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of group_norm_forward given its mean and rstd (N, G): grad_x (shape of x),
    grad_weight and grad_bias (C,), all in the dtype of x."""
    n, c = x.shape[:2]
    planes = _as_planes(x)
    grad_x = np.empty_like(planes)
    sums = np.zeros((2, n, num_groups, c // num_groups))
    if grad_x.size:
        per_task = _groups_per_task(n, num_groups)
        statistics = (np.ascontiguousarray(values, np.float64).reshape(-1, per_task)
                      for values in (mean, rstd))
        _group_norm_backward(
            _tasks(_as_planes(grad_output.astype(x.dtype, copy=False)), num_groups, per_task),
            _tasks(planes, num_groups, per_task), *statistics,
            _vector(weight, c, 1.0).reshape(num_groups, -1),
            _vector(bias, c, 0.0).reshape(num_groups, -1), bool(silu), x.dtype != np.float32,
            _tasks(grad_x, num_groups, per_task),
            *(part.reshape(-1, per_task, c // num_groups) for part in sums))
    grad_bias, grad_weight = sums.sum(axis=1).reshape(2, c).astype(x.dtype)
    return grad_x.reshape(x.shape), grad_weight, grad_bias


# ---------------------------------------------------------------------------------------
# Batch norm: one thread per channel
# ---------------------------------------------------------------------------------------
@numba.njit(parallel=True, **_jit)
def _batch_norm_forward(x, weight, bias, eps, training, mean, var, rstd, y):
    """x, y: (N, C, S). Training: mean and (biased) var of each channel are computed into
    mean, var; otherwise they hold the running statistics. rstd is written either way."""
    samples, channels, size = x.shape
    count = samples * size
    for c in numba.prange(channels):
        if training:
            shift = np.float64(x[0, c, 0])
            total, total_sq = 0.0, 0.0
            for n in range(samples):
                for i in range(size):
                    d = x[n, c, i] - shift
                    total += d
                    total_sq += d * d
            shifted_mean = total / count
            mean[c] = shift + shifted_mean
            var[c] = max(total_sq / count - shifted_mean * shifted_mean, 0.0)
        rstd[c] = 1.0 / math.sqrt(var[c] + eps)
        scale = rstd[c] * weight[c]
        offset = bias[c] - mean[c] * scale
        for n in range(samples):
            for i in range(size):
                y[n, c, i] = x[n, c, i] * scale + offset
    return y


@numba.njit(parallel=True, **_jit)
def _batch_norm_backward(grad_output, x, mean, rstd, weight, training, grad_x, grad_weight,
                         grad_bias):
    """Per channel: sums of g and g * x_hat (the bias and weight gradients), then grad_x."""
    samples, channels, size = x.shape
    count = samples * size
    for c in numba.prange(channels):
        channel_mean, channel_rstd = mean[c], rstd[c]
        total, total_x_hat = 0.0, 0.0
        for n in range(samples):
            for i in range(size):
                grad = np.float64(grad_output[n, c, i])
                total += grad
                total_x_hat += grad * (x[n, c, i] - channel_mean) * channel_rstd
        grad_bias[c], grad_weight[c] = total, total_x_hat
        scale = weight[c] * channel_rstd
        # With batch statistics: grad_x = scale * (g - mean(g) - x_hat * mean(g * x_hat)).
        mean_grad = total / count if training else 0.0
        mean_grad_x_hat = total_x_hat / count if training else 0.0
        for n in range(samples):
            for i in range(size):
                x_hat = (x[n, c, i] - channel_mean) * channel_rstd
                grad_x[n, c, i] = scale * (grad_output[n, c, i] - mean_grad
                                           - x_hat * mean_grad_x_hat)
    return grad_x


def batch_norm_forward(x: np.ndarray, weight, bias, running_mean, running_var, training: bool,
                       momentum: float, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = x_hat * weight + bias with x_hat normalised per channel over (N, *).

    Training: the batch's mean and biased variance normalise, and running_mean / running_var
    (when not None) are updated in place as PyTorch does, with the unbiased variance:
    running = (1 - momentum) * running + momentum * batch. Otherwise the running statistics
    normalise. Returns y (shape and dtype of x), mean and rstd: (C,) float64.
    """
    n, c = x.shape[:2]
    planes = _as_planes(x)
    y = np.empty_like(planes)
    if training:
        mean, var = np.empty(c), np.empty(c)
    else:
        mean, var = _vector(running_mean, c, 0.0), _vector(running_var, c, 1.0)
    rstd = np.empty(c)
    _batch_norm_forward(planes, _vector(weight, c, 1.0), _vector(bias, c, 0.0), float(eps),
                        bool(training), mean, var, rstd, y)
    if training:
        count = planes.shape[0] * planes.shape[2]
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * count / (count - 1)
    return y.reshape(x.shape), mean, rstd


def batch_norm_backward(grad_output: np.ndarray, x: np.ndarray, mean: np.ndarray,
                        rstd: np.ndarray, weight, training: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of batch_norm_forward given its mean and rstd (C,): grad_x (shape of x),
    grad_weight and grad_bias (C,), all in the dtype of x."""
    c = x.shape[1]
    planes = _as_planes(x)
    grad_x = np.empty_like(planes)
    grad_weight, grad_bias = np.empty(c), np.empty(c)
    _batch_norm_backward(_as_planes(grad_output.astype(x.dtype, copy=False)), planes,
                         np.ascontiguousarray(mean, np.float64),
                         np.ascontiguousarray(rstd, np.float64), _vector(weight, c, 1.0),
                         bool(training), grad_x, grad_weight, grad_bias)
    return grad_x.reshape(x.shape), grad_weight.astype(x.dtype), grad_bias.astype(x.dtype)


# ---------------------------------------------------------------------------------------
# Softmax along the last axis: one thread per row
# ---------------------------------------------------------------------------------------
@numba.njit(**_jit)
def _softmax_row(row, exact, out):
    """out = exp(row - max) / sum, the sum in float64; exact: math.exp (float64 data), else
    _exp_float32 in float32. (Clamping the exponent at -EXP_LIMIT leaves every output within
    e^-40 of the true one.)"""
    largest = row[0]
    for i in range(1, row.size):
        largest = max(largest, row[i])
    total = 0.0
    if exact:
        for i in range(row.size):
            out[i] = math.exp(row[i] - largest)
            total += out[i]
    else:
        for i in range(row.size):
            e = _exp_float32(np.float32(row[i] - largest))
            out[i] = e
            total += e
    inverse = 1.0 / total
    for i in range(row.size):
        out[i] *= inverse


@numba.njit(parallel=True, **_jit)
def _softmax_forward(x, exact, y):
    """x, y: (R, L); y[r] = softmax of x[r]."""
    for r in numba.prange(x.shape[0]):
        _softmax_row(x[r], exact, y[r])
    return y


@numba.njit(parallel=True, **_jit)
def _softmax_backward(grad_output, y, grad_x):
    """grad_x[r] = y[r] * (g[r] - sum(g[r] * y[r])), the sum in float64."""
    rows, length = y.shape
    for r in numba.prange(rows):
        total = 0.0
        for i in range(length):
            total += np.float64(grad_output[r, i]) * y[r, i]
        for i in range(length):
            grad_x[r, i] = y[r, i] * (grad_output[r, i] - total)
    return grad_x


def _rows(array: np.ndarray) -> np.ndarray:
    """A contiguous (R, L) view (or copy) of an (..., L) array."""
    return np.ascontiguousarray(array).reshape(-1, array.shape[-1])


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """y = exp(x - max) / sum exp(x - max) along the last axis; the shape and dtype of x."""
    if x.size == 0:
        return np.empty_like(x)
    rows = _rows(x)
    return _softmax_forward(rows, x.dtype != np.float32, np.empty_like(rows)).reshape(x.shape)


def softmax_backward(grad_output: np.ndarray, y: np.ndarray) -> np.ndarray:
    """grad_x = y * (g - sum(g * y)) along the last axis, y the softmax's output."""
    if y.size == 0:
        return np.empty_like(y)
    rows = _rows(y)
    return _softmax_backward(_rows(grad_output.astype(y.dtype, copy=False)), rows,
                             np.empty_like(rows)).reshape(y.shape)
