"""The one place that knows about NumPy versus CuPy.

Everything else in minigen asks `array_module(x)` for the module that owns an array and
writes `xp.` calls that both libraries understand. Devices are named "cpu" and "cuda".
The default random generators (one per device) live here too, seeded by `manual_seed`.
"""
from __future__ import annotations

import numpy as np

try:  # CuPy is optional: the `cuda` extra.
    import cupy as _cupy
except Exception as _error:  # pragma: no cover - depends on the machine
    _cupy = None
    _cupy_import_error = _error
else:
    _cupy_import_error = None

DEVICES = ("cpu", "cuda")


def cuda_status() -> str | None:
    """None when CUDA can be used, else one sentence saying what is missing."""
    if _cupy is None:
        return ("CuPy is not installed (pip install 'minigen[cuda]' on a machine with an "
                f"NVIDIA GPU); import failed with: {_cupy_import_error}")
    try:
        count = _cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # pragma: no cover - depends on the machine
        return f"CuPy is installed but no CUDA GPU can be used: {error}"
    if count == 0:  # pragma: no cover
        return "CuPy is installed but this machine has no CUDA GPU"
    return None


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
    from cupyx.scipy.special import erf as cupy_erf  # pragma: no cover
    return cupy_erf(array)  # pragma: no cover


def scatter_add(target, indices, values) -> None:
    """target[indices] += values with repeated indices summed (np.add.at / cupyx)."""
    if array_module(target) is np:
        np.add.at(target, indices, values)
    else:  # pragma: no cover
        import cupyx
        cupyx.scatter_add(target, indices, values)


# ---------------------------------------------------------------------------------------
# Random numbers: one generator per device. NumPy's PCG64 on the CPU. On the GPU a CuPy
# RandomState is re-seeded from (seed, number of draws), so its whole state is two
# integers that a checkpoint can store and restore exactly.
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


class CudaGenerator:  # pragma: no cover - needs a GPU
    def __init__(self, seed: int = 0):
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self._seed, self._draws = int(seed), 0

    def _next(self):
        # A distinct stream per draw, derived from the seed and the draw's number.
        self._draws += 1
        return _cupy.random.RandomState((self._seed * 1_000_003 + self._draws) % 2**63)

    def normal(self, shape, dtype):
        return _sharded(lambda shape: self._next().standard_normal(
            shape, dtype=np.float64).astype(dtype, copy=False), shape)

    def uniform(self, shape, dtype):
        return _sharded(lambda shape: self._next().random_sample(
            shape, dtype=np.float64).astype(dtype, copy=False), shape)

    def integers(self, low, high, shape):
        return _sharded(lambda shape: self._next().randint(
            low, high, size=shape, dtype=np.int64), shape)

    def permutation(self, n: int):
        return self._next().permutation(n)

    def get_state(self) -> dict:
        return {"seed": self._seed, "draws": self._draws}

    def set_state(self, state: dict) -> None:
        self._seed, self._draws = int(state["seed"]), int(state["draws"])


_generators: dict[str, object] = {"cpu": CpuGenerator(0)}


def generator(device: str = "cpu"):
    """The default random generator of a device."""
    device = check_device(device)
    if device not in _generators:
        _generators[device] = CudaGenerator(0)
    return _generators[device]


def manual_seed(seed: int) -> None:
    """Seed the default generators of every device, as torch.manual_seed does."""
    for device in list(_generators):
        _generators[device].seed(seed)
    if "cuda" not in _generators and _cupy is not None:
        _generators["cuda"] = CudaGenerator(seed)


def get_rng_state() -> dict:
    """Every device generator's state, JSON-serialisable (for checkpoints)."""
    return {device: gen.get_state() for device, gen in _generators.items()}


def set_rng_state(state: dict) -> None:
    for device, device_state in state.items():
        if device == "cuda" and cuda_status() is not None:
            continue  # a GPU run's stream cannot be restored on a CPU-only machine
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
