"""The CUDA-on-CPU runner itself (tests/cuda_on_cpu/): it compiles every registered .cu file,
executes CUDA's block and thread model (shared memory, __syncthreads, atomics, warp shuffles),
refuses the launches CuPy would pass to a GPU unchecked, and finds out-of-bounds accesses under
AddressSanitizer. The strict array stand-in refuses implicit conversion to NumPy.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cuda_on_cpu import runner, strict_array

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not runner.compiler_available(),
                                 reason=f"the CPU runner needs a C++ compiler ({runner.COMPILER})")]

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels" / "cuda"
device = strict_array.asarray

# A block sum with shared memory and __syncthreads, a warp sum with shuffles, and atomics
# across blocks; threads past the end return early, as CUDA kernels often do.
COOPERATIVE_SOURCE = r"""
constexpr int BLOCK = 128;

template <typename T>
__global__ void block_sums(const T* x, T* sums, T* total, long long n) {
    __shared__ T partial[BLOCK];
    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        sums[blockIdx.x] = partial[0];
        atomicAdd(total, partial[0]);
    }
}

template <typename T>
__global__ void warp_sums(const T* x, T* sums, long long n) {
    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    T value = x[i];
    for (int offset = warpSize / 2; offset > 0; offset /= 2) {
        value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    if (threadIdx.x % warpSize == 0) sums[i / warpSize] = value;
}

extern "C" __global__ void divergent_barriers(float* y) {
    if (threadIdx.x % 2) __syncthreads(); else __syncwarp();
    y[threadIdx.x] = 1.0f;
}

extern "C" __global__ void out_of_bounds(float* y, long long n) {
    y[n + blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
"""


@pytest.fixture(scope="module")
def cooperative():
    return runner.RawModule(code=COOPERATIVE_SOURCE, name_expressions=[
        "block_sums<float>", "block_sums<double>", "warp_sums<float>", "warp_sums<double>"])


def test_every_cu_file_is_registered_and_compiles_on_the_cpu():
    from minigen.kernels import cuda
    sources = sorted(path.name for path in KERNELS_DIR.glob("*.cu"))
    assert sources and sorted(cuda._KERNELS) == sources, (
        f"register every .cu file in kernels/cuda/_KERNELS: {sorted(set(sources) - set(cuda._KERNELS))}")
    for filename in sources:
        module = runner.RawModule(code=cuda._source(filename), options=cuda.COMPILE_OPTIONS,
                                  name_expressions=cuda._name_expressions(filename))
        for name in cuda._name_expressions(filename):
            assert module.get_function(name).parameters


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 127, 128, 1000])
def test_shared_memory_and_syncthreads_sum_each_block(cooperative, dtype, n):
    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    blocks = -(-n // 128)
    sums, total = device(np.zeros(blocks, dtype)), device(np.zeros(1, dtype))
    c_type = "float" if dtype == np.float32 else "double"
    cooperative.get_function(f"block_sums<{c_type}>")((blocks,), (128,),
                                                      (device(x), sums, total, n))
    padded = np.zeros(blocks * 128, dtype)
    padded[:n] = x
    np.testing.assert_allclose(sums.get(), padded.reshape(blocks, 128).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(total.get(), [x.sum()], rtol=1e-4)


@pytest.mark.parametrize("n, block", [(64, 64), (96, 96), (256, 128)])
def test_warp_shuffles_sum_each_warp(cooperative, n, block):
    x = np.arange(n, dtype=np.float64)
    sums = device(np.zeros(n // 32))
    cooperative.get_function("warp_sums<double>")((-(-n // block),), (block,),
                                                  (device(x), sums, n))
    np.testing.assert_array_equal(sums.get(), x.reshape(-1, 32).sum(axis=1))


@pytest.mark.parametrize("args, message", [
    (lambda x: (x.astype(np.float32), device(np.zeros(1)), device(np.zeros(1)), 4),
     "argument 0 (const float64*) is a float32 array"),
    (lambda x: (x, device(np.zeros(1)), device(np.zeros(1)), np.int32(4)),
     "passed as int32 (4 bytes), but the kernel takes int64 (8 bytes)"),
    (lambda x: (x, device(np.zeros(1)), device(np.zeros(1)), 4.0),
     "passed as float64 (8 bytes), but the kernel takes int64"),
    (lambda x: (x.get(), device(np.zeros(1)), device(np.zeros(1)), 4),
     "is a NumPy array; a kernel takes device arrays"),
    (lambda x: (device(np.zeros(8))[::2], device(np.zeros(1)), device(np.zeros(1)), 4),
     "is not C-contiguous"),
    (lambda x: (x, device(np.zeros(1)), 4), "takes 4 arguments"),
])
def test_launch_refuses_what_cupy_would_pass_unchecked(cooperative, args, message):
    kernel = cooperative.get_function("block_sums<double>")
    with pytest.raises(runner.LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        kernel((1,), (128,), args(device(np.zeros(4))))


@pytest.mark.parametrize("grid, block, message", [
    ((2**31,), (128,), "grid.x = 2147483648 is outside CUDA's limit"),
    ((1, 65536), (128,), "grid.y = 65536"),
    ((0,), (128,), "grid.x = 0"),
    ((1,), (2048,), "block.x = 2048"),
    ((1,), (64, 32), "more than CUDA's 1024 threads"),
    ((1,), (1, 1, 65), "block.z = 65"),
])
def test_launch_refuses_grids_and_blocks_beyond_cuda_limits(cooperative, grid, block, message):
    kernel = cooperative.get_function("block_sums<double>")
    args = (device(np.zeros(4)), device(np.zeros(1)), device(np.zeros(1)), 4)
    with pytest.raises(runner.LaunchError, match=message):
        kernel(grid, block, args)


def test_an_unlisted_template_instance_is_refused(cooperative):
    with pytest.raises(runner.LaunchError, match="must be listed in name_expressions"):
        cooperative.get_function("block_sums<int>")


def test_strict_array_refuses_implicit_conversion_to_numpy():
    x = device(np.arange(6.0).reshape(2, 3))
    for implicit in (np.asarray, np.exp, np.sum, lambda a: np.concatenate([a, a]), float,
                     lambda a: np.ones(3) + a, lambda a: a * np.ones(3)):
        with pytest.raises(TypeError):
            implicit(x)
    assert float(x.sum()) == 15.0 and x.get().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert isinstance(strict_array.module.exp(x), strict_array.ndarray)
    assert isinstance(x[0] * 2 + 1, strict_array.ndarray)


def _sanitized_environment() -> dict | None:
    library = subprocess.run([runner.COMPILER, "-print-file-name=libasan.so"],
                             capture_output=True, text=True).stdout.strip()
    if not library or not os.path.isabs(library):
        return None
    return dict(os.environ, LD_PRELOAD=library, ASAN_OPTIONS="detect_leaks=0",
                MINIGEN_CUDA_ON_CPU_SANITIZE="address", MINIGEN_CUDA_ON_CPU="1")


def _run_sanitized(arguments, timeout=600):
    environment = _sanitized_environment()
    if environment is None:
        pytest.skip(f"{runner.COMPILER} has no AddressSanitizer runtime")
    return subprocess.run([sys.executable, *arguments], env=environment, capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).parent)


def test_address_sanitizer_finds_an_out_of_bounds_write():
    script = ("import numpy as np\nfrom cuda_on_cpu import runner, strict_array\n"
              "from test_cuda_on_cpu import COOPERATIVE_SOURCE\n"
              "kernel = runner.RawModule(code=COOPERATIVE_SOURCE).get_function('out_of_bounds')\n"
              "kernel((1,), (1,), (strict_array.asarray(np.zeros(5, np.float32)), 5))\n")
    result = _run_sanitized(["-c", script])
    assert result.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr[-2000:]


def test_threads_waiting_at_different_barriers_end_the_run_with_a_message():
    script = ("import numpy as np\nfrom cuda_on_cpu import runner, strict_array\n"
              "from test_cuda_on_cpu import COOPERATIVE_SOURCE\n"
              "kernel = runner.RawModule(code=COOPERATIVE_SOURCE).get_function('divergent_barriers')\n"
              "kernel((1,), (64,), (strict_array.asarray(np.zeros(64, np.float32)),))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).parent)
    assert result.returncode != 0
    assert "deadlock: the threads of a block wait at different barriers" in result.stderr


def test_cuda_kernel_tests_pass_under_address_sanitizer():
    # The backend's kernels, and the fibers of cooperative launches.
    result = _run_sanitized(["-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                             "test_kernels_cuda.py", "test_cuda_on_cpu.py", "-k",
                             "(test_cuda_ or shared_memory or warp_shuffles) and not sanitizer"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
