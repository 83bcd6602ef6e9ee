"""Normalisation layers: GroupNorm, BatchNorm2d (and BatchNorm1d), LayerNorm.

Each holds its affine weight (ones) and bias (zeros) and calls the op of the same name in
minigen/ops/norm.py. BatchNorm also keeps running statistics as buffers (running_mean,
running_var, num_batches_tracked), saved in the state dict under PyTorch's names.
"""
from __future__ import annotations

import numpy as np

from minigen import backend
from minigen.nn import init
from minigen.nn.layers import empty_parameter
from minigen.nn.module import Module
from minigen.ops.norm import batch_norm, group_norm, layer_norm
from minigen.tensor import Tensor


class _AffineNorm(Module):
    """The affine weight (ones) and bias (zeros) every normalisation layer holds, either of
    them switchable off."""

    def _register_affine(self, shape: tuple, affine: bool, bias: bool, device: str,
                         dtype) -> None:
        self.register_parameter("weight", empty_parameter(shape, device, dtype)
                                if affine else None)
        self.register_parameter("bias", empty_parameter(shape, device, dtype)
                                if affine and bias else None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)


class GroupNorm(_AffineNorm):
    """Normalise groups of num_channels / num_groups channels per sample; weight, bias (C,).

    activation="silu" makes the layer SiLU(GroupNorm(x)), one fused pass when fusion is on
    (the U-Net's blocks); the parameters and their state-dict names are PyTorch's either way.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: str = "cpu", dtype=np.float32, *, bias: bool = True,
                 activation: str | None = None):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by "
                             f"num_groups={num_groups}")
        if activation not in (None, "silu"):
            raise ValueError(f"GroupNorm: activation must be None or 'silu', not {activation!r}")
        self.num_groups, self.num_channels, self.eps, self.affine = \
            num_groups, num_channels, eps, affine
        self.activation = activation
        self._register_affine((num_channels,), affine, bias, device, dtype)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C, *) -> same shape."""
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                          activation=self.activation)

    def extra_repr(self) -> str:
        activation = "" if self.activation is None else f", activation={self.activation!r}"
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None or not self.affine}{activation}")


class _BatchNorm(_AffineNorm):
    """Batch statistics in training, running statistics in eval (or when not tracked)."""

    expected_dims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: str = "cpu",
                 dtype=np.float32, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self._register_affine((num_features,), affine, bias, device, dtype)
        if track_running_stats:
            xp = backend.xp_for(device)
            self.register_buffer("running_mean", Tensor(xp.zeros(num_features, dtype=dtype)))
            self.register_buffer("running_var", Tensor(xp.ones(num_features, dtype=dtype)))
            self.register_buffer("num_batches_tracked", Tensor(xp.zeros((), dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        super().reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C, *) -> same shape."""
        if x.ndim not in self.expected_dims:
            raise ValueError(f"{type(self).__name__}: expected an input of "
                             f"{' or '.join(map(str, self.expected_dims))} dims, got shape {x.shape}")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # a cumulative moving average, as PyTorch
                momentum = 1.0 / float(self.num_batches_tracked.data)
        # Without running statistics (track_running_stats=False, where they are None) the
        # batch's own statistics normalise in eval too.
        use_batch_stats = self.training or not self.track_running_stats
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          use_batch_stats, momentum, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None or not self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs per channel."""

    expected_dims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs per channel."""

    expected_dims = (2, 3)


class LayerNorm(_AffineNorm):
    """Normalise over the trailing normalized_shape dims; weight (ones) and bias (zeros) of
    that shape."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device: str = "cpu", dtype=np.float32):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) \
            else tuple(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self._register_affine(self.normalized_shape, elementwise_affine, bias, device, dtype)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """x (*, *normalized_shape) -> same shape."""
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None or not self.elementwise_affine}")
