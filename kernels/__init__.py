"""minigen.kernels: array-in, array-out compute kernels, one backend per array library.

`for_array(x)` returns the backend module for the library that owns `x`: cpu.py (Numba and
NumPy's BLAS) for NumPy arrays, cuda/ (CUDA C through CuPy, cuBLAS) for CuPy arrays. Each
backend, and the NumPy oracle reference.py, exposes the same functions with the same
signatures. Backends are imported on first use, so Numba and CuPy load only when needed.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# Array library (the top-level module that defines the array type) -> backend submodule.
_BACKENDS = {"numpy": "cpu", "cupy": "cuda"}


_by_type: dict = {}  # array type -> its backend module, filled on first use


def for_array(array) -> ModuleType:
    """The kernel backend for `array`: minigen.kernels.cpu or minigen.kernels.cuda."""
    backend = _by_type.get(type(array))
    if backend is not None:
        return backend
    library = type(array).__module__.split(".")[0]
    if library not in _BACKENDS:
        raise TypeError(f"no kernel backend for arrays of type {type(array).__module__}."
                        f"{type(array).__name__}; pass a NumPy or CuPy array")
    backend = _by_type[type(array)] = importlib.import_module(f".{_BACKENDS[library]}", __name__)
    return backend
