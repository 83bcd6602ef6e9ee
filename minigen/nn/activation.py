"""Activation functions as modules (ReLU, LeakyReLU, SiLU, GELU, Tanh, Sigmoid, Softplus), so
that they can sit in a Sequential. Each calls the op of the same name in minigen.functional."""
from __future__ import annotations

from minigen import functional as F
from minigen.nn.module import Module
from minigen.tensor import Tensor


class ReLU(Module):
    """max(x, 0). `inplace` is accepted for PyTorch compatibility and has no effect."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class LeakyReLU(Module):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class SiLU(Module):
    """x * sigmoid(x) (also called swish)."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class GELU(Module):
    """x * Phi(x), exact (erf) or with the tanh approximation."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate='{self.approximate}'"


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class Softplus(Module):
    """log(1 + e^x)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x)
