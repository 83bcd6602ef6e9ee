"""Gradient clipping, as torch.nn.utils: clip_grad_norm_ (by the global norm of all gradients)
and clip_grad_value_. Both replace each `.grad` with a new array rather than scaling in place,
because a gradient array can be shared with other tensors of the graph."""
from __future__ import annotations

import math
from typing import Iterable

from minigen import backend, kernels
from minigen.fusion import fusion_enabled
from minigen.tensor import Tensor


def _with_grads(parameters) -> list[Tensor]:
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """Scale all gradients by min(1, max_norm / (total_norm + 1e-6)).

    total_norm is the norm_type-norm of all gradients taken together (inf: the largest
    absolute value). Returns total_norm (a 0-d Tensor), computed before clipping.
    """
    params = _with_grads(parameters)
    if not params:
        return Tensor(0.0)
    xp = backend.array_module(params[0].grad.data)
    norm_type = float(norm_type)
    grads = [p.grad.data for p in params]
    if fusion_enabled() and norm_type > 0 and len({type(g) for g in grads}) == 1:
        return _fused_clip(grads, params, max_norm, norm_type, error_if_nonfinite)
    if math.isinf(norm_type):
        largest = [xp.abs(grad).max() for grad in grads if grad.size]
        total = xp.max(xp.stack(largest)) if largest else xp.zeros((), dtype=grads[0].dtype)
    else:
        per_param = [(xp.abs(p.grad.data.astype(xp.float64)) ** norm_type).sum() for p in params]
        total = xp.sum(xp.stack(per_param)) ** (1.0 / norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the "
                           "gradients is non-finite; pass error_if_nonfinite=False to clip anyway")
    coefficient = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for param in params:
        grad = param.grad.data
        param.grad = Tensor(grad * coefficient.astype(grad.dtype))
    return Tensor(total.astype(params[0].grad.dtype))


def _fused_clip(grads: list, params: list, max_norm: float, norm_type: float,
                error_if_nonfinite: bool) -> Tensor:
    """clip_grad_norm_ in two multi-tensor kernels: the norm, then the scaling."""
    xp = backend.array_module(grads[0])
    backend_kernels = kernels.for_array(grads[0])
    total = backend_kernels.grad_norm(grads, norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the "
                           "gradients is non-finite; pass error_if_nonfinite=False to clip anyway")
    coefficient = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for param, grad in zip(params, backend_kernels.scale_grads(grads, coefficient)):
        param.grad = Tensor(grad)
    return Tensor(total.astype(grads[0].dtype))


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value]."""
    for param in _with_grads(parameters):
        xp = backend.array_module(param.grad.data)
        param.grad = Tensor(xp.clip(param.grad.data, -clip_value, clip_value))
