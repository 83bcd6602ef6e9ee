"""Fused normalisation and softmax on the CPU: Numba loops, parallel over independent slices.

Group norm (+ affine, + optional SiLU) runs one thread per (sample, group): the statistics,
the normalisation, the affine transform and the activation in one visit of the group's
memory, and the backward in two visits. Batch norm runs one thread per channel, softmax one
per row. Statistics are accumulated in float64, shifted by the slice's first value so that a
large mean does not cancel the variance away. Exported through cpu.py; reference.py holds the
NumPy oracle with the same signatures.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# error_model="numpy": a float division need not check for zero (Python's ZeroDivisionError
# check keeps LLVM from vectorising a loop); reassoc lets the float64 sums vectorise.
_jit = dict(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})

# e^t for float32 data: e^t = (e^(t/2^6))^(2^6), the inner factor by its Taylor series to
# degree 10 (|t/64| <= 0.625 after clamping t to +-40): a relative error below 2e-8 in plain
# arithmetic, which LLVM vectorises, where math.exp is a scalar call 5-10x slower. Clamping
# only moves sigmoid(z) for |z| > 40, by less than e^-40. float64 data uses math.exp.
EXP_LIMIT = 40.0
EXP_SQUARINGS = 6
EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(11))


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


@numba.njit(inline="always", **_jit)
def _exp_float32(t):
    """e^t to float32 accuracy (see EXP_TAYLOR), in arithmetic that vectorises. (Numba's min
    and max pass a NaN on, so NaN stays NaN.)"""
    u = min(max(t, -EXP_LIMIT), EXP_LIMIT) / 2 ** EXP_SQUARINGS
    power = EXP_TAYLOR[10]
    for k in range(9, -1, -1):
        power = power * u + EXP_TAYLOR[k]
    for _ in range(EXP_SQUARINGS):
        power *= power
    return power


@numba.njit(inline="always", **_jit)
def _sigmoid(z, exact):
    """1 / (1 + e^-z); exact: math.exp (float64 data), else _exp_float32."""
    return 1.0 / (1.0 + (math.exp(-z) if exact else _exp_float32(-z)))


# ---------------------------------------------------------------------------------------
# Group norm: one thread per (sample, group)
# ---------------------------------------------------------------------------------------
@numba.njit(inline="always", **_jit)
def _silu_derivative(z, exact):
    """d/dz z sigmoid(z) = s (1 + z (1 - s)), s = sigmoid(z)."""
    s = _sigmoid(z, exact)
    return s * (1.0 + z * (1.0 - s))


@numba.njit(**_jit)
def _shifted_sums(row, shift):
    """sum (x - shift) and sum (x - shift)^2 over a row, in float64. The row helpers are
    functions of their own: inlined into the parallel loops, LLVM did not vectorise them."""
    total, total_sq = 0.0, 0.0
    for i in range(row.size):
        d = row[i] - shift
        total += d
        total_sq += d * d
    return total, total_sq


@numba.njit(**_jit)
def _affine_row(row, scale, offset, silu, exact, out):
    """out = act(row * scale + offset), act = SiLU or the identity."""
    for i in range(row.size):
        z = row[i] * scale + offset
        out[i] = z * _sigmoid(z, exact) if silu else z


@numba.njit(parallel=True, **_jit)
def _group_norm_forward(x, weight, bias, eps, silu, exact, y, mean, rstd):
    """x, y: (N, G, C/G, S); weight, bias: (G, C/G) float64; mean, rstd: (N, G) float64."""
    samples, groups, group_channels, size = x.shape
    count = group_channels * size
    for task in numba.prange(samples * groups):
        n, g = task // groups, task % groups
        shift = np.float64(x[n, g, 0, 0])
        total, total_sq = 0.0, 0.0
        for c in range(group_channels):
            channel_total, channel_total_sq = _shifted_sums(x[n, g, c], shift)
            total += channel_total
            total_sq += channel_total_sq
        shifted_mean = total / count
        variance = max(total_sq / count - shifted_mean * shifted_mean, 0.0)
        group_mean, group_rstd = shift + shifted_mean, 1.0 / math.sqrt(variance + eps)
        mean[n, g], rstd[n, g] = group_mean, group_rstd
        for c in range(group_channels):
            # z = (x - mean) * rstd * w + b = x * scale + offset
            scale = group_rstd * weight[g, c]
            _affine_row(x[n, g, c], scale, bias[g, c] - group_mean * scale, silu, exact,
                        y[n, g, c])
    return y


@numba.njit(**_jit)
def _channel_grad_sums(grad_output, x, mean, rstd, w, b, silu, exact, grad_z):
    """Over one channel's row: grad_z = g, the gradient at z = x_hat * w + b (written only with
    SiLU: without, g is grad_output); returns sum g and sum g * x_hat."""
    total, total_x_hat = 0.0, 0.0
    for i in range(x.size):
        x_hat = (x[i] - mean) * rstd
        grad = np.float64(grad_output[i])
        if silu:
            grad *= _silu_derivative(x_hat * w + b, exact)
            grad_z[i] = grad
        total += grad
        total_x_hat += grad * x_hat
    return total, total_x_hat


@numba.njit(**_jit)
def _channel_grad_x(grad_z, x, mean, rstd, w, mean_grad, mean_grad_x_hat, grad_x):
    """grad_x = rstd * (g * w - mean_grad - x_hat * mean_grad_x_hat) over one channel's row
    (grad_z and grad_x may be the same array)."""
    for i in range(x.size):
        x_hat = (x[i] - mean) * rstd
        grad_x[i] = rstd * (grad_z[i] * w - mean_grad - x_hat * mean_grad_x_hat)


@numba.njit(parallel=True, **_jit)
def _group_norm_backward(grad_output, x, mean, rstd, weight, bias, silu, exact, grad_x,
                         sum_grad, sum_grad_x_hat):
    """Pass 1 writes g (the gradient at z, after SiLU's derivative) into grad_x and sums g and
    g * x_hat per channel; pass 2 turns g into the input gradient, in place. Shapes as in the
    forward; sum_grad, sum_grad_x_hat: (N, G, C/G) float64."""
    samples, groups, group_channels, size = x.shape
    count = group_channels * size
    for task in numba.prange(samples * groups):
        n, g = task // groups, task % groups
        group_mean, group_rstd = mean[n, g], rstd[n, g]
        group_sum, group_sum_x_hat = 0.0, 0.0  # of g_hat = g * w and of g_hat * x_hat
        for c in range(group_channels):
            w = weight[g, c]
            channel_sum, channel_sum_x_hat = _channel_grad_sums(
                grad_output[n, g, c], x[n, g, c], group_mean, group_rstd, w, bias[g, c], silu,
                exact, grad_x[n, g, c])
            sum_grad[n, g, c], sum_grad_x_hat[n, g, c] = channel_sum, channel_sum_x_hat
            group_sum += w * channel_sum
            group_sum_x_hat += w * channel_sum_x_hat
        mean_grad, mean_grad_x_hat = group_sum / count, group_sum_x_hat / count
        grad_z = grad_x if silu else grad_output
        for c in range(group_channels):
            _channel_grad_x(grad_z[n, g, c], x[n, g, c], group_mean, group_rstd, weight[g, c],
                            mean_grad, mean_grad_x_hat, grad_x[n, g, c])
    return grad_x


def _grouped(planes: np.ndarray, num_groups: int) -> np.ndarray:
    n, c, s = planes.shape
    return planes.reshape(n, num_groups, c // num_groups, s)


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
    _group_norm_forward(_grouped(planes, num_groups),
                        _vector(weight, c, 1.0).reshape(num_groups, -1),
                        _vector(bias, c, 0.0).reshape(num_groups, -1), float(eps), bool(silu),
                        x.dtype != np.float32, _grouped(y, num_groups), mean, rstd)
    return y.reshape(x.shape), mean, rstd


def group_norm_backward(grad_output: np.ndarray, x: np.ndarray, mean: np.ndarray,
                        rstd: np.ndarray, num_groups: int, weight, bias,
                        silu: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of group_norm_forward given its mean and rstd (N, G): grad_x (shape of x),
    grad_weight and grad_bias (C,), all in the dtype of x."""
    n, c = x.shape[:2]
    planes = _as_planes(x)
    grad_x = np.empty_like(planes)
    sums = np.empty((2, n, num_groups, c // num_groups))
    _group_norm_backward(_grouped(_as_planes(grad_output.astype(x.dtype, copy=False)),
                                  num_groups),
                         _grouped(planes, num_groups), np.ascontiguousarray(mean, np.float64),
                         np.ascontiguousarray(rstd, np.float64),
                         _vector(weight, c, 1.0).reshape(num_groups, -1),
                         _vector(bias, c, 0.0).reshape(num_groups, -1), bool(silu),
                         x.dtype != np.float32, _grouped(grad_x, num_groups), sums[0], sums[1])
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
    """out = exp(row - max) / sum, the sum in float64; exact as in _sigmoid. (Clamping the
    exponent at -EXP_LIMIT leaves every output within e^-40 of the true one.)"""
    largest = row[0]
    for i in range(1, row.size):
        largest = max(largest, row[i])
    total = 0.0
    for i in range(row.size):
        t = np.float64(row[i]) - largest
        e = math.exp(t) if exact else _exp_float32(t)
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
