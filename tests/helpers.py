"""Helpers shared by the test files: random inputs, tolerances, the kernel test cases, and
the PyTorch cross-check of the autograd core (`assert_matches_torch`).

The conv, pool and upsample cases are named configurations that the CPU and the CUDA kernel
tests both run, so a failure reads the same on either device.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigen


# ---- the autograd core against PyTorch -------------------------------------------------------
def import_torch():
    """torch, or a skip that says why the PyTorch cross-check cannot run here."""
    return pytest.importorskip("torch", reason="PyTorch is not installed; the cross-check needs "
                                               "it (pip install -e '.[dev]')")


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
