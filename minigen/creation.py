"""Creating tensors with PyTorch's names: tensor, zeros, ones, full, randn, rand, randint,
arange and the *_like forms. Random ones draw from the device's default generator."""
from __future__ import annotations

import numpy as np

from minigen import backend
from minigen.tensor import Tensor

float32, float64, int64, int32, bool_ = np.float32, np.float64, np.int64, np.int32, np.bool_


def _shape(shape) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)


def tensor(data, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """A new tensor from a list, scalar or array (float32 for Python floats)."""
    if isinstance(data, Tensor):
        data = data.data
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def zeros(*shape, dtype=float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.xp_for(device).zeros(_shape(shape), dtype=dtype), requires_grad)


def ones(*shape, dtype=float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.xp_for(device).ones(_shape(shape), dtype=dtype), requires_grad)


def full(shape, fill_value, dtype=float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return Tensor(backend.xp_for(device).full(_shape((shape,)), fill_value, dtype=dtype), requires_grad)


def randn(*shape, dtype=float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """Standard normal samples from the device's default generator (see manual_seed)."""
    return Tensor(backend.generator(device).normal(_shape(shape), dtype), requires_grad)


def rand(*shape, dtype=float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    return Tensor(backend.generator(device).uniform(_shape(shape), dtype), requires_grad)


def randint(low: int, high: int, shape, device: str = "cpu") -> Tensor:
    return Tensor(backend.generator(device).integers(low, high, _shape((shape,))))


def arange(start, end=None, step=1, dtype=None, device: str = "cpu") -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        dtype = int64 if all(isinstance(v, int) for v in (start, end, step)) else float32
    return Tensor(backend.xp_for(device).arange(start, end, step, dtype=dtype))


def zeros_like(x: Tensor, dtype=None) -> Tensor:
    return zeros(x.shape, dtype=dtype or x.dtype, device=x.device)


def ones_like(x: Tensor, dtype=None) -> Tensor:
    return ones(x.shape, dtype=dtype or x.dtype, device=x.device)


def randn_like(x: Tensor) -> Tensor:
    return randn(x.shape, dtype=x.dtype, device=x.device)


def rand_like(x: Tensor) -> Tensor:
    return rand(x.shape, dtype=x.dtype, device=x.device)
