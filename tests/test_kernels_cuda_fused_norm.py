"""The CUDA twins of the fused group norm (+ SiLU), batch norm and softmax (kernels/cuda/
fused_norm.cu) against the NumPy oracle on the cases of tests/norm_cases.py, float32 and float64,
contiguous or not, through the `cuda_backend` fixture: on a GPU where there is one, else on the
CUDA-on-CPU runner (tests/cuda_on_cpu/). tests/test_cuda_compile.py compiles the same file with
NVRTC for sm_80, sm_90 and sm_100.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigen
import minigen.functional as F

from minigen.kernels import reference
from helpers import assert_close, random_array
from norm_cases import BATCH_NORM_CASES, GROUP_NORM_CASES, SOFTMAX_CASES

pytestmark = pytest.mark.cuda

dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64],
                                 ids=lambda dtype: np.dtype(dtype).name)
layouts = pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])


def on_device(device, array, layout="contiguous"):
    """A device copy of a NumPy array (None stays None); a strided view where non_contiguous."""
    if array is None:
        return None
    if layout == "contiguous":
        return device.asarray(array)
    wide = np.zeros((*array.shape[:-1], 2 * array.shape[-1]), dtype=array.dtype)
    wide[..., ::2] = array
    return device.asarray(wide)[..., ::2]


@pytest.mark.parametrize("case", GROUP_NORM_CASES, ids=lambda case: case.name)
@dtypes
@layouts
def test_cuda_group_norm_matches_reference(case, dtype, layout, cuda_backend):
    device = cuda_backend
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


@pytest.mark.parametrize("case", BATCH_NORM_CASES, ids=lambda case: case.name)
@dtypes
@layouts
def test_cuda_batch_norm_matches_reference_and_updates_running_statistics_alike(
        case, dtype, layout, cuda_backend):
    device = cuda_backend
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


@pytest.mark.parametrize("shape, scale", SOFTMAX_CASES.values(), ids=list(SOFTMAX_CASES))
@dtypes
@layouts
def test_cuda_softmax_matches_reference(shape, scale, dtype, layout, cuda_backend):
    device = cuda_backend
    rng = np.random.default_rng(3)
    x, grad_output = (random_array(rng, shape, dtype) * scale for _ in range(2))
    y = device.kernels.softmax_forward(on_device(device, x, layout))
    expected = reference.softmax_forward(x)
    assert_close(device.asnumpy(y), expected, dtype)
    grad_x = device.kernels.softmax_backward(on_device(device, grad_output, layout),
                                             on_device(device, expected, layout))
    assert_close(device.asnumpy(grad_x), reference.softmax_backward(grad_output, expected), dtype)


OP_CASES = {
    "group_norm_silu": lambda x, w, b, running: F.group_norm(x, 2, w, b, activation="silu"),
    "batch_norm_training": lambda x, w, b, running: F.batch_norm(x, *running, w, b, training=True),
    "batch_norm_eval": lambda x, w, b, running: F.batch_norm(x, *running, w, b, training=False),
    "softmax": lambda x, w, b, running: F.softmax(x * w.reshape(1, 4, 1, 1) + b.sum(), dim=-1),
}


@pytest.mark.parametrize("name", list(OP_CASES))
def test_fused_op_on_the_cuda_device_matches_the_cpu(name, cuda_backend):
    """The whole op (forward, backward, running statistics) on device arrays, as a training
    step on device="cuda" runs it, against the same op on the CPU."""
    device = cuda_backend
    rng = np.random.default_rng(12)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ((3, 4, 5, 5), (4,), (4,))]
    running = [rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)]
    grad = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    results = []
    for to_device, to_host in ((device.asarray, device.asnumpy), (np.asarray, np.asarray)):
        with minigen.fusion(True):
            inputs = [minigen.Tensor(to_device(a), requires_grad=True) for a in arrays]
            stats = [minigen.Tensor(to_device(r.copy())) for r in running]
            out = OP_CASES[name](*inputs, stats)
            out.backward(minigen.Tensor(to_device(grad)))
        results.append([to_host(out.data)] + [to_host(t.grad.data) for t in inputs]
                       + [to_host(s.data) for s in stats])
    for on_device_result, on_cpu_result in zip(*results):
        assert_close(on_device_result, on_cpu_result, np.float32)
