"""The layers with weights (Linear, Conv2d, ConvTranspose2d, Embedding) and the simple
shape and regularisation modules (Dropout, Identity, Flatten, pooling, Upsample).

Weight layouts and default initialisations are PyTorch's, so a PyTorch state dict loads by
name and a fresh layer has the same weight statistics as its PyTorch twin.
"""
from __future__ import annotations

import numpy as np

from minigen import backend
from minigen import functional as F
from minigen.nn import init
from minigen.nn.module import Module, Parameter
from minigen.ops.elementwise import constant, where
from minigen.tensor import Tensor


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value


def empty_parameter(shape, device: str = "cpu", dtype=np.float32) -> Parameter:
    """A zero-filled Parameter, to be initialised by the layer's reset_parameters."""
    return Parameter(backend.xp_for(device).zeros(tuple(shape), dtype=dtype))


class Identity(Module):
    """Returns its input; a placeholder where an architecture has an optional layer."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x


class Linear(Module):
    """y = x W^T + b; weight (out_features, in_features), both U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: str = "cpu", dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = empty_parameter((out_features, in_features), device, dtype)
        self.register_parameter("bias", empty_parameter((out_features,), device, dtype)
                                if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # kaiming_uniform_ with a = sqrt(5) gives the bound 1/sqrt(fan_in), as PyTorch.
        init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            init.fan_in_uniform_(self.bias, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_features) -> (..., out_features)."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class _ConvNd(Module):
    """What Conv2d and ConvTranspose2d share: hyper-parameters, init and repr."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 groups, bias, weight_shape, device, dtype):
        super().__init__()
        for count, name in ((in_channels, "in_channels"), (out_channels, "out_channels")):
            if count % groups:
                raise ValueError(f"{type(self).__name__}: {name}={count} is not divisible by "
                                 f"groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.weight = empty_parameter(weight_shape + self.kernel_size, device, dtype)
        self.register_parameter("bias", empty_parameter((out_channels,), device, dtype)
                                if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's _ConvNd: fan_in from weight dim 1 (also for the transposed layout).
        init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            init.fan_in_uniform_(self.bias, fan_in)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if getattr(self, "output_padding", (0, 0)) != (0, 0):
            text += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + ("" if self.bias is not None else ", bias=False")


class Conv2d(_ConvNd):
    """2D cross-correlation; weight (out_channels, in_channels / groups, kH, kW)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, device: str = "cpu",
                 dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, (out_channels, in_channels // groups), device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class ConvTranspose2d(_ConvNd):
    """The gradient of Conv2d with respect to its input, used to upsample;
    weight (in_channels, out_channels / groups, kH, kW)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 device: str = "cpu", dtype=np.float32):
        self.output_padding = _pair(output_padding, "output_padding")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, (in_channels, out_channels // groups), device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H_out, W_out) with
        H_out = (H - 1) stride - 2 padding + dilation (kH - 1) + output_padding + 1."""
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class Embedding(Module):
    """A lookup table: integer ids (*) -> rows of weight (num_embeddings, embedding_dim), N(0, 1).

    The row at padding_idx starts at zero and receives no gradient, as in PyTorch.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 device: str = "cpu", dtype=np.float32):
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx={padding_idx} is outside "
                                 f"[0, {num_embeddings})")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.weight = empty_parameter((num_embeddings, embedding_dim), device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, ids) -> Tensor:
        """ids: integer Tensor or array of any shape (*) -> (*, embedding_dim)."""
        ids = ids.data if isinstance(ids, Tensor) else ids
        ids = backend.to_device(backend.array_module(ids).asarray(ids), self.weight.device)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Embedding: ids must be integers, got {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise IndexError(f"Embedding: ids must lie in [0, {self.num_embeddings}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        rows = self.weight[ids]
        if self.padding_idx is None:
            return rows
        keep = constant((ids != self.padding_idx)[..., None])
        return where(keep, rows, rows.detach())

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}"
        return text if self.padding_idx is None else text + f", padding_idx={self.padding_idx}"


class Dropout(Module):
    """Zeroes elements with probability p in training and scales the rest by 1 / (1 - p)."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p, self.inplace = p, inplace  # inplace only mirrors PyTorch's signature

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Flatten(Module):
    """Merges dims start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(AvgPool2d):
    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class Upsample(Module):
    """Nearest-neighbour upsampling by an integer scale factor."""

    def __init__(self, scale_factor=2, mode: str = "nearest"):
        super().__init__()
        self.scale_factor, self.mode = scale_factor, mode

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode='{self.mode}'"
