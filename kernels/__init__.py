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


# array type -> (library, backend name, backend module), filled on first use; an entry counts
# only while _BACKENDS still maps its library so (tests swap a stand-in library in and out).
_by_type: dict = {}


def for_array(array) -> ModuleType:
    """The kernel backend for `array`: minigen.kernels.cpu or minigen.kernels.cuda."""
    entry = _by_type.get(type(array))
    if entry is not None and _BACKENDS.get(entry[0]) == entry[1]:
        return entry[2]
    library = type(array).__module__.split(".")[0]
    if library not in _BACKENDS:
        raise TypeError(f"no kernel backend for arrays of type {type(array).__module__}."
                        f"{type(array).__name__}; pass a NumPy or CuPy array")
    backend = importlib.import_module(f".{_BACKENDS[library]}", __name__)
    _by_type[type(array)] = (library, _BACKENDS[library], backend)
    return backend
