"""Stand-ins for cupy.RawModule and cupy.RawKernel that compile CUDA C with the host's C++
compiler (g++ -fopenmp, and cuda_on_cpu.h for CUDA's execution model) and launch kernels on the
NumPy buffers behind strict_array.ndarray, with CuPy's call signature `kernel(grid, block, args)`.

Before a launch it checks what CuPy would pass to the GPU unchecked: each array's dtype against
the kernel's pointer type, each scalar's width against its parameter (CuPy passes a Python int
as a 64-bit integer and a float as a double), contiguity, and CUDA's grid and block limits.
Compiled libraries are cached by a digest of the source, the header and the flags.
MINIGEN_CUDA_ON_CPU_SANITIZE=address compiles with AddressSanitizer (the Python process must
then run with libasan preloaded; see test_cuda_on_cpu.py).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_on_cpu.h")
COMPILER = os.environ.get("CXX", "g++")

# CUDA's launch limits (compute capability 5.0 and newer).
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024

# What in a source needs its blocks' threads to run at once (see cuda_on_cpu.h).
_COOPERATIVE = re.compile(r"__shared__|__syncthreads|__syncwarp|__shfl|__ballot_sync|"
                          r"__any_sync|__all_sync|__activemask")
_EXTERN_C_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)')


class CompileError(RuntimeError):
    """The host compiler refused a source."""


class LaunchError(RuntimeError):
    """A launch that CuPy would have passed to the GPU, but that is wrong."""


def sanitizer() -> str | None:
    return os.environ.get("MINIGEN_CUDA_ON_CPU_SANITIZE") or None


def _cache_dir() -> Path:
    root = os.environ.get("MINIGEN_CUDA_ON_CPU_CACHE")
    path = Path(root) if root else Path(tempfile.gettempdir()) / f"minigen-cuda-on-cpu-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _flags(cooperative: bool) -> list[str]:
    flags = ["-std=c++17", "-O2", "-fopenmp", "-fPIC", "-shared", "-fvisibility=hidden",
             "-fno-fast-math", f"-DCUDA_ON_CPU_COOPERATIVE={int(cooperative)}"]
    if sanitizer():
        flags += [f"-fsanitize={sanitizer()}", "-fno-omit-frame-pointer", "-g"]
    return flags


def _translation_unit(source: str, kernels: list[str], filename: str) -> str:
    """The .cu source behind the header, and two exported C functions per kernel: its
    parameter description and its launcher."""
    exports = []
    for number, kernel in enumerate(kernels):
        exports.append(
            f'extern "C" __attribute__((visibility("default"))) const char* '
            f"cuda_on_cpu_signature_{number}() {{ return cuda_on_cpu::signature(&{kernel}); }}\n"
            f'extern "C" __attribute__((visibility("default"))) void '
            f"cuda_on_cpu_launch_{number}(const unsigned* grid, const unsigned* block, "
            f"void** args) {{ cuda_on_cpu::launch(&{kernel}, grid, block, args); }}\n")
    return (f'#include "{HEADER}"\n#line 1 "{filename}"\n{source}\n#line 1 "cuda_on_cpu exports"\n'
            + "".join(exports))


def compile_library(source: str, kernels: list[str], filename: str = "kernel.cu") -> Path:
    """Compile `source` into a shared library exporting `kernels` (C++ name expressions)."""
    cooperative = bool(_COOPERATIVE.search(source))
    if re.search(r"extern\s+__shared__", source):
        raise CompileError(f"{filename}: dynamic shared memory (extern __shared__) is not "
                           f"supported by the CPU runner; use a fixed-size __shared__ array")
    unit = _translation_unit(source, kernels, filename)
    flags = _flags(cooperative)
    digest = hashlib.sha256("\0".join([unit, HEADER.read_text(), COMPILER, *flags])
                            .encode()).hexdigest()[:24]
    library = _cache_dir() / f"{Path(filename).stem}-{digest}.so"
    if library.exists():
        return library
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as build:
        unit_path = Path(build) / "unit.cpp"
        unit_path.write_text(unit)
        output = Path(build) / library.name
        result = subprocess.run([COMPILER, *flags, str(unit_path), "-o", str(output)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"{filename}: {COMPILER} failed:\n{result.stderr}")
        os.replace(output, library)  # atomic: a parallel test worker may compile the same
    return library


def _dims(value, what: str, limits) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise LaunchError(f"{what} must be an int or a tuple of 1 to 3 ints, not {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, size, limit in zip("xyz", dims, limits):
        if not 1 <= size <= limit:
            raise LaunchError(f"{what}.{axis} = {size} is outside CUDA's limit 1..{limit}")
    return dims


def _as_scalar(value):
    """What CuPy passes for a scalar argument: NumPy scalars as they are, Python ints as int64,
    floats as float64, bools as bool."""
    if isinstance(value, np.generic):
        return value
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    return None


class RawKernel:
    """One kernel of a RawModule: `kernel(grid, block, args)` as with CuPy."""

    def __init__(self, library: ctypes.CDLL, number: int, name: str):
        self.name = name
        describe = getattr(library, f"cuda_on_cpu_signature_{number}")
        describe.restype = ctypes.c_char_p
        self.parameters = describe().decode().rstrip(",").split(",") if describe() else []
        self.parameters = [p for p in self.parameters if p]
        for parameter in self.parameters:
            if "unsupported" in parameter:
                raise LaunchError(f"{name}: a parameter of type {parameter!r} is not supported by "
                                  f"the CPU runner (pointers to and scalars of C number types)")
        self._launch = getattr(library, f"cuda_on_cpu_launch_{number}")
        self._launch.restype = None
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                 ctypes.POINTER(ctypes.c_void_p)]

    def __call__(self, grid, block, args, *, shared_mem: int = 0, stream=None,
                 enable_cooperative_groups: bool = False):
        grid = _dims(grid, f"{self.name}: grid", MAX_GRID)
        block = _dims(block, f"{self.name}: block", MAX_BLOCK)
        if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
            raise LaunchError(f"{self.name}: a block of {block} is more than CUDA's "
                              f"{MAX_THREADS_PER_BLOCK} threads")
        if shared_mem:
            raise LaunchError(f"{self.name}: dynamic shared memory is not supported by the CPU "
                              f"runner")
        if not isinstance(args, (tuple, list)):
            raise LaunchError(f"{self.name}: args must be a tuple, not {type(args).__name__}")
        if len(args) != len(self.parameters):
            raise LaunchError(f"{self.name}: takes {len(self.parameters)} arguments "
                              f"({', '.join(self.parameters)}), {len(args)} given")
        keep_alive, pointers = [], []
        for position, (parameter, arg) in enumerate(zip(self.parameters, args)):
            storage = self._argument(position, parameter, arg)
            keep_alive.append(storage)
            pointers.append(ctypes.cast(ctypes.pointer(storage), ctypes.c_void_p).value
                            if not isinstance(storage, np.ndarray) else storage.ctypes.data)
        arg_array = (ctypes.c_void_p * max(1, len(pointers)))(*pointers)
        self._launch((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), arg_array)
        del keep_alive

    def _argument(self, position: int, parameter: str, arg):
        """A buffer holding the value of one argument, checked against its parameter."""
        from .strict_array import ndarray

        where = f"{self.name}: argument {position} ({parameter})"
        if parameter.endswith("*"):
            if arg is None:
                return ctypes.c_void_p(0)
            if isinstance(arg, np.ndarray):
                raise LaunchError(f"{where} is a NumPy array; a kernel takes device arrays")
            if not isinstance(arg, ndarray):
                raise LaunchError(f"{where} is a {type(arg).__name__}, not a device array")
            host = arg._host
            expected = parameter.removeprefix("const ").rstrip("*")
            if host.dtype != np.dtype(expected):
                raise LaunchError(f"{where} is a {host.dtype} array")
            if not host.flags.c_contiguous:
                raise LaunchError(f"{where} is not C-contiguous (shape {host.shape}, strides "
                                  f"{host.strides}); the kernel would read it as if it were")
            if not parameter.startswith("const") and not host.flags.writeable:
                raise LaunchError(f"{where} is read-only")
            return ctypes.c_void_p(host.ctypes.data)
        scalar = _as_scalar(arg)
        if scalar is None:
            raise LaunchError(f"{where} is a {type(arg).__name__}; CuPy cannot pass it")
        if scalar.dtype != np.dtype(parameter):
            raise LaunchError(f"{where} is passed as {scalar.dtype} ({scalar.dtype.itemsize} "
                              f"bytes), but the kernel takes {parameter} "
                              f"({np.dtype(parameter).itemsize} bytes)")
        return np.array(scalar)


class RawModule:
    """cupy.RawModule(code=..., options=..., name_expressions=...) on the CPU."""

    def __init__(self, code: str | None = None, *, path: str | None = None, options=(),
                 backend: str = "nvrtc", translate_cucomplex: bool = False,
                 enable_cooperative_groups: bool = False, name_expressions=None,
                 jitify: bool = False):
        if code is None:
            code = Path(path).read_text()
        self.options = tuple(options)
        self.name_expressions = list(name_expressions or [])
        self._names = self.name_expressions + [name for name in _EXTERN_C_KERNEL.findall(code)
                                               if name not in self.name_expressions]
        filename = getattr(self, "filename", None) or "module.cu"
        self._library = ctypes.CDLL(str(compile_library(code, self._names, filename)))
        self._kernels: dict[str, RawKernel] = {}

    def get_function(self, name: str) -> RawKernel:
        if name not in self._names:
            raise LaunchError(f"no kernel {name!r} in this module; it has {self._names} (a "
                              f"template instance must be listed in name_expressions)")
        if name not in self._kernels:
            self._kernels[name] = RawKernel(self._library, self._names.index(name), name)
        return self._kernels[name]


def compiler_available() -> bool:
    return shutil.which(COMPILER) is not None
