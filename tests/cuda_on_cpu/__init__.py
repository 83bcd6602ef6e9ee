"""The CUDA backend without a GPU, for tests only: CUDA C run on CPU threads (runner.py, with the
header cuda_on_cpu.h) and a strict stand-in for CuPy's array (strict_array.py).

`device_backend(monkeypatch)` gives what the tests' `cuda_backend` fixture yields: the real
GPU (CuPy) where one can be used, else the stand-in installed as minigen's CuPy for the length
of one test. MINIGEN_CUDA_ON_CPU=1 takes the stand-in even on a GPU machine. What this cannot
prove is listed in CANNOT_CATCH.md beside this file.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from minigen import backend
from minigen import kernels as kernel_dispatch

from . import runner, strict_array


@dataclass(frozen=True)
class CudaBackend:
    """kernels: minigen.kernels.cuda; asarray: NumPy -> device array; asnumpy: back."""
    kernels: ModuleType
    asarray: Callable
    asnumpy: Callable
    on_gpu: bool


def forced() -> bool:
    return os.environ.get("MINIGEN_CUDA_ON_CPU", "") not in ("", "0")


def unavailable_reason() -> str | None:
    """None when the CUDA tests can run here (on a GPU or on the CPU runner), else why not."""
    if backend.cuda_status() is None and not forced():
        return None
    if not runner.compiler_available():
        return (f"no CUDA GPU can be used ({backend.cuda_status()}) and the CPU runner has no "
                f"C++ compiler ({runner.COMPILER} not found)")
    return None


def device_backend(monkeypatch) -> CudaBackend:
    """The GPU where there is one; else install the stand-in for the length of one test."""
    if backend.cuda_status() is None and not forced():
        import cupy
        from minigen.kernels import cuda
        return CudaBackend(cuda, cupy.asarray, cupy.asnumpy, on_gpu=True)
    if importlib.util.find_spec("cupy") is None:
        # minigen.kernels.cuda imports cupy; without CuPy installed the stand-in takes its name.
        monkeypatch.setitem(sys.modules, "cupy", strict_array.module)
    cuda = importlib.import_module("minigen.kernels.cuda")
    monkeypatch.setattr(cuda, "cupy", strict_array.module)
    cuda._module.cache_clear()
    monkeypatch.setattr(backend, "_cupy", strict_array.module)
    monkeypatch.setattr(backend, "_cupyx", strict_array.cupyx, raising=False)
    monkeypatch.setattr(backend, "cuda_status", lambda: None)
    monkeypatch.setitem(kernel_dispatch._BACKENDS, strict_array.ndarray.__module__.split(".")[0],
                        "cuda")
    monkeypatch.setattr(backend, "_generators", dict(backend._generators))
    return CudaBackend(cuda, strict_array.asarray, strict_array.asnumpy, on_gpu=False)
