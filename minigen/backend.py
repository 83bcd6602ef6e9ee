"""The one place that knows about NumPy versus CuPy.

Everything else in minigen asks `array_module(x)` for the module that owns an array and
writes `xp.` calls that both libraries understand. Devices are named "cpu" and "cuda".
The default random generators (one per device) live here too, seeded by `manual_seed`.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata

import numpy as np

try:  # CuPy is optional: the `cuda` extra.
    import cupy as _cupy
    import cupyx as _cupyx
except Exception as _error:  # pragma: no cover - depends on the machine
    _cupy = _cupyx = None
    _cupy_import_error = _error
else:
    _cupy_import_error = None

DEVICES = ("cpu", "cuda")


def cuda_status() -> str | None:
    """None when CUDA can be used, else one sentence saying what is missing."""
    return _status_of(_cupy)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _load_cublas(cupy) -> None:
    """Load cuBLAS as CuPy's matmul will (CuPy 13 and 14 keep its binding here)."""
    importlib.import_module("cupy_backends.cuda.libs.cublas")


def _cupy_package() -> str:
    """The installed CuPy wheel's name (cupy-cuda12x, cupy-cuda13x, ...), for the hint."""
    for distribution in importlib.metadata.distributions():
        name = (distribution.metadata["Name"] or "").lower()
        if name.startswith("cupy-cuda"):
            return name
    return "cupy-cuda12x"


@functools.lru_cache(maxsize=None)
def _status_of(cupy) -> str | None:
    """What a GPU run needs: CuPy, a device, NVRTC (the kernels are compiled at run time) and
    cuBLAS (every matmul and convolution); None when all are there."""
    if cupy is None:
        # minigen is installed from its source tree (the name on the package index is
        # another project's), so the hint is the editable install of the clone's extra.
        return (f"CuPy is not installed ({_first_line(_cupy_import_error)}); on a machine with an "
                "NVIDIA GPU, pip install -e '.[cuda]' from the minigen clone (CUDA 12; "
                "'.[cuda13]' for CUDA 13)")
    missing, libraries_missing = [], False
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            missing.append("this machine has no CUDA GPU")
    except Exception as error:
        missing.append(f"no CUDA GPU can be used ({_first_line(error)})")
    for library, load in (("NVRTC", lambda: cupy.cuda.nvrtc.getVersion()),
                          ("cuBLAS", lambda: _load_cublas(cupy))):
        try:
            load()
        except Exception as error:
            missing.append(f"{library} cannot be loaded ({_first_line(error)})")
            libraries_missing = True
    if not missing:
        return None
    listed = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
    fix = (f"; pip install '{_cupy_package()}[ctk]' brings CuPy's CUDA libraries"
           if libraries_missing else "; a GPU run needs an NVIDIA GPU and its driver")
    return f"CuPy cannot run here: {listed}{fix}"


def cuda_available() -> bool:
    return cuda_status() is None


def check_device(device: str) -> str:
    """Normalise a device name and fail clearly if it cannot be used here."""
    device = str(device)
    if device.startswith("cuda"):
        device = "cuda"
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    if device == "cuda":
        problem = cuda_status()
        if problem is not None:
            raise RuntimeError(f"device 'cuda' was asked for, but {problem}")
    return device


def xp_for(device: str):
    """The array module for a device name."""
    return _cupy if check_device(device) == "cuda" else np


def array_module(array):
    """numpy or cupy, whichever owns `array` (NumPy for scalars and lists)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy
    return np


def device_of(array) -> str:
    return "cuda" if array_module(array) is not np else "cpu"


def to_device(array, device: str):
    """Move an array to a device; returns the same array when it is already there."""
    device = check_device(device)
    if device == "cuda":
        return _cupy.asarray(array)
    if array_module(array) is not np:
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_numpy(array) -> np.ndarray:
    return to_device(array, "cpu")


def erf(array):
    """The error function on either device (GELU needs it; NumPy has none)."""
    if array_module(array) is np:
        from scipy.special import erf as scipy_erf
        return scipy_erf(array)
    return _cupyx.scipy.special.erf(array)


def scatter_add(target, indices, values) -> None:
    """target[indices] += values with repeated indices summed (np.add.at / cupyx)."""
    if array_module(target) is np:
        np.add.at(target, indices, values)
    else:
        _cupyx.scatter_add(target, indices, values)


# ---------------------------------------------------------------------------------------
# Random numbers: one generator per device, seeded by manual_seed. NumPy's PCG64 on the CPU.
# On the GPU a counter-based Philox stream (kernels/cuda/random.cu): each draw takes the next
# `size` counters, so the whole state is (seed, offset), which a checkpoint stores and restores
# exactly; no cuRAND generator is made per draw.
# ---------------------------------------------------------------------------------------
class CpuGenerator:
    def __init__(self, seed: int = 0):
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self._generator = np.random.Generator(np.random.PCG64(seed))

    def normal(self, shape, dtype):
        return _sharded(lambda shape: self._generator.standard_normal(
            shape, dtype=np.float64).astype(dtype, copy=False), shape)

    def uniform(self, shape, dtype):
        return _sharded(lambda shape: self._generator.random(
            shape, dtype=np.float64).astype(dtype, copy=False), shape)

    def integers(self, low, high, shape):
        return _sharded(lambda shape: self._generator.integers(
            low, high, size=shape, dtype=np.int64), shape)

    def permutation(self, n: int):
        return self._generator.permutation(n)

    def get_state(self) -> dict:
        return self._generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._generator.bit_generator.state = state


class CudaGenerator:
    """The GPU's default generator: Philox4x32-10 counters (seed, offset)."""

    def __init__(self, seed: int = 0):
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self._seed, self._offset = int(seed), 0

    def _take(self, shape) -> int:
        """The first counter of a draw of `shape`; the next draw starts after it."""
        first = self._offset
        self._offset += int(np.prod(shape, dtype=np.int64))
        return first

    @staticmethod
    def _kernels():
        from minigen.kernels import cuda
        return cuda

    def normal(self, shape, dtype):
        return _sharded(lambda shape: self._kernels().random_normal(
            shape, dtype, self._seed, self._take(shape)), shape)

    def uniform(self, shape, dtype):
        return _sharded(lambda shape: self._kernels().random_uniform(
            shape, dtype, self._seed, self._take(shape)), shape)

    def integers(self, low, high, shape):
        return _sharded(lambda shape: self._kernels().random_integers(
            low, high, shape, self._seed, self._take(shape)), shape)

    def permutation(self, n: int):
        # The order that sorts n uniform keys is a uniform random permutation.
        return _cupy.argsort(self.uniform((int(n),), np.float64))

    def get_state(self) -> dict:
        return {"seed": self._seed, "offset": self._offset}

    def set_state(self, state: dict) -> None:
        if "offset" not in state:
            # An older minigen's state, {"seed", "draws"}, for a generator that no longer
            # exists: continue on a stream of its own, the same each time it is restored.
            self._seed, self._offset = int(state["seed"]) * 1_000_003 + int(state["draws"]), 0
            return
        self._seed, self._offset = int(state["seed"]), int(state["offset"])


def _as_shape(shape) -> tuple:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)


_GENERATORS = {"cpu": CpuGenerator, "cuda": CudaGenerator}
_generators: dict[str, object] = {"cpu": CpuGenerator(0)}
_default_seed = 0  # what a device's generator starts from when it is first used


def generator(device: str = "cpu"):
    """The default random generator of a device (made on first use, from the last seed)."""
    device = check_device(device)
    if device not in _generators:
        _generators[device] = _GENERATORS[device](_default_seed)
    return _generators[device]


def manual_seed(seed: int) -> None:
    """Seed the default generators of every device, as torch.manual_seed does."""
    global _default_seed
    _default_seed = int(seed)
    for device_generator in _generators.values():
        device_generator.seed(seed)


def get_rng_state() -> dict:
    """The state of every device generator in use (JSON-serialisable, for checkpoints); a
    device that cannot be used here has no entry."""
    return {device: gen.get_state() for device, gen in _generators.items()}


def set_rng_state(state: dict) -> None:
    for device, device_state in state.items():
        if device == "cuda" and cuda_status() is not None:
            continue  # a GPU run's stream cannot be restored on a machine without a usable GPU
        generator(device).set_state(device_state)


# ---------------------------------------------------------------------------------------
# Data-parallel training (minigen.distributed) needs three things of the machine: the draws
# of one rank's shard of a global batch, the CPU threads a rank may use, and its GPU.
# ---------------------------------------------------------------------------------------
_shard: tuple[int, int, int] | None = None  # (rank, world_size, local batch) during a step


class shard_draws:
    """Within this context, a draw whose leading dimension is the local batch size is drawn
    for the whole global batch (world_size times as many rows, from the same generator on
    every rank) and this rank's rows are returned: the noise, timesteps and dropout masks
    of sample i of a global batch do not depend on how many ranks share the batch."""

    def __init__(self, rank: int, world_size: int, batch: int):
        self.shard = (int(rank), int(world_size), int(batch))

    def __enter__(self):
        global _shard
        self.previous, _shard = _shard, self.shard if self.shard[1] > 1 else None
        return self

    def __exit__(self, *exc_info):
        global _shard
        _shard = self.previous


def _sharded(draw, shape):
    """draw(shape), or this rank's rows of draw(global shape) inside shard_draws."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if _shard is None or not shape or shape[0] != _shard[2]:
        return draw(shape)
    rank, world_size, batch = _shard
    return draw((batch * world_size, *shape[1:]))[rank * batch:(rank + 1) * batch]


def set_cpu_threads(count: int) -> None:
    """Use `count` threads for the CPU kernels (Numba) and for BLAS."""
    import numba
    from threadpoolctl import ThreadpoolController

    numba.set_num_threads(max(1, min(int(count), numba.config.NUMBA_NUM_THREADS)))
    ThreadpoolController().limit(limits=max(1, int(count)), user_api="blas")


def gpu_count() -> int:
    """The number of CUDA GPUs this process can see (0 without CuPy)."""
    if _cupy is None:
        return 0
    try:
        return int(_cupy.cuda.runtime.getDeviceCount())
    except Exception:  # pragma: no cover - depends on the machine
        return 0


def use_gpu(index: int) -> None:
    """Make GPU `index` the current device of this process (one GPU per rank)."""
    _cupy.cuda.Device(int(index)).use()  # pragma: no cover - needs a GPU


def nccl():
    """cupy.cuda.nccl, or None when CuPy or its NCCL binding is missing."""
    if _cupy is None:
        return None
    try:
        from cupy.cuda import nccl as module
    except Exception:  # pragma: no cover - depends on the machine
        return None
    return module if getattr(module, "available", True) else None


def current_stream_ptr() -> int:
    """The raw pointer of CuPy's current stream (what NCCL calls take)."""
    return _cupy.cuda.get_current_stream().ptr  # pragma: no cover - needs a GPU
