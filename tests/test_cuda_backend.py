"""The GPU path's own rules, proven without a GPU: what `cuda_status` says is missing, the GPU's
default random generator (Philox counters, one per device, saved and restored exactly), the
checks the CUDA kernels make before a launch (dtypes, max-pool indices), and TF32 off in every
comparison with PyTorch.
"""
from __future__ import annotations

import importlib
import os
import types
from pathlib import Path

import numpy as np
import pytest

import minigen
from minigen import backend
from helpers import CONV_CASES, import_torch, random_array


# ---- cuda_status: one line that names what is missing ---------------------------------------
def _cupy_like(device_count=1, device_error=None, nvrtc_error=None):
    def count():
        if device_error:
            raise RuntimeError(device_error)
        return device_count

    def nvrtc_version():
        if nvrtc_error:
            raise OSError(nvrtc_error)
        return (13, 0)
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count),
                                        nvrtc=types.SimpleNamespace(getVersion=nvrtc_version))
    return module


@pytest.fixture
def status_of(monkeypatch):
    """cuda_status for a stand-in CuPy module; cublas_error makes cuBLAS fail to load."""
    def status(module, cublas_error=None):
        def load_cublas(cupy):
            if cublas_error:
                raise ImportError(cublas_error + "\n  listdir(...)")
        monkeypatch.setattr(backend, "_load_cublas", load_cublas)
        monkeypatch.setattr(backend, "_cupy", module)
        backend._status_of.cache_clear()
        return backend.cuda_status()
    yield status
    backend._status_of.cache_clear()


def test_cuda_status_is_none_when_device_nvrtc_and_cublas_are_there(status_of):
    assert status_of(_cupy_like()) is None


def test_cuda_status_without_cupy_says_how_to_install_it(status_of):
    message = status_of(None)
    assert message.startswith("CuPy is not installed (") and "pip install 'minigen[cuda]'" in message


def test_cuda_status_names_a_missing_nvrtc_in_one_sentence(status_of):
    message = status_of(_cupy_like(nvrtc_error="libnvrtc.so.12: cannot open shared object file"))
    assert message == ("CuPy cannot run here: NVRTC cannot be loaded (libnvrtc.so.12: cannot open "
                       "shared object file); pip install 'cupy-cuda13x[ctk]' brings CuPy's CUDA "
                       "libraries").replace("cupy-cuda13x", backend._cupy_package())


def test_cuda_status_names_every_missing_piece_in_one_line(status_of):
    message = status_of(_cupy_like(device_error="cudaErrorInsufficientDriver: CUDA driver version "
                                                "is insufficient for CUDA runtime version"),
                        cublas_error='Failure finding "libcublasLt.so.13"')
    assert "\n" not in message
    assert message.startswith("CuPy cannot run here: no CUDA GPU can be used "
                              "(cudaErrorInsufficientDriver: CUDA driver version is insufficient "
                              "for CUDA runtime version) and cuBLAS cannot be loaded (Failure "
                              "finding \"libcublasLt.so.13\");")


def test_cuda_status_without_a_device_says_a_gpu_is_needed(status_of):
    assert status_of(_cupy_like(device_count=0)) == (
        "CuPy cannot run here: this machine has no CUDA GPU; a GPU run needs an NVIDIA GPU and "
        "its driver")


def test_asking_for_cuda_where_it_cannot_run_names_the_device_and_the_problem(status_of):
    status_of(_cupy_like(device_count=0))
    with pytest.raises(RuntimeError, match="^device 'cuda' was asked for, but CuPy cannot run "
                                           "here: this machine has no CUDA GPU"):
        backend.check_device("cuda")


def test_rng_state_has_no_cuda_entry_where_no_gpu_can_be_used(status_of):
    status_of(_cupy_like(device_count=0))
    minigen.manual_seed(3)
    assert list(minigen.get_rng_state()) == ["cpu"]


# ---- the GPU's default generator -------------------------------------------------------------

@pytest.mark.cuda
def test_philox_matches_the_published_known_answer(cuda_backend):
    # Random123's known answer for Philox4x32-10 with counter 0 and key 0: words 6627e8d5
    # e169c58d ...; the first uniform is the top 53 bits of the first two.
    uniform = cuda_backend.asnumpy(cuda_backend.kernels.random_uniform((1,), np.float64, 0, 0))
    expected = ((0x6627E8D5 << 32 | 0xE169C58D) >> 11) * 2.0**-53
    assert uniform[0] == expected


@pytest.mark.cuda
def test_one_generator_per_device_seeded_by_manual_seed(cuda_backend):
    minigen.manual_seed(7)
    first = cuda_backend.asnumpy(minigen.randn(2, 3, device="cuda").data)
    assert backend.generator("cuda") is backend.generator("cuda")
    minigen.manual_seed(7)
    again = cuda_backend.asnumpy(minigen.randn(2, 3, device="cuda").data)
    next_draw = cuda_backend.asnumpy(minigen.randn(2, 3, device="cuda").data)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(again, next_draw)
    assert minigen.get_rng_state()["cuda"] == {"seed": 7, "offset": 12}


@pytest.mark.cuda
def test_gpu_rng_state_restores_the_stream_exactly(cuda_backend):
    minigen.manual_seed(11)
    minigen.rand(5, device="cuda")
    state = minigen.get_rng_state()
    expected = [cuda_backend.asnumpy(minigen.randn(4, 4, device="cuda").data),
                cuda_backend.asnumpy(minigen.randint(0, 10, (6,), device="cuda").data)]
    minigen.manual_seed(0)
    minigen.set_rng_state(state)
    restored = [cuda_backend.asnumpy(minigen.randn(4, 4, device="cuda").data),
                cuda_backend.asnumpy(minigen.randint(0, 10, (6,), device="cuda").data)]
    for want, got in zip(expected, restored):
        np.testing.assert_array_equal(want, got)


@pytest.mark.cuda
def test_gpu_generator_draws_have_the_right_distributions(cuda_backend):
    generator = backend.CudaGenerator(5)
    normal = cuda_backend.asnumpy(generator.normal((200_000,), np.float32))
    uniform = cuda_backend.asnumpy(generator.uniform((200_000,), np.float64))
    integers = cuda_backend.asnumpy(generator.integers(-3, 4, (70_000,)))
    permutation = cuda_backend.asnumpy(generator.permutation(1000))
    assert normal.dtype == np.float32 and abs(normal.mean()) < 0.01
    assert abs(normal.std() - 1) < 0.01 and abs(np.mean(normal**4) - 3) < 0.05
    assert uniform.min() >= 0 and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.005
    assert integers.dtype == np.int64 and set(np.unique(integers)) == set(range(-3, 4))
    assert np.abs(np.bincount(integers + 3) / 10_000 - 1).max() < 0.06
    assert sorted(permutation.tolist()) == list(range(1000))
    assert not np.array_equal(permutation, np.arange(1000))


# ---- checks before a launch -----------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("case", [CONV_CASES[0], next(c for c in CONV_CASES if c.kernel_size == 1)],
                         ids=lambda case: case.name)
def test_every_cuda_kernel_refuses_float16_with_one_rule(case, cuda_backend):
    # The 1x1 convolution used to skip the dtype check the other kernels make.
    cuda = cuda_backend.kernels
    rng = np.random.default_rng(0)
    x, weight, grad_output = (cuda_backend.asarray(random_array(rng, shape, np.float16)) for shape
                              in (case.input_shape, case.weight_shape, case.output_shape))
    calls = [lambda: cuda.conv2d_forward(x, weight, *case.args),
             lambda: cuda.conv2d_backward_input(grad_output, weight, x.shape, *case.args),
             lambda: cuda.conv2d_backward_weight(grad_output, x, weight.shape, *case.args),
             lambda: cuda.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0)),
             lambda: cuda.avg_pool2d_forward(x, (2, 2), (2, 2), (0, 0)),
             lambda: cuda.upsample_nearest2d_forward(x, (2, 2))]
    for call in calls:
        with pytest.raises(TypeError, match="dtype float16 is not supported; use float32 or "
                                            "float64"):
            call()


@pytest.fixture
def pooled(cuda_backend):
    x = cuda_backend.asarray(np.random.default_rng(1).standard_normal((2, 3, 4, 4)))
    y, indices = cuda_backend.kernels.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    return cuda_backend, y, indices


@pytest.mark.cuda
@pytest.mark.parametrize("bad_index, message", [(-1, "indices run from -1 to"),
                                                (16, "to 16, outside the 4x4 plane")])
def test_max_pool2d_backward_refuses_indices_outside_the_plane(pooled, bad_index, message):
    device, y, indices = pooled
    host = device.asnumpy(indices)
    host[1, 2, 0, 1] = bad_index
    with pytest.raises(ValueError, match=message):
        device.kernels.max_pool2d_backward(y, device.asarray(host), (2, 3, 4, 4))


@pytest.mark.cuda
@pytest.mark.parametrize("change, message", [
    (lambda y, i: (y, i[:, :, :1], (2, 3, 4, 4)), "must have the shape of grad_output"),
    (lambda y, i: (y, i, (2, 4, 4, 4)), "differ in N or C"),
    (lambda y, i: (y, i, (2, 3, 2, 2)), "outside the 2x2 plane"),
    (lambda y, i: (y, i.astype(np.float64), (2, 3, 4, 4)), "indices must be integers"),
])
def test_max_pool2d_backward_checks_shapes_before_the_launch(pooled, change, message):
    device, y, indices = pooled
    with pytest.raises((ValueError, TypeError), match=message):
        device.kernels.max_pool2d_backward(*change(y, indices))


# ---- TF32: float32 comparisons with PyTorch on a GPU run without it on both sides ------------
def test_comparisons_with_pytorch_run_without_tf32_on_either_side():
    torch = import_torch()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert os.environ["CUPY_TF32"] == "0"


def test_gpu_benchmarks_print_the_tf32_mode_of_each_side(monkeypatch):
    torch = import_torch()
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    gpu_modes = importlib.import_module("gpu_modes")
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    assert gpu_modes.tf32_off(torch) == "TF32: minigen (CuPy) off; PyTorch matmul off, cuDNN off"
    monkeypatch.setenv("CUPY_TF32", "1")
    assert gpu_modes.describe(torch).startswith("TF32: minigen (CuPy) on;")


# ---- the cuda extras bring what a run needs ---------------------------------------------------
def test_the_cuda_extras_bring_cupy_with_its_cuda_libraries():
    # A bare cupy-cuda12x has no NVRTC or cuBLAS; the [ctk] extra brings both as wheels.
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert '"cuda": ["cupy-cuda12x[ctk]>=14"]' in setup
    assert '"cuda13": ["cupy-cuda13x[ctk]>=14"]' in setup
