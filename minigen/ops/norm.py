"""Normalisation ops: group_norm, batch_norm and layer_norm, all built on one op, Standardize.

Standardize maps x to x_hat = (x - mean) / sqrt(var + eps) over some axes. Its backward is the
compact dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) written in Tensor ops, so that with
create_graph=True (gradient penalties through a U-Net) second derivatives follow. The affine
part (weight, bias per channel) is ordinary broadcasting arithmetic. When
minigen.fusion_enabled(), group_norm (with its optional SiLU) and batch_norm run as one fused
op each instead (fused_norm.py); these composed versions stay the readable definition.
"""
from __future__ import annotations

from minigen import backend
from minigen.fusion import fusion_enabled
from minigen.ops import fused_norm
from minigen.ops.activations import silu
from minigen.ops.elementwise import constant
from minigen.ops.reduce import mean
from minigen.tensor import Function, Tensor, is_grad_enabled, no_grad


class Standardize(Function):
    """x_hat = (x - mean) * rstd with rstd = 1 / sqrt(var + eps), mean and biased var over axes.

    After forward, `self.mean` and `self.var` hold the batch statistics (arrays, keepdims) so
    that batch_norm can update its running estimates without computing them again.
    """

    def __init__(self, axes: tuple, eps: float):
        self.axes, self.eps = tuple(axes), eps

    def forward(self, x):
        xp = backend.array_module(x)
        self.mean = x.mean(axis=self.axes, keepdims=True)
        centred = x - self.mean
        self.var = (centred * centred).mean(axis=self.axes, keepdims=True)
        self.rstd = 1 / xp.sqrt(self.var + self.eps)
        return centred * self.rstd

    def _rstd(self) -> Tensor:
        """rstd as a constant, or, when the backward itself is being recorded (second order),
        as a differentiable function of the input."""
        if not is_grad_enabled():
            return constant(self.rstd)
        x = self.inputs[0]
        centred = x - mean(x, self.axes, keepdim=True)
        return (mean(centred * centred, self.axes, keepdim=True) + self.eps) ** -0.5

    def backward(self, grad_output):
        x_hat = self.output_tensors()[0]  # carries a graph to x when recorded
        rstd = self._rstd()
        grad_mean = mean(grad_output, self.axes, keepdim=True)
        projection = mean(grad_output * x_hat, self.axes, keepdim=True)
        return (grad_output - grad_mean - x_hat * projection) * rstd


def _channel_shape(x: Tensor) -> tuple:
    """(1, C, 1, ...) for broadcasting a per-channel vector over an (N, C, ...) input."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None, shape: tuple) -> Tensor:
    out = x_hat if weight is None else x_hat * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


def _check_channels(name: str, x: Tensor, weight, bias, channels: int, what: str) -> None:
    for label, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.numel() != channels:
            raise ValueError(f"{name}: {label} has shape {tensor.shape} but the input (shape "
                             f"{x.shape}) has {channels} {what}")


def _fused(x: Tensor) -> bool:
    """Whether x goes to the fused kernels: fusion on, float32 or float64, and no empty
    group or channel (an empty batch is fine)."""
    return fusion_enabled() and x.dtype.char in "fd" and all(size > 0 for size in x.shape[1:])


def _or_constant(tensor: Tensor | None, x: Tensor, fill: float) -> Tensor:
    """`tensor`, or a constant (C,) vector of `fill` in x's dtype and device where it is None."""
    if tensor is not None:
        return tensor
    return constant(backend.array_module(x.data).full(x.shape[1], fill, dtype=x.dtype))


def group_norm(x: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5, *,
               activation: str | None = None) -> Tensor:
    """Normalise each group of C / num_groups channels of each sample (Wu and He, 2018).

    x: (N, C, *); weight, bias: (C,). Returns the shape of x. activation="silu" applies SiLU
    to the result, in the same fused pass when fusion is on (the U-Net's GroupNorm -> SiLU).
    """
    if x.ndim < 2 or x.shape[1] % num_groups:
        raise ValueError(f"group_norm: {x.shape[1] if x.ndim > 1 else 'no'} channels (input "
                         f"shape {x.shape}) cannot be split into {num_groups} groups")
    if activation not in (None, "silu"):
        raise ValueError(f"group_norm: activation must be None or 'silu', not {activation!r}")
    _check_channels("group_norm", x, weight, bias, x.shape[1], "channels")
    if _fused(x):
        return fused_norm.GroupNormActivation(num_groups, eps, activation == "silu")(
            x, _or_constant(weight, x, 1.0), _or_constant(bias, x, 0.0))
    grouped = x.reshape(x.shape[0], num_groups, -1)
    x_hat = Standardize((2,), eps)(grouped).reshape(x.shape)
    out = _affine(x_hat, weight, bias, _channel_shape(x))
    return silu(out) if activation == "silu" else out


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing dims `normalized_shape` (Ba et al., 2016).

    x: (*, *normalized_shape); weight, bias: normalized_shape.
    """
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) \
        else tuple(normalized_shape)
    count = len(normalized_shape)
    if tuple(x.shape[x.ndim - count:]) != normalized_shape:
        raise ValueError(f"layer_norm: input shape {x.shape} does not end with "
                         f"normalized_shape {normalized_shape}")
    for label, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tuple(tensor.shape) != normalized_shape:
            raise ValueError(f"layer_norm: {label} has shape {tensor.shape}, expected "
                             f"{normalized_shape}")
    x_hat = Standardize(tuple(range(x.ndim - count, x.ndim)), eps)(x)
    return _affine(x_hat, weight, bias, normalized_shape)


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel over the batch and spatial dims (Ioffe and Szegedy, 2015).

    x: (N, C, *); running_mean, running_var, weight, bias: (C,). In training the batch
    statistics are used and the running ones updated in place, as PyTorch does:
    running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance.
    Out of training the running statistics normalise and nothing is updated.
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected an (N, C, ...) input, got shape {x.shape}")
    channels = x.shape[1]
    _check_channels("batch_norm", x, weight, bias, channels, "channels")
    _check_channels("batch_norm", x, running_mean, running_var, channels, "channels")
    shape = _channel_shape(x)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are needed when "
                             "training=False (or pass training=True to use batch statistics)")
        if _fused(x):
            return _fused_batch_norm(x, running_mean, running_var, weight, bias, False,
                                     momentum, eps)
        xp = backend.array_module(x.data)
        rstd = 1 / xp.sqrt(running_var.data.reshape(shape) + eps)
        x_hat = (x - constant(running_mean.data.reshape(shape))) * constant(rstd.astype(x.dtype))
        return _affine(x_hat, weight, bias, shape)
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.numel() // channels
    if count < 2:
        raise ValueError(f"batch_norm: training needs more than one value per channel, got "
                         f"input shape {x.shape}")
    if _fused(x):
        return _fused_batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    standardize = Standardize(axes, eps)
    x_hat = standardize(x)
    if running_mean is not None and running_var is not None:
        with no_grad():
            batch_mean = standardize.mean.reshape(-1)
            unbiased_var = standardize.var.reshape(-1) * (count / (count - 1))
            running_mean.data *= 1 - momentum
            running_mean.data += momentum * batch_mean.astype(running_mean.dtype)
            running_var.data *= 1 - momentum
            running_var.data += momentum * unbiased_var.astype(running_var.dtype)
    return _affine(x_hat, weight, bias, shape)


def _fused_batch_norm(x: Tensor, running_mean, running_var, weight, bias, training: bool,
                      momentum: float, eps: float) -> Tensor:
    arrays = [None if t is None else t.data for t in (running_mean, running_var)]
    return fused_norm.BatchNorm(*arrays, training, momentum, eps)(
        x, _or_constant(weight, x, 1.0), _or_constant(bias, x, 0.0))
