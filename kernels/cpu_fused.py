"""Fused CPU kernels for the work between the convolutions: bias + activation and its gradient,
and the one-pass parameter updates (SGD, Adam / AdamW, EMA, gradient-norm clipping).

Each function has the signature of its NumPy oracle in reference.py. The updates are
multi-tensor kernels, PyTorch's `foreach` / `fused` idea: one Numba call walks every parameter
of a model, cut into chunks of CHUNK elements that the threads share, so small and large
tensors alike use every core and Python is paid once per step, not once per tensor and
operation. The tensors reach the kernel as a table of addresses (`_addresses`); their arrays
stay referenced by the caller for the whole call. Parameters whose arrays are not C-contiguous
(rare: a model never makes them) go through the reference code instead.
"""
from __future__ import annotations

import functools
import math
import weakref

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)
from . import reference
from .geometry import check_grad_output_4d
from .reference import ACTIVATIONS, check_activation

_jit = dict(nogil=True, cache=True)
CHUNK = 1 << 15  # elements per work item of a multi-tensor kernel: 128 KiB of float32
# Below this many elements bias_act runs the reference code: waking threads would cost more
# than the work, and the reference gives the same bits. So does a bias along the last axis (a
# linear layer's) with an activation, where NumPy's broadcast add over rows is faster than this
# loop nest; without one, _bias_rows adds it.
PARALLEL_MIN = 1 << 14
ROW_MIN = 1 << 10  # without a bias, x is cut into rows of at least this many elements
# Each Numba thread a call uses gets at least this many elements. Waking a sleeping worker costs
# microseconds on an idle machine and whole scheduler time slices on a busy one (a 130,000-
# element pass took 16 ms on two threads there against 12 us on one), so smaller calls stay on
# the calling thread. Since OpenMP's threads spin between loops (kernels/cpu.py) they are
# awake for the passes between two convolutions, and a pass on fewer threads than the loops
# around it cost more than its work (a U-Net's 64x32x8x8 conv bias: 122 us with one thread of
# two, 80 with both; at 2^17 elements per thread the 8x8 step took 74 ms against 68-71).
ELEMENTS_PER_THREAD = 1 << 13


class _Threads:
    """`with _Threads(elements):` runs the Numba calls inside on as many threads as `elements`
    pays for, at most the current numba.get_num_threads(), which it restores after."""

    __slots__ = ("wanted", "previous")

    def __init__(self, elements: int):
        self.previous = numba.get_num_threads()
        self.wanted = max(1, min(self.previous, elements // ELEMENTS_PER_THREAD))

    def __enter__(self):
        if self.wanted != self.previous:
            numba.set_num_threads(self.wanted)

    def __exit__(self, *exc_info):
        if self.wanted != self.previous:
            numba.set_num_threads(self.previous)


def _by_reference(x: np.ndarray, bias, dim: int, act: str) -> bool:
    return x.size < PARALLEL_MIN or (_along_rows(x, bias, dim) and act != "linear")


def _along_rows(x: np.ndarray, bias, dim: int) -> bool:
    """Whether the bias runs along the last axis (a linear layer's): the rows kernels."""
    return bias is not None and dim == x.ndim - 1
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
LINEAR, RELU, LEAKY_RELU, SILU = (ACTIVATION_CODES[name] for name in ACTIVATIONS)


# ---------------------------------------------------------------------------------------
# Bias + activation: x viewed as (outer, C, inner), the bias along C
# ---------------------------------------------------------------------------------------
# The arithmetic runs in the arrays' dtype, on constants of that dtype (`zero`, `one`, `half`,
# `alpha`), in the order of reference.py, so the results are the oracle's to the bit. SiLU's
# tanh is NumPy's: its SIMD tanh is ~20x faster than the scalar libm call a Numba loop makes.
@numba.njit(parallel=True, **_jit)
def _bias_act_forward(x, bias, y, act, alpha, zero):
    """y[n, c, i] = act(x[n, c, i] + bias[c]) for linear, relu, leaky_relu; z for silu, which
    _silu_finish completes; one sample n (all its channels) per loop iteration."""
    outer, channels, inner = x.shape
    for n in numba.prange(outer):
        for c in range(channels):
            b = bias[c]
            for i in range(inner):
                z = x[n, c, i] + b
                if act == RELU:
                    z = z if z > zero else zero
                elif act == LEAKY_RELU:
                    z = z if z > zero else z * alpha
                y[n, c, i] = z
    return y


@numba.njit(parallel=True, **_jit)
def _silu_finish(z, tanh_half_z, y, one, half):
    """y = z sigmoid(z), with sigmoid(z) = (tanh(z / 2) + 1) / 2 given as tanh(z / 2)."""
    for i in numba.prange(z.size):
        y[i] = z[i] * ((tanh_half_z[i] + one) * half)
    return y


@numba.njit(parallel=True, **_jit)
def _bias_act_backward(grad_output, x, bias, tanh_half_z, grad_x, act, alpha, zero, one, half):
    """grad_x = grad_output * act'(x + bias) for relu, leaky_relu and silu (tanh_half_z:
    tanh(z / 2)); one sample n per loop iteration."""
    outer, channels, inner = x.shape
    for n in numba.prange(outer):
        for c in range(channels):
            b = bias[c]
            for i in range(inner):
                z = x[n, c, i] + b
                grad = grad_output[n, c, i]
                if act == RELU:
                    grad = grad if z > zero else zero
                elif act == LEAKY_RELU:
                    grad = grad if z > zero else grad * alpha
                elif act == SILU:
                    s = (tanh_half_z[n, c, i] + one) * half
                    grad = grad * s * (one + z * (one - s))
                grad_x[n, c, i] = grad
    return grad_x


@numba.njit(parallel=True, **_jit)
def _bias_rows(x, bias, y):
    """y[r, c] = x[r, c] + bias[c]: a bias along the last axis, the rows shared by the threads
    (attention's (32, 64, 192) projection: 119 us as NumPy's broadcast add)."""
    for r in numba.prange(x.shape[0]):
        for c in range(x.shape[1]):
            y[r, c] = x[r, c] + bias[c]
    return y


@numba.njit(parallel=True, **_jit)
def _column_sums(rows, partials):
    """partials[k, c] = sum over block k of the rows of rows[r, c], in float64; the blocks (as
    many as partials has) shared by the threads."""
    blocks = partials.shape[0]
    for k in numba.prange(blocks):
        for r in range(k * rows.shape[0] // blocks, (k + 1) * rows.shape[0] // blocks):
            for c in range(rows.shape[1]):
                partials[k, c] += rows[r, c]
    return partials


# Reassociation lets the sums vectorise; they are float64, so their order hardly shows.
@numba.njit(parallel=True, fastmath={"reassoc"}, **_jit)
def _channel_sums(grad_x, row_sums):
    """row_sums[n, c] = sum_i grad_x[n, c, i] in float64; one sample n per loop iteration."""
    outer, channels, inner = grad_x.shape
    for n in numba.prange(outer):
        for c in range(channels):
            row, total = grad_x[n, c], 0.0  # a row of its own: indexed from 0, no gathers
            for i in range(row.size):
                total += np.float64(row[i])
            row_sums[n, c] = total
    return row_sums


def _three_axes(shape, dim: int) -> tuple:
    """(outer, C, inner) for a bias along axis `dim` of an array of `shape`."""
    outer = int(np.prod(shape[:dim], dtype=np.int64))
    inner = int(np.prod(shape[dim + 1:], dtype=np.int64))
    return outer, shape[dim], inner


def _row_length(shape) -> int:
    """The elements of the fewest trailing axes of `shape` that hold at least ROW_MIN (all of
    them for a smaller array): rows that long, which the threads share."""
    inner, axis = 1, len(shape)
    while axis > 0 and inner < ROW_MIN:
        axis -= 1
        inner *= shape[axis]
    return inner


def _layout(x: np.ndarray, bias, dim: int):
    """x as a contiguous (outer, C, inner) array and a bias of C elements (zeros for None)."""
    if bias is None:  # rows of _row_length elements
        shape = (1, 1, -1) if x.size == 0 else (-1, 1, _row_length(x.shape))
        return np.ascontiguousarray(x).reshape(shape), np.zeros(1, dtype=x.dtype)
    if not 0 <= dim < x.ndim or x.shape[dim] != bias.shape[0]:
        raise ValueError(f"bias_act: bias of shape {bias.shape} does not fit axis {dim} of an "
                         f"input of shape {x.shape}")
    return (np.ascontiguousarray(x).reshape(_three_axes(x.shape, dim)),
            np.ascontiguousarray(bias, dtype=x.dtype))


def _constants(dtype, alpha: float) -> tuple:
    """alpha, zero, one, half in `dtype`."""
    typed = dtype.type
    return typed(alpha), typed(0), typed(1), typed(0.5)


def _tanh_half(z3: np.ndarray) -> np.ndarray:
    """tanh(z / 2), NumPy's vectorised tanh."""
    out = np.multiply(z3, z3.dtype.type(0.5))
    return np.tanh(out, out=out)


def bias_act_forward(x: np.ndarray, bias: np.ndarray | None, dim: int, act: str,
                     alpha: float) -> np.ndarray:
    """y = act(x + bias), bias (C,) along axis `dim` (None: no bias); see reference.py."""
    check_activation(act)
    if _by_reference(x, bias, dim, act):
        return reference.bias_act_forward(x, bias, dim, act, alpha)
    if _along_rows(x, bias, dim) and act == "linear":
        rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
        with _Threads(rows.size):
            y = _bias_rows(rows, np.ascontiguousarray(bias, dtype=x.dtype), np.empty_like(rows))
        return y.reshape(x.shape)
    x3, bias = _layout(x, bias, dim)
    alpha, zero, one, half = _constants(x3.dtype, alpha)
    y = np.empty_like(x3)
    if y.size:
        code = ACTIVATION_CODES[act]
        with _Threads(y.size):
            _bias_act_forward(x3, bias, y, code, alpha, zero)
            if code == SILU:
                _silu_finish(y.reshape(-1), _tanh_half(y).reshape(-1), y.reshape(-1), one, half)
    return y.reshape(x.shape)


def bias_act_backward(grad_output: np.ndarray, x: np.ndarray, bias: np.ndarray | None,
                      dim: int, act: str, alpha: float):
    """(grad_x, grad_bias or None): the gradients of bias_act_forward, in one pass."""
    check_activation(act)
    if _by_reference(x, bias, dim, act):
        return reference.bias_act_backward(grad_output, x, bias, dim, act, alpha)
    if _along_rows(x, bias, dim) and act == "linear":  # the identity's gradient, and its sum
        grad_x = np.ascontiguousarray(grad_output, dtype=x.dtype)
        rows = grad_x.reshape(-1, x.shape[-1])
        partials = np.zeros((2 * numba.get_num_threads(), rows.shape[1]))
        with _Threads(rows.size):
            _column_sums(rows, partials)
        return grad_x.reshape(x.shape), partials.sum(axis=0).astype(bias.dtype)
    x3, bias3 = _layout(x, bias, dim)
    alpha, zero, one, half = _constants(x3.dtype, alpha)
    grad3 = np.ascontiguousarray(grad_output, dtype=x.dtype).reshape(x3.shape)
    code = ACTIVATION_CODES[act]
    if code == LINEAR:
        grad_x = grad3  # the identity's gradient: the incoming one, shared as Add's is
    else:
        grad_x = np.empty_like(x3)
        if grad_x.size:
            tanh_half_z = x3
            with _Threads(x3.size):
                if code == SILU:
                    z = x3 if bias is None else _bias_act_forward(x3, bias3, np.empty_like(x3),
                                                                  LINEAR, alpha, zero)
                    tanh_half_z = _tanh_half(z)
                _bias_act_backward(grad3, x3, bias3, tanh_half_z, grad_x, code, alpha, zero,
                                   one, half)
    if bias is None:
        return grad_x.reshape(x.shape), None
    return grad_x.reshape(x.shape), _channel_totals(grad_x, bias.dtype)


def _channel_totals(array3: np.ndarray, dtype) -> np.ndarray:
    """A contiguous (outer, C, inner) array summed over all but its channels, in float64:
    (C,) of `dtype` (a bias's gradient)."""
    row_sums = np.zeros(array3.shape[:2], dtype=np.float64)
    if array3.size:
        with _Threads(array3.size):
            _channel_sums(array3, row_sums)
    return row_sums.sum(axis=0).astype(dtype)


# ---------------------------------------------------------------------------------------
# A convolution's bias: added in place to its output, and its gradient
# ---------------------------------------------------------------------------------------
def add_channel_bias(y: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """y[:, c] += bias[c], in place where y (N, C, ...) is C-contiguous (a convolution's fresh
    output, which no one else holds: one array fewer than a separate bias_act, though the pass
    over memory costs the same), else into a contiguous copy; returns the result."""
    if y.size == 0:
        return y
    y = np.ascontiguousarray(y)
    y3 = y.reshape(_three_axes(y.shape, 1))
    alpha, zero, _, _ = _constants(y.dtype, 0.0)
    with _Threads(y.size):
        _bias_act_forward(y3, np.ascontiguousarray(bias, dtype=y.dtype), y3, LINEAR, alpha, zero)
    return y


def conv2d_backward_bias(grad_output: np.ndarray) -> np.ndarray:
    """grad_output (N, C, H, W) summed over all but the channels, in float64: (C,) of its
    dtype (see reference.py)."""
    check_grad_output_4d("conv2d_backward_bias", grad_output)
    grad3 = np.ascontiguousarray(grad_output).reshape(_three_axes(grad_output.shape, 1))
    return _channel_totals(grad3, grad_output.dtype)


# ---------------------------------------------------------------------------------------
# a + b of large arrays: the residual and time-embedding adds, the gradients' sums
# ---------------------------------------------------------------------------------------
@numba.njit(parallel=True, **_jit)
def _add_rows(a, b, out):
    """out[r, i] = a[r, i] + b[r, i], or with b of one column b[r, 0]; rows on the threads."""
    for r in numba.prange(a.shape[0]):
        if b.shape[1] == 1:
            value = b[r, 0]
            for i in range(a.shape[1]):
                out[r, i] = a[r, i] + value
        else:
            for i in range(a.shape[1]):
                out[r, i] = a[r, i] + b[r, i]
    return out


def _as_rows(large: np.ndarray, small: np.ndarray):
    """(large, small) as (R, L) and (R, L or 1) arrays when small is large's shape, or large's
    leading axes followed by ones (a per-(n, c) value of an NCHW array); else None."""
    if small.shape == large.shape:
        inner = _row_length(large.shape)
        return large.reshape(-1, inner), small.reshape(-1, inner)
    lead = small.ndim
    while lead > 0 and small.shape[lead - 1] == 1:
        lead -= 1
    if (small.ndim == large.ndim and 0 < lead < large.ndim
            and small.shape[:lead] == large.shape[:lead]):
        return large.reshape(math.prod(large.shape[:lead]), -1), small.reshape(-1, 1)
    return None


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b as NumPy's, on the threads for large contiguous arrays of one float dtype of the
    same shape or with one of them per-(n, c) (see _as_rows); the same bits either way."""
    large, small = (a, b) if a.size >= b.size else (b, a)
    if not (large.size >= PARALLEL_MIN and a.dtype == b.dtype and a.dtype.kind == "f"
            and a.flags.c_contiguous and b.flags.c_contiguous):
        return a + b
    rows = _as_rows(large, small)
    if rows is None:
        return a + b
    out = np.empty_like(large)
    with _Threads(large.size):
        _add_rows(*rows, out.reshape(rows[0].shape))  # a + b = b + a, to the bit
    return out


# ---------------------------------------------------------------------------------------
# Multi-tensor tables: the arrays' addresses and the chunks the threads share
# ---------------------------------------------------------------------------------------
@intrinsic
def _pointer(typingctx, address, like):
    """The int64 `address` as a pointer to elements of `like`'s dtype."""
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))
    return pointer(types.int64, like), codegen


@numba.njit(inline="always")
def _tensor(addresses, t, stop, like):
    """Tensor t of a table, as a 1-d array of its first `stop` elements."""
    return numba.carray(_pointer(addresses[t], like), (stop,))


@functools.lru_cache(maxsize=64)
def _chunks(sizes: tuple) -> np.ndarray:
    """(tensor, start, stop) rows covering every tensor of `sizes` in pieces of <= CHUNK."""
    rows = [(t, start, min(start + CHUNK, size)) for t, size in enumerate(sizes)
            for start in range(0, size, CHUNK)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


# Address tables of the arrays that live across steps (parameters, optimizer states, EMA
# shadows), by the arrays' ids: `array.ctypes.data` costs microseconds per array, a model has
# hundreds, and these tables are asked for every step. Weak references (and the sizes) prove
# that an entry's arrays are still the same ones.
_TABLES: dict = {}
TABLES_KEPT = 64


def _addresses(arrays, lasting: bool = False) -> np.ndarray:
    """The data addresses of `arrays` as int64; lasting=True: remembered for the next call."""
    if not lasting:
        return np.array([array.ctypes.data for array in arrays], dtype=np.int64)
    key = tuple(map(id, arrays))
    entry = _TABLES.get(key)
    if entry is not None and all(ref() is array and array.size == size for ref, size, array
                                 in zip(entry[0], entry[1], arrays)):
        return entry[2]
    table = np.array([array.ctypes.data for array in arrays], dtype=np.int64)
    if len(_TABLES) >= TABLES_KEPT:
        _TABLES.pop(next(iter(_TABLES)))
    _TABLES[key] = ([weakref.ref(array) for array in arrays], [array.size for array in arrays],
                    table)
    return table


def _fast(*lists) -> tuple[list, list]:
    """Split the indices of a multi-tensor call: those whose arrays (one from each list, None
    entries ignored) are C-contiguous and of the dtype of the first fast one go to the kernel,
    the rest to the reference code."""
    fast, slow = [], []
    for index, first in enumerate(lists[0]):
        dtype = lists[0][fast[0]].dtype if fast else first.dtype
        usable = dtype in (np.float32, np.float64) and all(
            arrays[index] is None or (arrays[index].flags.c_contiguous
                                      and arrays[index].dtype == dtype) for arrays in lists)
        (fast if usable else slow).append(index)
    return fast, slow


def _like(array) -> np.ndarray:
    """An empty array that tells a kernel the element type behind the addresses."""
    return np.empty(0, dtype=array.dtype)


def _pick(arrays, indices) -> list:
    return [arrays[i] for i in indices]


# ---------------------------------------------------------------------------------------
# Parameter updates
# ---------------------------------------------------------------------------------------
@numba.njit(parallel=True, **_jit)
def _sgd_kernel(params, grads, buffers, chunks, first, like, lr, momentum, one_minus_dampening,
                weight_decay, use_momentum, nesterov, maximize):
    for k in numba.prange(chunks.shape[0]):
        t, start, stop = chunks[k, 0], chunks[k, 1], chunks[k, 2]
        param, grad = _tensor(params, t, stop, like), _tensor(grads, t, stop, like)
        buffer = _tensor(buffers, t, stop, like) if use_momentum else param
        for i in range(start, stop):
            # Loads first, stores last: the tensors come as raw addresses, which the compiler
            # cannot prove apart, so values are not re-read after each store.
            p, g = param[i], grad[i]
            g = -g if maximize else g
            if weight_decay != 0:
                g = g + weight_decay * p
            if use_momentum:
                b = g if first[t] else buffer[i] * momentum + one_minus_dampening * g
                buffer[i] = b
                g = g + momentum * b if nesterov else b
            param[i] = p - lr * g


def sgd_update(params: list, grads: list, momentum_buffers: list, first_steps: list,
               lr: float, momentum: float, dampening: float, weight_decay: float,
               nesterov: bool, maximize: bool) -> None:
    """One SGD step over every parameter in one parallel pass; see reference.sgd_update."""
    buffers = momentum_buffers if momentum else [None] * len(params)
    first_steps = first_steps if momentum else [False] * len(params)
    grads = [np.asarray(g) for g in grads]
    fast, slow = _fast(params, grads, buffers)
    if slow:
        reference.sgd_update(_pick(params, slow), _pick(grads, slow), _pick(buffers, slow),
                             _pick(first_steps, slow), lr, momentum, dampening, weight_decay,
                             nesterov, maximize)
    if not fast:
        return
    params, grads, buffers = (_pick(a, fast) for a in (params, grads, buffers))
    typed = params[0].dtype.type
    table = _addresses(params, lasting=True)
    with _Threads(sum(a.size for a in params)):
        _sgd_kernel(table, _addresses(grads),
                    _addresses(buffers, lasting=True) if momentum else table,
                    _chunks(tuple(p.size for p in params)),
                    np.array(_pick(first_steps, fast), dtype=np.bool_), _like(params[0]),
                    typed(lr), typed(momentum), typed(1 - dampening), typed(weight_decay),
                    bool(momentum), bool(nesterov), bool(maximize))


@numba.njit(parallel=True, **_jit)
def _adam_kernel(params, grads, exp_avgs, exp_avg_sqs, max_sqs, chunks, step_sizes,
                 bias_correction2_sqrts, like, decay_factor, one_minus_beta1, beta2,
                 one_minus_beta2, eps, weight_decay, decoupled, amsgrad, maximize):
    for k in numba.prange(chunks.shape[0]):
        t, start, stop = chunks[k, 0], chunks[k, 1], chunks[k, 2]
        param, grad = _tensor(params, t, stop, like), _tensor(grads, t, stop, like)
        exp_avg, exp_avg_sq = _tensor(exp_avgs, t, stop, like), _tensor(exp_avg_sqs, t, stop, like)
        max_sq = _tensor(max_sqs, t, stop, like) if amsgrad else exp_avg_sq
        step_size, correction = step_sizes[t], bias_correction2_sqrts[t]
        for i in range(start, stop):
            p, g, m, v = param[i], grad[i], exp_avg[i], exp_avg_sq[i]  # loads first, as in SGD
            g = -g if maximize else g
            if weight_decay != 0:
                if decoupled:
                    p = p * decay_factor
                else:
                    g = g + weight_decay * p
            # The same operations in the same order as the unfused optimizer: equal bits.
            m = m + one_minus_beta1 * (g - m)
            v = v * beta2 + one_minus_beta2 * g * g
            second = v
            if amsgrad:
                largest = max_sq[i]
                if v > largest or np.isnan(v):
                    largest = v
                max_sq[i] = largest
                second = largest
            exp_avg[i], exp_avg_sq[i] = m, v
            param[i] = p - step_size * (m / (np.sqrt(second) / correction + eps))


def adam_update(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                max_exp_avg_sqs: list | None, steps: list, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, decoupled: bool, amsgrad: bool,
                maximize: bool) -> None:
    """One Adam / AdamW step over every parameter in one parallel pass; see
    reference.adam_update."""
    max_sqs = max_exp_avg_sqs if amsgrad else [None] * len(params)
    grads = [np.asarray(g) for g in grads]
    fast, slow = _fast(params, grads, exp_avgs, exp_avg_sqs, max_sqs)
    if slow:
        reference.adam_update(_pick(params, slow), _pick(grads, slow), _pick(exp_avgs, slow),
                              _pick(exp_avg_sqs, slow), _pick(max_sqs, slow) if amsgrad else None,
                              _pick(steps, slow), lr, beta1, beta2, eps, weight_decay, decoupled,
                              amsgrad, maximize)
    if not fast:
        return
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = (
        _pick(a, fast) for a in (params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps))
    dtype = params[0].dtype
    typed = dtype.type
    # Per tensor, as the unfused step computes them in Python floats, then rounded to dtype.
    step_sizes = np.array([lr / (1 - beta1 ** step) for step in steps], dtype=dtype)
    corrections = np.array([(1 - beta2 ** step) ** 0.5 for step in steps], dtype=dtype)
    squares = _addresses(exp_avg_sqs, lasting=True)
    with _Threads(sum(a.size for a in params)):
        _adam_kernel(_addresses(params, lasting=True), _addresses(grads),
                     _addresses(exp_avgs, lasting=True), squares,
                     _addresses(max_sqs, lasting=True) if amsgrad else squares,
                     _chunks(tuple(p.size for p in params)), step_sizes, corrections,
                     _like(params[0]), typed(1 - lr * weight_decay), typed(1 - beta1),
                     typed(beta2), typed(1 - beta2), typed(eps), typed(weight_decay),
                     bool(decoupled), bool(amsgrad), bool(maximize))


@numba.njit(parallel=True, **_jit)
def _ema_kernel(shadows, params, chunks, like, one_minus_decay):
    for k in numba.prange(chunks.shape[0]):
        t, start, stop = chunks[k, 0], chunks[k, 1], chunks[k, 2]
        shadow, param = _tensor(shadows, t, stop, like), _tensor(params, t, stop, like)
        for i in range(start, stop):
            value = shadow[i]
            shadow[i] = value - one_minus_decay * (value - param[i])


def ema_update(shadows: list, params: list, decay: float) -> None:
    """shadow -= (1 - decay)(shadow - param) for every pair, in one parallel pass."""
    fast, slow = _fast(shadows, params)
    if slow:
        reference.ema_update(_pick(shadows, slow), _pick(params, slow), decay)
    if not fast:
        return
    shadows, params = _pick(shadows, fast), _pick(params, fast)
    with _Threads(sum(a.size for a in shadows)):
        _ema_kernel(_addresses(shadows, lasting=True), _addresses(params, lasting=True),
                    _chunks(tuple(s.size for s in shadows)),
                    _like(shadows[0]), shadows[0].dtype.type(1 - decay))


@numba.njit(fastmath={"reassoc"}, **_jit)
def _sum_of_squares(grad, start, stop):
    """sum g^2 over grad[start:stop] in float64. A loop of its own, reassociated, so that it
    vectorises (with the power's branches inside, the loop over 0.7 M gradients took 0.42 ms,
    where NumPy's float32 dot takes 0.15)."""
    part, total = grad[start:stop], 0.0
    for i in range(part.size):  # from 0: no wrap-around of negative indices to check
        value = np.float64(part[i])
        total += value * value
    return total


@numba.njit(parallel=True, **_jit)
def _norm_partials(grads, chunks, like, power, partials):
    """partials[k] = sum |g|^power over chunk k (power 2: g*g; inf: the largest |g|)."""
    for k in numba.prange(chunks.shape[0]):
        t, start, stop = chunks[k, 0], chunks[k, 1], chunks[k, 2]
        grad = _tensor(grads, t, stop, like)
        if power == 2.0:
            partials[k] = _sum_of_squares(grad, start, stop)
            continue
        total = 0.0
        for i in range(start, stop):
            value = abs(np.float64(grad[i]))
            if np.isinf(power):
                if value > total or np.isnan(value):
                    total = value
            else:
                total += value ** power
        partials[k] = total


def grad_norm(grads: list, norm_type: float) -> np.ndarray:
    """The norm_type-norm of all gradients together (0-d float64), in one parallel pass."""
    grads = [np.ascontiguousarray(g) for g in grads if g.size]
    if not grads:
        return np.zeros((), dtype=np.float64)
    total = np.zeros((), dtype=np.float64)
    for dtype in {g.dtype for g in grads}:
        group = [g for g in grads if g.dtype == dtype]
        chunks = _chunks(tuple(g.size for g in group))
        partials = np.empty(chunks.shape[0], dtype=np.float64)
        with _Threads(sum(a.size for a in group)):
            _norm_partials(_addresses(group), chunks, _like(group[0]), float(norm_type),
                           partials)
        total = np.maximum(total, partials.max()) if np.isinf(norm_type) \
            else total + partials.sum()
    return total if np.isinf(norm_type) else np.asarray(total ** (1.0 / norm_type))


@numba.njit(parallel=True, **_jit)
def _scale_kernel(grads, outs, chunks, like, coefficient):
    for k in numba.prange(chunks.shape[0]):
        t, start, stop = chunks[k, 0], chunks[k, 1], chunks[k, 2]
        grad = _tensor(grads, t, stop, like)[start:stop]  # from 0: no wrap-around, no gathers
        out = _tensor(outs, t, stop, like)[start:stop]
        for i in range(grad.size):
            out[i] = grad[i] * coefficient


def scale_grads(grads: list, coefficient) -> list:
    """grad * coefficient (cast to the gradient's dtype) for each gradient, as new arrays."""
    grads = [np.ascontiguousarray(g) for g in grads]
    outs = [np.empty_like(g) for g in grads]
    for dtype in {g.dtype for g in grads}:
        indices = [i for i, g in enumerate(grads) if g.dtype == dtype and g.size]
        if not indices or dtype not in (np.float32, np.float64):
            for i in (i for i, g in enumerate(grads) if g.dtype == dtype):
                outs[i] = reference.scale_grads([grads[i]], coefficient)[0]
            continue
        group, targets = _pick(grads, indices), _pick(outs, indices)
        with _Threads(sum(a.size for a in group)):
            _scale_kernel(_addresses(group), _addresses(targets),
                          _chunks(tuple(g.size for g in group)),
                          _like(group[0]), dtype.type(np.asarray(coefficient).astype(dtype)))
    return outs
