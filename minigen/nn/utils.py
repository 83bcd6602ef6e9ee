"""As torch.nn.utils: gradient clipping, clip_grad_norm_ (by the global norm of all gradients)
and clip_grad_value_, and spectral_norm (Miyato et al. 2018) with remove_spectral_norm. The
clippers replace each `.grad` with a new array rather than scaling in place, because a gradient
array can be shared with other tensors of the graph (on the CPU clip_grad_norm_ leaves the
gradients as they are when none needs clipping)."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

import minigen
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
    if not _unchanged(xp, coefficient):
        for param in params:
            grad = param.grad.data
            param.grad = Tensor(grad * coefficient.astype(grad.dtype))
    return Tensor(total.astype(params[0].grad.dtype))


def _unchanged(xp, coefficient) -> bool:
    """Whether scaling by `coefficient` leaves every gradient as it is: a coefficient of 1 on
    the CPU (x * 1 is x, bit for bit, NaN and infinities too). On a GPU the scaling runs
    anyway: asking the device for the value would wait for it, as PyTorch's clipping avoids."""
    return xp is np and float(coefficient) == 1.0


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
    if not _unchanged(xp, coefficient):
        for param, grad in zip(params, backend_kernels.scale_grads(grads, coefficient)):
            param.grad = Tensor(grad)
    return Tensor(total.astype(grads[0].dtype))


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value]."""
    for param in _with_grads(parameters):
        xp = backend.array_module(param.grad.data)
        param.grad = Tensor(xp.clip(param.grad.data, -clip_value, clip_value))


# --- spectral normalization ------------------------------------------------------------------
class SpectralNorm:
    """The forward pre-hook of spectral_norm: weight = weight_orig / sigma(weight_orig), with
    sigma estimated by power iteration on the persistent buffers weight_u and weight_v."""

    def __init__(self, name: str, n_power_iterations: int, dim: int, eps: float):
        self.name, self.n_power_iterations, self.dim, self.eps = name, n_power_iterations, dim, eps

    def matrix(self, weight: Tensor) -> Tensor:
        """The weight as a (size along dim, everything else) matrix."""
        if self.dim != 0:
            order = [self.dim] + [axis for axis in range(weight.ndim) if axis != self.dim]
            weight = weight.permute(*order)
        return weight.reshape(weight.shape[0], -1)

    def _normalize(self, vector):
        xp = backend.array_module(vector)
        return vector / xp.maximum(xp.linalg.norm(vector), self.eps)

    def compute_weight(self, module, do_power_iteration: bool) -> Tensor:
        weight = getattr(module, self.name + "_orig")
        u, v = getattr(module, self.name + "_u"), getattr(module, self.name + "_v")
        matrix = self.matrix(weight)
        if do_power_iteration:
            # u and v are constants of the graph (no gradient flows into the estimate), and are
            # written in place, so the next step continues from where this one stopped.
            for _ in range(self.n_power_iterations):
                v.data[...] = self._normalize(matrix.data.T @ u.data)
                u.data[...] = self._normalize(matrix.data @ v.data)
        u_now, v_now = Tensor(u.data.copy()), Tensor(v.data.copy())
        sigma = (u_now * (matrix @ v_now)).sum()
        return weight / sigma

    def __call__(self, module, args) -> None:
        object.__setattr__(module, self.name, self.compute_weight(module, module.training))


def spectral_norm(module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None):
    """Spectral normalization (Miyato et al. 2018) with PyTorch's behaviour
    (torch.nn.utils.spectral_norm): the parameter `name` becomes `name_orig`, and before each
    forward `name` = name_orig / sigma, sigma = u^T W v the largest singular value of W (the
    weight as a (shape[dim], -1) matrix) estimated by n_power_iterations of power iteration in
    training mode (none in eval mode). u (shape[dim],) and v are persistent buffers `name_u`
    and `name_v`, so they are saved in state dicts and checkpoints. dim: 1 for a transposed
    convolution, else 0. Returns the module.
    """
    from minigen.nn.layers import ConvTranspose2d  # the layers import this file
    from minigen.nn.module import Parameter

    if any(isinstance(hook, SpectralNorm) and hook.name == name
           for hook in module._forward_pre_hooks.values()):
        raise RuntimeError(f"spectral_norm: '{name}' of {type(module).__name__} is already "
                           "spectrally normalized")
    weight = module._parameters.get(name)
    if weight is None:
        raise ValueError(f"spectral_norm: {type(module).__name__} has no parameter '{name}'; "
                         f"pass the name of a weight, e.g. name='weight'")
    if dim is None:
        dim = 1 if isinstance(module, ConvTranspose2d) else 0
    hook = SpectralNorm(name, n_power_iterations, dim, eps)
    rows, columns = hook.matrix(weight).shape
    device, dtype = weight.device, weight.dtype
    u = hook._normalize(minigen.randn(rows, dtype=dtype, device=device).data)
    v = hook._normalize(minigen.randn(columns, dtype=dtype, device=device).data)
    del module._parameters[name]
    module.register_parameter(name + "_orig", Parameter(weight.data, weight.requires_grad))
    module.register_buffer(name + "_u", Tensor(u))
    module.register_buffer(name + "_v", Tensor(v))
    object.__setattr__(module, name, Tensor(weight.data))
    module.register_forward_pre_hook(hook)
    return module


def remove_spectral_norm(module, name: str = "weight"):
    """Undo spectral_norm: `name` becomes a Parameter again, holding the normalized weight."""
    from minigen.nn.module import Parameter

    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, SpectralNorm) and hook.name == name:
            weight = hook.compute_weight(module, do_power_iteration=False)
            del module._forward_pre_hooks[key]
            for suffix in ("_orig", "_u", "_v"):
                delattr(module, name + suffix)
            module.__dict__.pop(name, None)
            module.register_parameter(name, Parameter(weight.data.copy()))
            return module
    raise ValueError(f"spectral_norm of '{name}' not found in {type(module).__name__}")
