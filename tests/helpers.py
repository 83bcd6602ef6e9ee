"""Helpers shared by the test files: random inputs, tolerances, the kernel test cases, and
the PyTorch cross-check of the autograd core (`assert_matches_torch`).

The conv, pool and upsample cases are named configurations that the CPU and the CUDA kernel
tests both run, so a failure reads the same on either device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import minigen
from minigen.kernels.geometry import output_hw

# Tolerances for comparing two implementations of the same float computation.
TOLERANCES = {np.dtype(np.float32): dict(rtol=1e-4, atol=1e-4),
              np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10)}


def assert_close(actual, expected, dtype=None) -> None:
    """Same shape, same dtype (when `dtype` is given) and equal within the dtype's tolerance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if dtype is not None:
        assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype} != {np.dtype(dtype)}"
    np.testing.assert_allclose(actual, expected, **TOLERANCES[np.dtype(dtype or actual.dtype)])


def random_array(rng: np.random.Generator, shape, dtype=np.float64) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def non_contiguous(array):
    """A view equal to `array` (NumPy or CuPy) that is neither C- nor F-contiguous (every
    other element along the last axis of a twice-as-wide array)."""
    xp = minigen.backend.array_module(array)
    wide = xp.zeros((*array.shape[:-1], 2 * array.shape[-1]), dtype=array.dtype)
    wide[..., ::2] = array
    view = wide[..., ::2]
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


@dataclass(frozen=True)
class ConvCase:
    """One conv2d configuration, in PyTorch's terms (ints or pairs)."""
    name: str
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: int | tuple = 3
    stride: int | tuple = 1
    padding: int | tuple = 0
    dilation: int | tuple = 1
    groups: int = 1

    @property
    def input_shape(self):
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *pair(self.kernel_size))

    @property
    def args(self):
        """(stride, padding, dilation, groups) as the kernels take them."""
        return pair(self.stride), pair(self.padding), pair(self.dilation), self.groups

    @property
    def output_shape(self):
        stride, padding, dilation, _ = self.args
        return (self.batch, self.out_channels,
                *output_hw((self.height, self.width), pair(self.kernel_size), stride, padding,
                           dilation))


CONV_CASES = [
    ConvCase("odd_sizes_3x3_padding_1", 2, 3, 5, 7, 9, padding=1),
    ConvCase("stride_2_padding_1", 2, 4, 6, 9, 8, stride=2, padding=1),
    ConvCase("kernel_1x1", 3, 5, 4, 6, 5, kernel_size=1),
    ConvCase("kernel_1x1_stride_2", 2, 4, 3, 7, 6, kernel_size=1, stride=2),
    ConvCase("kernel_1x1_groups_2", 2, 4, 6, 5, 3, kernel_size=1, groups=2),
    ConvCase("kernel_5x5_padding_2", 2, 3, 4, 11, 10, kernel_size=5, padding=2),
    ConvCase("dilation_2", 2, 3, 4, 10, 9, padding=2, dilation=2),
    ConvCase("batch_1", 1, 4, 4, 8, 8, padding=1),
    ConvCase("kernel_4x4_stride_2_padding_1", 3, 4, 5, 8, 8, kernel_size=4, stride=2,
             padding=1),
    ConvCase("groups_2", 2, 4, 6, 7, 7, padding=1, groups=2),
    ConvCase("depthwise", 2, 6, 6, 8, 8, padding=1, groups=6),
    ConvCase("rectangular_everything", 2, 3, 4, 9, 10, kernel_size=(3, 2), stride=(2, 1),
             padding=(1, 0), dilation=(1, 2)),
    ConvCase("no_padding_stride_3", 2, 2, 3, 10, 11, stride=3),
    ConvCase("padding_wider_than_input", 2, 2, 3, 1, 2, kernel_size=7, padding=3),
]


@dataclass(frozen=True)
class PoolCase:
    name: str
    input_shape: tuple
    kernel_size: int | tuple
    stride: int | tuple
    padding: int | tuple = 0

    @property
    def args(self):
        """(kernel_size, stride, padding) as the kernels take them."""
        return pair(self.kernel_size), pair(self.stride), pair(self.padding)

    @property
    def output_shape(self):
        return (*self.input_shape[:2], *output_hw(self.input_shape[2:], *self.args))


POOL_CASES = [
    PoolCase("2x2_stride_2", (2, 3, 8, 8), 2, 2),
    PoolCase("odd_sizes_2x2_stride_2", (2, 2, 7, 9), 2, 2),
    PoolCase("3x3_stride_2_padding_1", (2, 3, 9, 8), 3, 2, 1),
    PoolCase("overlapping_3x3_stride_1", (1, 2, 6, 7), 3, 1),
    PoolCase("rectangular", (2, 2, 9, 10), (3, 2), (2, 1), (1, 1)),
]

UPSAMPLE_CASES = [((2, 3, 4, 5), (2, 2)), ((1, 2, 3, 3), (3, 1)), ((2, 1, 5, 2), (1, 4))]


# ---- the autograd core against PyTorch -------------------------------------------------------
def import_torch():
    """torch, or a skip that says why the PyTorch cross-check cannot run here. TF32 is off, so
    float32 comparisons on a GPU are exact to float32 on the PyTorch side too (CuPy's default
    has it off; conftest.py keeps it so)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed; the cross-check needs "
                                                "it (pip install -e '.[dev]')")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _outputs(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def assert_matches_torch(minigen_fn, torch_fn, arrays, atol: float = 1e-9, rtol: float = 1e-7,
                         seed: int = 0) -> None:
    """Run the same op in minigen and in PyTorch on float64 copies of `arrays`; compare values,
    dtypes, and the gradients of a random weighting of the outputs for every float input.

    Integer and boolean arrays (labels, indices) are passed along without gradients.
    """
    torch = import_torch()
    arrays = [np.asarray(array) for array in arrays]
    arrays = [array.astype(np.float64) if array.dtype.kind == "f" else array for array in arrays]
    wants_grad = [array.dtype.kind == "f" for array in arrays]
    ours = [minigen.tensor(array.copy(), requires_grad=wants) for array, wants in zip(arrays, wants_grad)]
    theirs = [torch.tensor(array.copy(), requires_grad=wants) for array, wants in zip(arrays, wants_grad)]
    our_outputs, their_outputs = _outputs(minigen_fn(*ours)), _outputs(torch_fn(*theirs))
    assert len(our_outputs) == len(their_outputs), \
        f"minigen gave {len(our_outputs)} outputs, PyTorch {len(their_outputs)}"
    rng = np.random.default_rng(seed)
    our_total, their_total = 0, 0
    for index, (our, their) in enumerate(zip(our_outputs, their_outputs)):
        expected = their.detach().numpy()
        assert our.shape == expected.shape, \
            f"output {index}: shape {our.shape}, PyTorch gives {expected.shape}"
        assert our.dtype == expected.dtype, \
            f"output {index}: dtype {our.dtype}, PyTorch gives {expected.dtype}"
        np.testing.assert_allclose(our.detach().numpy(), expected, rtol=rtol, atol=atol,
                                   err_msg=f"output {index} differs from PyTorch's")
        if their.requires_grad:
            weight = rng.standard_normal(expected.shape)
            our_total = our_total + (our * minigen.tensor(weight)).sum()
            their_total = their_total + (their * torch.tensor(weight)).sum()
    if not any(wants_grad) or not torch.is_tensor(their_total):
        return
    their_total.backward()
    our_total.backward()
    for index, (our, their) in enumerate(zip(ours, theirs)):
        if not wants_grad[index]:
            continue
        expected = np.zeros(their.shape) if their.grad is None else their.grad.numpy()
        actual = np.zeros(our.shape) if our.grad is None else our.grad.numpy()
        assert actual.shape == expected.shape, \
            f"gradient of input {index}: shape {actual.shape}, PyTorch gives {expected.shape}"
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {index} differs from PyTorch's")
