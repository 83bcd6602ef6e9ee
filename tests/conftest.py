"""Test-session settings shared by every test file.

Under `pytest -n 2` each worker gets one BLAS and one Numba thread: two workers with two
threads each oversubscribe a 2-core machine, and OpenBLAS's spinning threads then cost many
times the CPU time of the work. The limits must be set before NumPy loads, hence here.
"""
import os

if "PYTEST_XDIST_WORKER" in os.environ:
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Float32 comparisons with PyTorch on a GPU run without TF32 on both sides (helpers.import_torch
# turns PyTorch's off); CuPy reads this before its first matmul.
os.environ["CUPY_TF32"] = "0"

import pytest  # noqa: E402


@pytest.fixture
def cuda_backend(monkeypatch):
    """The CUDA backend: `.kernels` (minigen.kernels.cuda), `.asarray(numpy_array)` (a device
    array) and `.asnumpy(device_array)`. On a GPU machine these are CuPy's; elsewhere the CUDA C
    runs on CPU threads and device arrays are the strict stand-in (tests/cuda_on_cpu/)."""
    import cuda_on_cpu

    reason = cuda_on_cpu.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    device = cuda_on_cpu.device_backend(monkeypatch)
    yield device
    device.kernels._module.cache_clear()
