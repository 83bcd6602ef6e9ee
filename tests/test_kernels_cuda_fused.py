"""The CUDA twins of the fused kernels (kernels/cuda/fused.cu and fused.py) against the NumPy
oracle, through the `cuda_backend` fixture (on a GPU, or the CUDA-on-CPU runner): `.kernels` is
minigen.kernels.cuda, `.asarray` / `.asnumpy` move arrays in and out. Where that fixture is not
available the tests skip with the reason. tests/test_cuda_compile.py compiles fused.cu, as
every .cu file, with NVRTC for sm_80, sm_90 and sm_100.
"""
from __future__ import annotations

import numpy as np
import pytest

from minigen.kernels import reference

pytestmark = pytest.mark.cuda

DTYPES = [np.float32, np.float64]
ACTS = ["linear", "relu", "leaky_relu", "silu"]
TOLERANCE = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
             np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}
# (shape, dim): odd sizes, one sample, a bias along the last axis (a linear layer's)
BIAS_CASES = [((3, 5, 7, 9), 1), ((1, 4, 3, 3), 1), ((6, 11), 1), ((2, 7, 13), 2), ((5,), 0)]
PARAM_SHAPES = [(3, 5), (7,), (1,), (2, 3, 3, 3), (1000,)]


@pytest.fixture
def gpu(cuda_backend):
    return cuda_backend


def assert_close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype} != {np.dtype(dtype)}"
    np.testing.assert_allclose(actual, expected, **TOLERANCE[np.dtype(dtype)])


@pytest.mark.parametrize("shape, dim", BIAS_CASES, ids=lambda value: str(value))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_cuda_bias_act_matches_reference(shape, dim, act, dtype, with_bias, gpu):
    rng = np.random.default_rng(40)
    x, grad_output = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    bias = rng.standard_normal(shape[dim]).astype(dtype) if with_bias else None
    x_gpu, grad_gpu = gpu.asarray(x), gpu.asarray(grad_output)
    bias_gpu = gpu.asarray(bias) if with_bias else None
    y = gpu.kernels.bias_act_forward(x_gpu, bias_gpu, dim, act, 0.2)
    assert_close(gpu.asnumpy(y), reference.bias_act_forward(x, bias, dim, act, 0.2), dtype)
    grad_x, grad_bias = gpu.kernels.bias_act_backward(grad_gpu, x_gpu, bias_gpu, dim, act, 0.2)
    expected_x, expected_bias = reference.bias_act_backward(grad_output, x, bias, dim, act, 0.2)
    assert_close(gpu.asnumpy(grad_x), expected_x, dtype)
    if with_bias:
        assert_close(gpu.asnumpy(grad_bias), expected_bias, dtype)
    else:
        assert grad_bias is None


def test_cuda_bias_act_takes_a_non_contiguous_gradient(gpu):
    rng = np.random.default_rng(41)
    x, grad_output = (rng.standard_normal((4, 6, 5)) for _ in range(2))
    bias = rng.standard_normal(6)
    wide = np.zeros((4, 6, 10))
    wide[..., ::2] = grad_output
    grad_gpu = gpu.asarray(wide)[..., ::2]  # strided on the device
    assert not grad_gpu.flags.c_contiguous
    grad_x, grad_bias = gpu.kernels.bias_act_backward(grad_gpu, gpu.asarray(x),
                                                      gpu.asarray(bias), 1, "silu", 0.0)
    expected_x, expected_bias = reference.bias_act_backward(grad_output, x, bias, 1, "silu", 0.0)
    assert_close(gpu.asnumpy(grad_x), expected_x, np.float64)
    assert_close(gpu.asnumpy(grad_bias), expected_bias, np.float64)


def _parameters(rng, dtype):
    return [rng.standard_normal(shape).astype(dtype) for shape in PARAM_SHAPES]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
@pytest.mark.parametrize("decoupled, amsgrad, maximize", [(False, False, False),
                                                          (True, False, False),
                                                          (True, True, True)])
def test_cuda_adam_update_matches_reference_over_three_steps(dtype, decoupled, amsgrad, maximize,
                                                             gpu):
    rng = np.random.default_rng(42)
    params, grads = _parameters(rng, dtype), _parameters(rng, dtype)
    moments = [[np.zeros_like(p) for p in params] for _ in range(3)]
    ours = [[gpu.asarray(a) for a in arrays] for arrays in [params] + moments]
    grads_gpu = [gpu.asarray(g) for g in grads]
    for step in (1, 2, 3):
        settings = (1e-2, 0.9, 0.999, 1e-8, 0.1, decoupled, amsgrad, maximize)
        reference.adam_update(params, grads, *moments[:2], moments[2] if amsgrad else None,
                              [step] * len(params), *settings)
        gpu.kernels.adam_update(ours[0], grads_gpu, ours[1], ours[2],
                                ours[3] if amsgrad else None, [step] * len(params), *settings)
    for expected, actual in zip(params + moments[0] + moments[1], ours[0] + ours[1] + ours[2]):
        assert_close(gpu.asnumpy(actual), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_cuda_sgd_update_matches_reference_over_three_steps(dtype, momentum, nesterov, gpu):
    rng = np.random.default_rng(43)
    params, grads = _parameters(rng, dtype), _parameters(rng, dtype)
    buffers = [np.zeros_like(p) for p in params]
    params_gpu, buffers_gpu = [gpu.asarray(p) for p in params], [gpu.asarray(b) for b in buffers]
    grads_gpu = [gpu.asarray(g) for g in grads]
    for step in range(3):
        first = [step == 0] * len(params)
        settings = (0.1, momentum, 0.0, 0.01, nesterov, False)
        reference.sgd_update(params, grads, buffers, first, *settings)
        gpu.kernels.sgd_update(params_gpu, grads_gpu, buffers_gpu, first, *settings)
    for expected, actual in zip(params, params_gpu):
        assert_close(gpu.asnumpy(actual), expected, dtype)


def test_cuda_updates_write_strided_parameters_and_states_in_place(gpu):
    rng = np.random.default_rng(47)
    param, grad = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    wide = [np.zeros((4, 12)) for _ in range(4)]
    wide[0][:, ::2] = param
    device = [gpu.asarray(w) for w in wide]
    strided = [d[:, ::2] for d in device]  # parameter, exp_avg, exp_avg_sq, EMA shadow
    moments = [np.zeros((4, 6)), np.zeros((4, 6))]
    expected = param.copy()
    for step in (1, 2):
        reference.adam_update([expected], [grad], [moments[0]], [moments[1]], None, [step], 0.1,
                              0.9, 0.99, 1e-8, 0.0, True, False, False)
        gpu.kernels.adam_update([strided[0]], [gpu.asarray(grad)], [strided[1]], [strided[2]],
                                None, [step], 0.1, 0.9, 0.99, 1e-8, 0.0, True, False, False)
    gpu.kernels.ema_update([strided[3]], [strided[0]], 0.5)
    on_host = gpu.asnumpy(device[0])
    assert_close(on_host[:, ::2], expected, np.float64)
    np.testing.assert_array_equal(on_host[:, 1::2], 0)  # the gaps between stay untouched
    assert_close(gpu.asnumpy(device[3])[:, ::2], expected * 0.5, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
def test_cuda_ema_update_matches_reference(dtype, gpu):
    rng = np.random.default_rng(44)
    shadows, params = _parameters(rng, dtype), _parameters(rng, dtype)
    shadows_gpu = [gpu.asarray(s) for s in shadows]
    reference.ema_update(shadows, params, 0.99)
    gpu.kernels.ema_update(shadows_gpu, [gpu.asarray(p) for p in params], 0.99)
    for expected, actual in zip(shadows, shadows_gpu):
        assert_close(gpu.asnumpy(actual), expected, dtype)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
def test_cuda_grad_norm_and_scaling_match_reference(norm_type, dtype, gpu):
    rng = np.random.default_rng(45)
    grads = _parameters(rng, dtype) + [np.zeros((0,), dtype=dtype)]
    grads_gpu = [gpu.asarray(g) for g in grads]
    total = gpu.kernels.grad_norm(grads_gpu, norm_type)
    np.testing.assert_allclose(gpu.asnumpy(total), reference.grad_norm(grads, norm_type),
                               rtol=1e-12)
    scaled = gpu.kernels.scale_grads(grads_gpu, total * 0 + 0.25)
    for expected, actual in zip(reference.scale_grads(grads, 0.25), scaled):
        assert_close(gpu.asnumpy(actual), expected, dtype)


def test_optimizer_ema_clipping_and_bias_act_run_on_device_tensors_as_on_the_cpu(gpu):
    """The whole path on device arrays: F.bias_act forward and backward, clip_grad_norm_, AdamW
    and the EMA with fusion on, against the same steps on NumPy arrays."""
    import minigen
    import minigen.functional as F
    from minigen import nn, optim
    rng = np.random.default_rng(46)
    x0, w0, b0 = rng.standard_normal((4, 3, 5, 5)), rng.standard_normal((3, 3, 1, 1)), \
        rng.standard_normal(3)
    results = []
    for to_device in (gpu.asarray, lambda array: array):
        with minigen.fusion(True):
            weight, bias = (nn.Parameter(minigen.Tensor(to_device(a.copy()))) for a in (w0, b0))
            model = nn.Module()
            model.weight, model.bias = weight, bias
            optimizer = optim.AdamW([weight, bias], lr=0.1, weight_decay=0.1)
            ema = optim.EMA(model, decay=0.9)
            x = minigen.Tensor(to_device(x0))
            for _ in range(2):
                optimizer.zero_grad()
                out = F.bias_act(F.conv2d(x, weight), bias, 1, "silu")
                (out * out).mean().backward()
                nn.utils.clip_grad_norm_([weight, bias], 0.5)
                optimizer.step()
                ema.update()
        results.append([minigen.backend.to_numpy(a) for a in
                        (weight.data, bias.data, ema.shadow["weight"], ema.shadow["bias"])])
    for on_device, on_cpu in zip(*results):
        np.testing.assert_allclose(on_device, on_cpu, rtol=1e-10, atol=1e-12)
