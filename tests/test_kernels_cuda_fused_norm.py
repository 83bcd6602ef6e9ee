"""The CUDA twins of the fused group norm (+ SiLU), batch norm and softmax (kernels/cuda/
fused_norm.cu): compiled by NVRTC for real architectures (no GPU needed), and executed against
the NumPy oracle on the cases of tests/norm_cases.py, float32 and float64, contiguous or not,
through the `cuda_backend` fixture (a GPU, or the CUDA-on-CPU runner). Skipped with the reason
where CuPy's NVRTC or that fixture is missing.
"""
from __future__ import annotations

import numpy as np
import pytest

from minigen.kernels import reference
from helpers import assert_close, random_array
from norm_cases import BATCH_NORM_CASES, GROUP_NORM_CASES, SOFTMAX_CASES

ARCHITECTURES = ["sm_80", "sm_90", "sm_100"]
SOURCE = "fused_norm.cu"
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64],
                                 ids=lambda dtype: np.dtype(dtype).name)
layouts = pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fused_norm_kernels_compile_with_nvrtc_for(arch):
    pytest.importorskip("cupy", reason="CuPy is not installed; pip install -e '.[cuda]'")
    from cupy.cuda import nvrtc

    from minigen.kernels import cuda
    source = (cuda.Path(cuda.__file__).parent / SOURCE).read_text()
    program = nvrtc.createProgram(source, SOURCE, [], [])
    names = [f"{kernel}<{c_type}>" for kernel in cuda._KERNELS[SOURCE]
             for c_type in cuda._C_TYPES.values()]
    for name in names:
        nvrtc.addNameExpression(program, name)
    try:
        nvrtc.compileProgram(program, [f"--gpu-architecture={arch}", "--std=c++14"])
    except nvrtc.NVRTCError as error:
        pytest.fail(f"{SOURCE} does not compile for {arch}: {error}\n"
                    f"{nvrtc.getProgramLog(program)}")
    assert all(nvrtc.getLoweredName(program, name) for name in names)
    nvrtc.destroyProgram(program)


@pytest.fixture
def device(request):
    """The `cuda_backend` fixture (its .kernels, .asarray, .asnumpy), or a skip saying why."""
    try:
        return request.getfixturevalue("cuda_backend")
    except pytest.FixtureLookupError:
        pytest.skip("no cuda_backend fixture here: the CUDA-on-CPU runner (tests/conftest.py) "
                    "is not on this branch")


def on_device(device, array, layout="contiguous"):
    """A device copy of a NumPy array (None stays None); a strided view where non_contiguous."""
    if array is None:
        return None
    if layout == "contiguous":
        return device.asarray(array)
    wide = np.zeros((*array.shape[:-1], 2 * array.shape[-1]), dtype=array.dtype)
    wide[..., ::2] = array
    return device.asarray(wide)[..., ::2]


@pytest.mark.cuda
@pytest.mark.parametrize("case", GROUP_NORM_CASES, ids=lambda case: case.name)
@dtypes
@layouts
def test_cuda_group_norm_matches_reference(case, dtype, layout, device):
    x, weight, bias, grad_output = case.arrays(np.random.default_rng(1), dtype)
    kernels = device.kernels
    y, mean, rstd = kernels.group_norm_forward(on_device(device, x, layout), case.groups,
                                               on_device(device, weight),
                                               on_device(device, bias), 1e-5, case.silu)
    expected_y, expected_mean, expected_rstd = reference.group_norm_forward(
        x, case.groups, weight, bias, 1e-5, case.silu)
    assert_close(device.asnumpy(y), expected_y, dtype)
    assert_close(device.asnumpy(mean), expected_mean, np.float64)
    np.testing.assert_allclose(device.asnumpy(rstd), expected_rstd, rtol=1e-9)
    grads = kernels.group_norm_backward(on_device(device, grad_output, layout),
                                        on_device(device, x, layout), mean, rstd, case.groups,
                                        on_device(device, weight), on_device(device, bias),
                                        case.silu)
    expected = reference.group_norm_backward(grad_output, x, expected_mean, expected_rstd,
                                             case.groups, weight, bias, case.silu)
    for actual, wanted in zip(grads, expected):
        assert_close(device.asnumpy(actual), wanted, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("case", BATCH_NORM_CASES, ids=lambda case: case.name)
@dtypes
@layouts
def test_cuda_batch_norm_matches_reference_and_updates_running_statistics_alike(
        case, dtype, layout, device):
    x, weight, bias, running_mean, running_var, grad_output = case.arrays(
        np.random.default_rng(2), dtype)
    kernels = device.kernels
    running = [on_device(device, array) for array in (running_mean, running_var)]
    y, mean, rstd = kernels.batch_norm_forward(on_device(device, x, layout),
                                               on_device(device, weight),
                                               on_device(device, bias), *running,
                                               case.training, case.momentum, 1e-5)
    expected_y, expected_mean, expected_rstd = reference.batch_norm_forward(
        x, weight, bias, running_mean, running_var, case.training, case.momentum, 1e-5)
    assert_close(device.asnumpy(y), expected_y, dtype)
    assert_close(device.asnumpy(mean), expected_mean, np.float64)
    np.testing.assert_allclose(device.asnumpy(rstd), expected_rstd, rtol=1e-9)
    for actual, wanted in zip(running, (running_mean, running_var)):
        if wanted is not None:
            assert_close(device.asnumpy(actual), wanted, dtype)
    grads = kernels.batch_norm_backward(on_device(device, grad_output, layout),
                                        on_device(device, x, layout), mean, rstd,
                                        on_device(device, weight), case.training)
    expected = reference.batch_norm_backward(grad_output, x, expected_mean, expected_rstd,
                                             weight, case.training)
    for actual, wanted in zip(grads, expected):
        assert_close(device.asnumpy(actual), wanted, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, scale", SOFTMAX_CASES.values(), ids=list(SOFTMAX_CASES))
@dtypes
@layouts
def test_cuda_softmax_matches_reference(shape, scale, dtype, layout, device):
    rng = np.random.default_rng(3)
    x, grad_output = (random_array(rng, shape, dtype) * scale for _ in range(2))
    y = device.kernels.softmax_forward(on_device(device, x, layout))
    expected = reference.softmax_forward(x)
    assert_close(device.asnumpy(y), expected, dtype)
    grad_x = device.kernels.softmax_backward(on_device(device, grad_output, layout),
                                             on_device(device, expected, layout))
    assert_close(device.asnumpy(grad_x), reference.softmax_backward(grad_output, expected), dtype)
