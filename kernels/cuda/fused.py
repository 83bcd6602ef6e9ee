"""The fused CUDA kernels of fused.cu, with the signatures of reference.py's fused section:
bias + activation forward and backward, and the SGD, Adam / AdamW, EMA and gradient-clipping
updates.

The updates take lists of arrays, as the CPU's multi-tensor kernels do, and launch one fused
kernel per tensor (the unfused step launched about ten per tensor), on a contiguous copy of a
strided tensor, written back after; the norm of clipping leaves one partial sum per block in
one device array and never waits for the host.
"""
from __future__ import annotations

import sys

import numpy as np

from ..reference import ACTIVATIONS, check_activation
from . import MAX_BLOCKS, THREADS_PER_BLOCK, _kernel, _launch

FILE = "fused.cu"
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}


def _cupy():
    """CuPy as kernels/cuda/__init__.py holds it (where a test stand-in may replace it)."""
    return sys.modules[__package__].cupy


def _blocks(total: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-total // THREADS_PER_BLOCK)))


def _run_blocks(kernel: str, dtype, blocks: int, *args) -> None:
    """Run `kernel<T>` on exactly `blocks` blocks of THREADS_PER_BLOCK threads (the
    reductions, whose block count the caller needs); ints are passed as long long."""
    function = _kernel(FILE, kernel, dtype)
    function((blocks,), (THREADS_PER_BLOCK,),
             tuple(np.int64(arg) if isinstance(arg, (int, np.integer)) else arg for arg in args))


def _writable(cupy, *arrays) -> list:
    """Contiguous arrays for a kernel to update in place: the arrays themselves, or copies of
    strided ones, which _write_back returns to where they came from."""
    return [a if a is None or a.flags.c_contiguous else cupy.ascontiguousarray(a) for a in arrays]


def _write_back(originals, updated) -> None:
    for original, copy in zip(originals, updated):
        if copy is not original:
            original[...] = copy


def _geometry(shape, bias, dim: int) -> tuple:
    """(outer, C, inner) of a bias along axis `dim`; (1, 1, size) without a bias."""
    size = int(np.prod(shape, dtype=np.int64))
    if bias is None:
        return 1, 1, size
    if not 0 <= dim < len(shape) or shape[dim] != bias.shape[0]:
        raise ValueError(f"bias_act: bias of shape {bias.shape} does not fit axis {dim} of an "
                         f"input of shape {tuple(shape)}")
    outer = int(np.prod(shape[:dim], dtype=np.int64))
    return outer, shape[dim], size // max(outer * shape[dim], 1)


def bias_act_forward(x, bias, dim: int, act: str, alpha: float):
    """y = act(x + bias), bias (C,) along axis `dim` (None: no bias); see reference.py."""
    cupy = _cupy()
    check_activation(act)
    x = cupy.ascontiguousarray(x)
    _, channels, inner = _geometry(x.shape, bias, dim)
    bias = x if bias is None else cupy.ascontiguousarray(bias, dtype=x.dtype)
    y = cupy.empty_like(x)
    _launch(FILE, "bias_act_forward", x.dtype, x.size, x, bias, y, x.size, channels, inner,
            ACTIVATION_CODES[act], x.dtype.type(alpha), int(bias is not x))
    return y


def bias_act_backward(grad_output, x, bias, dim: int, act: str, alpha: float):
    """(grad_x, grad_bias or None): the gradients of bias_act_forward."""
    cupy = _cupy()
    check_activation(act)
    x = cupy.ascontiguousarray(x)
    grad_output = cupy.ascontiguousarray(grad_output, dtype=x.dtype)
    outer, channels, inner = _geometry(x.shape, bias, dim)
    has_bias = bias is not None
    bias_array = cupy.ascontiguousarray(bias, dtype=x.dtype) if has_bias else x
    grad_x = cupy.empty_like(x)
    _launch(FILE, "bias_act_backward_input", x.dtype, x.size, grad_output, x, bias_array,
            grad_x, x.size, channels, inner, ACTIVATION_CODES[act], x.dtype.type(alpha),
            int(has_bias))
    if not has_bias:
        return grad_x, None
    grad_bias = cupy.empty(channels, dtype=x.dtype)
    _run_blocks("bias_grad", x.dtype, min(channels, MAX_BLOCKS), grad_x, grad_bias, outer,
                channels, inner)
    return grad_x, grad_bias.astype(bias.dtype, copy=False)


def sgd_update(params: list, grads: list, momentum_buffers: list, first_steps: list,
               lr: float, momentum: float, dampening: float, weight_decay: float,
               nesterov: bool, maximize: bool) -> None:
    """One SGD step over every parameter, one kernel per tensor; see reference.sgd_update."""
    cupy = _cupy()
    for index, (param, grad) in enumerate(zip(params, grads)):
        typed = param.dtype.type
        grad = cupy.ascontiguousarray(grad, dtype=param.dtype)
        originals = (param, momentum_buffers[index] if momentum else None)
        work, buffer = _writable(cupy, *originals)
        _launch(FILE, "sgd_update", param.dtype, param.size, work, grad,
                work if buffer is None else buffer, param.size, typed(lr), typed(momentum),
                typed(1 - dampening), typed(weight_decay), int(bool(momentum)),
                int(bool(momentum) and first_steps[index]), int(nesterov), int(maximize))
        _write_back(originals, (work, buffer))


def adam_update(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                max_exp_avg_sqs: list | None, steps: list, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, decoupled: bool, amsgrad: bool,
                maximize: bool) -> None:
    """One Adam / AdamW step over every parameter, one kernel per tensor; see
    reference.adam_update."""
    cupy = _cupy()
    for index, (param, grad) in enumerate(zip(params, grads)):
        typed, step = param.dtype.type, steps[index]
        grad = cupy.ascontiguousarray(grad, dtype=param.dtype)
        originals = (param, exp_avgs[index], exp_avg_sqs[index],
                     max_exp_avg_sqs[index] if amsgrad else None)
        work = _writable(cupy, *originals)
        _launch(FILE, "adam_update", param.dtype, param.size, work[0], grad, work[1], work[2],
                work[3] if amsgrad else work[2], param.size, typed(1 - lr * weight_decay),
                typed(1 - beta1), typed(beta2), typed(1 - beta2), typed(eps), typed(weight_decay),
                typed(lr / (1 - beta1 ** step)), typed((1 - beta2 ** step) ** 0.5),
                int(decoupled), int(amsgrad), int(maximize))
        _write_back(originals, work)


def ema_update(shadows: list, params: list, decay: float) -> None:
    """shadow -= (1 - decay)(shadow - param) for every pair, one kernel per tensor."""
    cupy = _cupy()
    for shadow, param in zip(shadows, params):
        param = cupy.ascontiguousarray(param, dtype=shadow.dtype)
        (work,) = _writable(cupy, shadow)
        _launch(FILE, "ema_update", shadow.dtype, shadow.size, work, param, shadow.size,
                shadow.dtype.type(1 - decay))
        _write_back((shadow,), (work,))


def grad_norm(grads: list, norm_type: float):
    """The norm_type-norm of all gradients together, a 0-d float64 device array."""
    cupy = _cupy()
    grads = [cupy.ascontiguousarray(g) for g in grads if g.size]
    if not grads:
        return cupy.zeros((), dtype=np.float64)
    blocks = [_blocks(g.size) for g in grads]
    partials = cupy.empty(sum(blocks), dtype=np.float64)
    start = 0
    for grad, count in zip(grads, blocks):
        _run_blocks("norm_partials", grad.dtype, count, grad, grad.size, float(norm_type),
                    partials[start:start + count])
        start += count
    if np.isinf(norm_type):
        return partials.max()
    return partials.sum() ** (1.0 / norm_type)


def scale_grads(grads: list, coefficient) -> list:
    """grad * coefficient (cast to the gradient's dtype) for each gradient, as new arrays."""
    cupy = _cupy()
    coefficient = cupy.asarray(coefficient, dtype=np.float64).reshape(1)
    outs = []
    for grad in grads:
        grad = cupy.ascontiguousarray(grad)
        out = cupy.empty_like(grad)
        _launch(FILE, "scale_into", grad.dtype, grad.size, grad, out, grad.size, coefficient)
        outs.append(out)
    return outs
