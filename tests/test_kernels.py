"""Kernel tests on the CPU: the NumPy oracle against PyTorch and against itself (backward =
adjoint of forward), then the Numba backend against the oracle on the shared cases of
tests/helpers.py, in float32 and float64, with contiguous and non-contiguous inputs.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigen import kernels
from minigen.kernels import (cpu, cpu_blas, cpu_columns, cpu_conv, gemm_conv, reference,
                             winograd, winograd_parallel, winograd_stride2)
from helpers import (CONV_CASES, POOL_CASES, ConvCase, UPSAMPLE_CASES, assert_close, import_torch,
                     non_contiguous, pair, random_array)

DTYPES = [np.float32, np.float64]
conv_cases = pytest.mark.parametrize("case", CONV_CASES, ids=lambda case: case.name)
pool_cases = pytest.mark.parametrize("case", POOL_CASES, ids=lambda case: case.name)
upsample_cases = pytest.mark.parametrize("shape, scale", UPSAMPLE_CASES)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
STRIDED_CONV_CASES = [case for case in CONV_CASES if max(pair(case.stride)) > 1]


@pytest.fixture(scope="module")
def torch():
    return import_torch()


def inner(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.vdot(a, b))


def conv_inputs(case, dtype=np.float64, seed=0):
    """x, weight and a grad_output for `case`."""
    rng = np.random.default_rng(seed)
    return (random_array(rng, case.input_shape, dtype), random_array(rng, case.weight_shape, dtype),
            random_array(rng, case.output_shape, dtype))


def assert_cpu_conv2d_matches_reference(x, weight, grad_output, args, dtype=None) -> None:
    """The CPU backend's conv2d forward and both of its gradients against the oracle's, with
    geometry args = (stride, padding, dilation, groups)."""
    assert_close(cpu.conv2d_forward(x, weight, *args), reference.conv2d_forward(x, weight, *args),
                 dtype)
    assert_close(cpu.conv2d_backward_input(grad_output, weight, x.shape, *args),
                 reference.conv2d_backward_input(grad_output, weight, x.shape, *args), dtype)
    assert_close(cpu.conv2d_backward_weight(grad_output, x, weight.shape, *args),
                 reference.conv2d_backward_weight(grad_output, x, weight.shape, *args), dtype)


# ---------------------------------------------------------------------------------------
# The dispatch table.
# ---------------------------------------------------------------------------------------
def test_for_array_picks_the_cpu_backend_for_numpy_arrays():
    assert kernels.for_array(np.zeros(3)) is cpu


def test_for_array_names_the_type_it_cannot_handle():
    with pytest.raises(TypeError, match="list"):
        kernels.for_array([1.0, 2.0])


@pytest.mark.parametrize("kernel, stride, channels", [(4, 2, 64), (3, 1, 32), (3, 2, 8),
                                                      (1, 1, 16), (5, 1, 3)],
                         ids=["4x4_stride_2_winograd", "3x3_winograd", "3x3_stride_2_im2col",
                              "1x1", "5x5_im2col"])
def test_cpu_conv2d_of_an_empty_batch_matches_reference(kernel, stride, channels):
    # No samples: no chunks to cut (the chunking had divided by zero); the weight gradient is
    # the sum over no samples.
    rng = np.random.default_rng(36)
    x = np.zeros((0, channels, 12, 12), np.float32)
    weight = random_array(rng, (64, channels, kernel, kernel), np.float32)
    args = ((stride, stride), (1, 1), (1, 1), 1)
    y = cpu.conv2d_forward(x, weight, *args)
    assert y.shape == reference.conv2d_forward(x, weight, *args).shape
    assert_cpu_conv2d_matches_reference(x, weight, np.zeros_like(y), args, np.float32)


@pytest.mark.parametrize("backend", [reference, cpu], ids=["reference", "cpu"])
def test_conv2d_error_names_channels_and_weight_shape(backend):
    x, weight = np.zeros((1, 3, 5, 5)), np.zeros((8, 4, 3, 3))
    with pytest.raises(ValueError, match=r"3 channels but weight expects 4 \(weight shape"):
        backend.conv2d_forward(x, weight, (1, 1), (0, 0), (1, 1), 1)


@pytest.mark.parametrize("backend", [reference, cpu], ids=["reference", "cpu"])
def test_conv2d_refuses_mixed_dtypes(backend):
    x, weight = np.zeros((1, 3, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float64)
    with pytest.raises(TypeError, match="different dtypes"):
        backend.conv2d_forward(x, weight, (1, 1), (0, 0), (1, 1), 1)


# ---------------------------------------------------------------------------------------
# The oracle against PyTorch (float64).
# ---------------------------------------------------------------------------------------
@conv_cases
def test_reference_conv2d_forward_matches_torch(case, torch):
    x, weight, _ = conv_inputs(case)
    stride, padding, dilation, groups = case.args
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight),
                                          stride=stride, padding=padding, dilation=dilation,
                                          groups=groups)
    assert_close(reference.conv2d_forward(x, weight, *case.args), expected.numpy(), np.float64)


@conv_cases
def test_reference_conv2d_backward_matches_torch_autograd(case, torch):
    x, weight, grad_output = conv_inputs(case)
    stride, padding, dilation, groups = case.args
    x_t = torch.from_numpy(x).requires_grad_()
    weight_t = torch.from_numpy(weight).requires_grad_()
    y = torch.nn.functional.conv2d(x_t, weight_t, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups)
    y.backward(torch.from_numpy(grad_output))
    assert_close(reference.conv2d_backward_input(grad_output, weight, x.shape, *case.args),
                 x_t.grad.numpy(), np.float64)
    assert_close(reference.conv2d_backward_weight(grad_output, x, weight.shape, *case.args),
                 weight_t.grad.numpy(), np.float64)


@conv_cases
def test_reference_conv2d_with_bias_and_its_gradient_match_torch(case, torch):
    x, weight, grad_output = conv_inputs(case, seed=5)
    bias = np.random.default_rng(6).standard_normal(weight.shape[0])
    stride, padding, dilation, groups = case.args
    bias_t = torch.from_numpy(bias).requires_grad_()
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), bias_t,
                                   stride=stride, padding=padding, dilation=dilation,
                                   groups=groups)
    y.backward(torch.from_numpy(grad_output))
    assert_close(reference.conv2d_forward(x, weight, *case.args, bias=bias),
                 y.detach().numpy(), np.float64)
    assert_close(reference.conv2d_backward_bias(grad_output), bias_t.grad.numpy(), np.float64)


@conv_cases
def test_reference_conv2d_backward_input_is_conv_transpose2d(case, torch):
    _, weight, grad_output = conv_inputs(case)
    stride, padding, dilation, groups = case.args
    expected = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(grad_output), torch.from_numpy(weight), stride=stride, padding=padding,
        groups=groups, dilation=dilation).numpy()
    actual = reference.conv2d_backward_input(grad_output, weight, expected.shape, *case.args)
    assert_close(actual, expected, np.float64)


@pytest.mark.parametrize("case", STRIDED_CONV_CASES, ids=lambda case: case.name)
def test_reference_conv2d_backward_input_with_output_padding_is_conv_transpose2d(case, torch):
    # output_padding = stride - 1 adds rows and columns that the forward conv never read.
    _, weight, grad_output = conv_inputs(case)
    stride, padding, dilation, groups = case.args
    output_padding = tuple(s - 1 for s in stride)
    expected = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(grad_output), torch.from_numpy(weight), stride=stride, padding=padding,
        output_padding=output_padding, groups=groups, dilation=dilation).numpy()
    actual = reference.conv2d_backward_input(grad_output, weight, expected.shape, *case.args)
    assert_close(actual, expected, np.float64)


@pool_cases
def test_reference_max_pool2d_matches_torch_values_indices_and_gradient(case, torch):
    rng = np.random.default_rng(1)
    x, grad_output = random_array(rng, case.input_shape), random_array(rng, case.output_shape)
    x_t = torch.from_numpy(x).requires_grad_()
    y_t, indices_t = torch.nn.functional.max_pool2d(x_t, *case.args, return_indices=True)
    y_t.backward(torch.from_numpy(grad_output))
    y, indices = reference.max_pool2d_forward(x, *case.args)
    assert_close(y, y_t.detach().numpy(), np.float64)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, indices_t.numpy())
    assert_close(reference.max_pool2d_backward(grad_output, indices, x.shape),
                 x_t.grad.numpy(), np.float64)


def test_reference_max_pool2d_ties_pick_the_first_position_like_torch(torch):
    x = np.zeros((1, 1, 5, 5))
    _, indices = reference.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1))
    _, expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1,
                                                 return_indices=True)
    np.testing.assert_array_equal(indices, expected.numpy())


@pool_cases
def test_reference_avg_pool2d_matches_torch_value_and_gradient(case, torch):
    rng = np.random.default_rng(2)
    x, grad_output = random_array(rng, case.input_shape), random_array(rng, case.output_shape)
    x_t = torch.from_numpy(x).requires_grad_()
    y_t = torch.nn.functional.avg_pool2d(x_t, *case.args)
    y_t.backward(torch.from_numpy(grad_output))
    assert_close(reference.avg_pool2d_forward(x, *case.args), y_t.detach().numpy(), np.float64)
    assert_close(reference.avg_pool2d_backward(grad_output, x.shape, *case.args),
                 x_t.grad.numpy(), np.float64)


@upsample_cases
def test_reference_upsample_nearest2d_matches_torch_value_and_gradient(shape, scale, torch):
    rng = np.random.default_rng(3)
    x = random_array(rng, shape)
    x_t = torch.from_numpy(x).requires_grad_()
    y_t = torch.nn.functional.interpolate(x_t, scale_factor=scale, mode="nearest")
    grad_output = random_array(rng, tuple(y_t.shape))
    y_t.backward(torch.from_numpy(grad_output))
    assert_close(reference.upsample_nearest2d_forward(x, scale), y_t.detach().numpy(),
                 np.float64)
    assert_close(reference.upsample_nearest2d_backward(grad_output, scale), x_t.grad.numpy(),
                 np.float64)


# ---------------------------------------------------------------------------------------
# The oracle's backward functions are the adjoints of its forward: <A x, g> == <x, A^T g>.
# ---------------------------------------------------------------------------------------
@conv_cases
def test_reference_conv2d_backward_input_is_adjoint_of_forward(case):
    x, weight, grad_output = conv_inputs(case, seed=4)
    forward = reference.conv2d_forward(x, weight, *case.args)
    backward = reference.conv2d_backward_input(grad_output, weight, x.shape, *case.args)
    assert inner(forward, grad_output) == pytest.approx(inner(x, backward), rel=1e-10)


@conv_cases
def test_reference_conv2d_backward_weight_is_adjoint_of_forward(case):
    x, weight, grad_output = conv_inputs(case, seed=5)
    forward = reference.conv2d_forward(x, weight, *case.args)
    backward = reference.conv2d_backward_weight(grad_output, x, weight.shape, *case.args)
    assert inner(forward, grad_output) == pytest.approx(inner(weight, backward), rel=1e-10)


@pool_cases
def test_reference_avg_pool2d_backward_is_adjoint_of_forward(case):
    rng = np.random.default_rng(6)
    x, grad_output = random_array(rng, case.input_shape), random_array(rng, case.output_shape)
    forward = reference.avg_pool2d_forward(x, *case.args)
    backward = reference.avg_pool2d_backward(grad_output, x.shape, *case.args)
    assert inner(forward, grad_output) == pytest.approx(inner(x, backward), rel=1e-10)


@pool_cases
def test_reference_max_pool2d_backward_is_adjoint_of_gathering_at_indices(case):
    rng = np.random.default_rng(7)
    x, other, grad_output = (random_array(rng, shape) for shape in
                             (case.input_shape, case.input_shape, case.output_shape))
    _, indices = reference.max_pool2d_forward(x, *case.args)
    planes = case.input_shape[0] * case.input_shape[1]
    gathered = np.take_along_axis(other.reshape(planes, -1), indices.reshape(planes, -1), axis=1)
    backward = reference.max_pool2d_backward(grad_output, indices, x.shape)
    assert inner(gathered, grad_output.reshape(planes, -1)) == pytest.approx(
        inner(other, backward), rel=1e-10)


@upsample_cases
def test_reference_upsample_nearest2d_backward_is_adjoint_of_forward(shape, scale):
    rng = np.random.default_rng(8)
    x = random_array(rng, shape)
    grad_output = random_array(rng, (*shape[:2], shape[2] * scale[0], shape[3] * scale[1]))
    forward = reference.upsample_nearest2d_forward(x, scale)
    backward = reference.upsample_nearest2d_backward(grad_output, scale)
    assert inner(forward, grad_output) == pytest.approx(inner(x, backward), rel=1e-10)


# ---------------------------------------------------------------------------------------
# The Numba backend against the oracle.
# ---------------------------------------------------------------------------------------
@conv_cases
@dtypes
def test_cpu_conv2d_forward_matches_reference(case, dtype):
    x, weight, _ = conv_inputs(case, dtype, seed=9)
    actual = cpu.conv2d_forward(x, weight, *case.args)
    assert_close(actual, reference.conv2d_forward(x, weight, *case.args), dtype)


@conv_cases
@dtypes
def test_cpu_conv2d_backward_input_matches_reference(case, dtype):
    _, weight, grad_output = conv_inputs(case, dtype, seed=10)
    shape = case.input_shape
    actual = cpu.conv2d_backward_input(grad_output, weight, shape, *case.args)
    assert_close(actual, reference.conv2d_backward_input(grad_output, weight, shape, *case.args),
                 dtype)


@conv_cases
@dtypes
def test_cpu_conv2d_backward_weight_matches_reference(case, dtype):
    x, weight, grad_output = conv_inputs(case, dtype, seed=11)
    actual = cpu.conv2d_backward_weight(grad_output, x, weight.shape, *case.args)
    expected = reference.conv2d_backward_weight(grad_output, x, weight.shape, *case.args)
    assert_close(actual, expected, dtype)


@conv_cases
@dtypes
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_cpu_conv2d_with_bias_and_its_gradient_match_reference(case, dtype, layout):
    x, weight, grad_output = conv_inputs(case, dtype, seed=14)
    bias = random_array(np.random.default_rng(15), weight.shape[0], dtype)
    if layout == "non_contiguous":
        x, grad_output, bias = (non_contiguous(array) for array in (x, grad_output, bias))
    actual = cpu.conv2d_forward(x, weight, *case.args, bias=bias)
    assert_close(actual, reference.conv2d_forward(x, weight, *case.args, bias=bias), dtype)
    assert_close(cpu.conv2d_backward_bias(grad_output), reference.conv2d_backward_bias(grad_output),
                 dtype)


def test_cpu_conv2d_with_bias_adds_it_to_an_empty_batch_and_sums_zero_for_its_gradient():
    weight, bias = np.ones((3, 2, 3, 3)), np.ones(3)
    y = cpu.conv2d_forward(np.ones((0, 2, 5, 5)), weight, (1, 1), (1, 1), (1, 1), 1, bias=bias)
    assert y.shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(cpu.conv2d_backward_bias(np.ones((0, 3, 5, 5))), np.zeros(3))


@pytest.mark.parametrize("backend", [cpu, reference], ids=["cpu", "reference"])
def test_conv2d_names_both_shapes_when_the_bias_does_not_fit(backend):
    x, weight = np.ones((1, 2, 4, 4)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"bias has shape \(4,\).*\(3, 2, 3, 3\)"):
        backend.conv2d_forward(x, weight, (1, 1), (1, 1), (1, 1), 1, bias=np.ones(4))
    with pytest.raises(TypeError, match="dtypes"):
        backend.conv2d_forward(x, weight, (1, 1), (1, 1), (1, 1), 1,
                               bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(3, 4\)"):
        backend.conv2d_backward_bias(np.ones((3, 4)))


@conv_cases
def test_cpu_conv2d_wide_columns_by_loops_match_reference(case, monkeypatch):
    # Wide columns too large for a gather table are copied by the im2col loops.
    monkeypatch.setattr(cpu_conv, "GATHER_TABLE_BYTES", 0)
    x, weight, grad_output = conv_inputs(case, seed=13)
    args = case.args
    assert_close(cpu.conv2d_forward(x, weight, *args), reference.conv2d_forward(x, weight, *args))
    assert_close(cpu.conv2d_backward_weight(grad_output, x, weight.shape, *args),
                 reference.conv2d_backward_weight(grad_output, x, weight.shape, *args))


@pytest.mark.parametrize("input_shape, weight_shape, stride", [
    ((3, 4, 5, 5), (6, 4, 5, 5), (1, 1)), ((1, 2, 3, 4), (1, 2, 3, 4), (2, 3)),
    ((2, 1, 1, 1), (3, 1, 1, 1), (1, 1))])
@dtypes
def test_cpu_conv2d_with_a_kernel_covering_the_input_matches_reference(input_shape, weight_shape,
                                                                       stride, dtype):
    # One output pixel per sample: the three maps are plain matrix products.
    rng = np.random.default_rng(26)
    x, weight = random_array(rng, input_shape, dtype), random_array(rng, weight_shape, dtype)
    grad_output = random_array(rng, (input_shape[0], weight_shape[0], 1, 1), dtype)
    args = (stride, (0, 0), (1, 1), 1)
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, args, dtype)


@pytest.mark.parametrize("channels_in, channels_out", [(6, 5), (1, 5), (30, 1)])
def test_cpu_conv2d_backward_input_growing_the_image_matches_reference(channels_in, channels_out):
    # A transposed convolution from 1x1 to 5x5 (a generator's first layer): as a convolution of
    # the input padded by 4 or as one GEMM and a scatter, whichever has fewer columns.
    rng = np.random.default_rng(25)
    grad_output = random_array(rng, (3, channels_out, 1, 1))
    weight = random_array(rng, (channels_out, channels_in, 5, 5))
    args = ((1, 1), (0, 0), (1, 1), 1)
    assert_close(cpu.conv2d_backward_input(grad_output, weight, (3, channels_in, 5, 5), *args),
                 reference.conv2d_backward_input(grad_output, weight, (3, channels_in, 5, 5),
                                                 *args))


def test_cpu_gather_table_indexes_the_padded_input():
    padded = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    table = cpu_columns.gather_table(2, 3, (5, 6), (2, 3), (1, 2), (2, 2), (2, 1))
    columns = padded.reshape(-1)[table].reshape(3, 2, 3, 2, 2, 2)  # c, i, j, b, oh, ow
    for c, i, j, b, oh, ow in np.ndindex(columns.shape):
        assert columns[c, i, j, b, oh, ow] == padded[b, c, oh * 2 + i, ow + 2 * j]
    assert not table.flags.writeable


@conv_cases
def test_cpu_conv2d_accepts_non_contiguous_arrays(case):
    x, weight, grad_output = (non_contiguous(array) for array in conv_inputs(case, seed=12))
    args = case.args
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, args)


def test_cpu_conv2d_backward_input_with_output_padding_matches_reference():
    # conv_transpose2d with stride 2 and output_padding 1 asks for one extra row and column.
    rng = np.random.default_rng(13)
    grad_output, weight = random_array(rng, (2, 4, 4, 4)), random_array(rng, (4, 3, 3, 3))
    args, shape = ((2, 2), (1, 1), (1, 1), 1), (2, 3, 8, 8)
    assert_close(cpu.conv2d_backward_input(grad_output, weight, shape, *args),
                 reference.conv2d_backward_input(grad_output, weight, shape, *args))


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[1], CONV_CASES[8]],
                         ids=lambda case: case.name)
def test_cpu_conv2d_splits_the_batch_into_chunks_when_columns_exceed_budget(case, monkeypatch):
    # A budget this small forces one sample per chunk, so every chunk boundary is crossed.
    monkeypatch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", 1)
    x, weight, grad_output = conv_inputs(case, seed=14)
    args = case.args
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, args)


# ---------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3): every 3x3 stride-1 case, with the channel thresholds that normally keep
# small convolutions on im2col lowered to zero, plus the edges of the tiling.
# ---------------------------------------------------------------------------------------
WINOGRAD_CASES = [case for case in CONV_CASES
                  if winograd.applies(case.weight_shape, pair(case.stride), pair(case.dilation))]
WINOGRAD_CASES += [
    ConvCase("winograd_no_padding_odd_output", 2, 3, 4, 9, 8, padding=0),
    ConvCase("winograd_padding_2", 2, 3, 4, 6, 7, padding=2),
    ConvCase("winograd_one_output_pixel", 3, 2, 3, 3, 3, padding=0),
    ConvCase("winograd_one_output_row", 1, 2, 3, 3, 10, padding=0),
    ConvCase("winograd_rectangular_padding", 2, 2, 3, 5, 12, padding=(0, 1)),
]


@pytest.fixture
def always_winograd(monkeypatch):
    monkeypatch.setattr(cpu_conv, "WINOGRAD_MIN_CHANNELS", 0)


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda case: case.name)
@dtypes
@pytest.mark.parametrize("budget", [1, 2**22], ids=["one_sample_chunks", "whole_batch"])
@pytest.mark.parametrize("last_below, parallel", [(0, False), (10**6, False), (0, True),
                                                  (10**6, True)],
                         ids=["channels_first", "channels_last", "channels_first_one_loop",
                              "channels_last_one_loop"])
@pytest.mark.parametrize("staged_from", [0, 10**9], ids=["staged_output", "direct_output"])
def test_cpu_winograd_matches_reference(case, dtype, budget, last_below, parallel, staged_from,
                                        always_winograd, monkeypatch):
    monkeypatch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", budget)
    monkeypatch.setattr(cpu_conv, "WINOGRAD_CHANNELS_LAST_TILES", last_below)
    monkeypatch.setattr(cpu_conv, "PARALLEL_WINOGRAD", parallel)
    monkeypatch.setattr(cpu_conv, "STAGED_OUTPUT_PIXELS", staged_from)
    if parallel:  # two threads, so that the weight gradient takes the one loop too
        monkeypatch.setattr(cpu_conv, "THREADS", 2)
    x, weight, grad_output = conv_inputs(case, dtype, seed=17)
    args = case.args
    assert cpu_conv._winograd_pays(weight.shape, *args[::2], args[3])
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, args, dtype)
    bias = np.linspace(-1, 1, weight.shape[0]).astype(dtype)  # added by the output transform
    assert_close(cpu.conv2d_forward(x, weight, *args, bias=bias),
                 reference.conv2d_forward(x, weight, *args, bias=bias), dtype)


@pytest.mark.skipif(not cpu_blas.available, reason="NumPy's CBLAS sgemm not found")
@pytest.mark.parametrize("threads", [1, 3])
def test_cpu_winograd_one_loop_runs_its_chunks_and_matches_reference(threads, always_winograd,
                                                                    monkeypatch):
    # One-sample chunks on three threads, or the whole batch as one chunk.
    monkeypatch.setattr(cpu_conv, "THREADS", threads)
    monkeypatch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", 1 if threads > 1 else 2**22)
    calls, weight_calls = [], []
    original, original_weight = winograd_parallel.forward, winograd_parallel.backward_weight
    monkeypatch.setattr(winograd_parallel, "forward",
                        lambda *args: calls.append(args[5].size) or original(*args))
    monkeypatch.setattr(winograd_parallel, "backward_weight",
                        lambda *args: weight_calls.append(args[4].size)
                        or original_weight(*args))
    rng = np.random.default_rng(27)
    x = random_array(rng, (7, 5, 6, 5)).astype(np.float32)
    weight = random_array(rng, (4, 5, 3, 3)).astype(np.float32)
    grad_output = random_array(rng, (7, 4, 6, 5)).astype(np.float32)
    args = ((1, 1), (1, 1), (1, 1), 1)
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, args, np.float32)
    chunks = 7 if threads > 1 else 1
    assert calls == [chunks, chunks]  # the forward and the input gradient
    assert weight_calls == [chunks]


@pytest.mark.parametrize("input_shape, channels_out, samples", [
    ((64, 128, 8, 8), 128, 16),   # 16 tiles a sample: 256 rows for the 128-channel weights
    ((32, 64, 16, 16), 64, 2),    # 64 tiles, 512 KiB a sample: the 1 MiB budget
    ((64, 32, 32, 32), 32, 1),    # 1 MiB a sample: one per chunk
])
def test_cpu_winograd_chunks_fit_the_budget_but_give_the_weights_enough_rows(
        input_shape, channels_out, samples, monkeypatch):
    monkeypatch.setattr(cpu_conv, "THREADS", 1)
    plan = cpu_conv._WinogradPlan(input_shape, channels_out, (1, 1), 1, input_shape[2:],
                                  np.dtype(np.float32))
    starts, counts, _ = cpu_conv._parallel_chunks(plan.batch, plan.sample_bytes, plan.macs,
                                                  plan.budget)
    assert counts.max() == samples
    assert (counts.max() * plan.tiles >= cpu_conv.WINOGRAD_ROWS_PER_CHANNEL * channels_out
            or counts.max() * plan.sample_bytes <= cpu_conv.WINOGRAD_BUDGET_BYTES)


@pytest.mark.parametrize("threads, sizes", [(1, [9]), (2, [5, 4]), (5, [2, 2, 2, 2, 1])])
def test_cpu_conv2d_gives_every_thread_a_chunk_of_the_batch(threads, sizes, monkeypatch):
    monkeypatch.setattr(cpu_conv, "THREADS", threads)
    assert [count for _, count in cpu_conv._chunks(batch=9, per_sample_bytes=1)] == sizes


def test_cpu_conv2d_chunks_share_evenly_between_threads(monkeypatch):
    # 64 samples whose budget allows 21 each: four chunks of 16 keep two threads equally busy
    # (21, 21, 21, 1 would not); one thread gets the same budget-bound chunks.
    per_sample = cpu_conv.COLUMNS_BUDGET_BYTES // 21
    for threads in (1, 2):
        monkeypatch.setattr(cpu_conv, "THREADS", threads)
        assert [count for _, count in cpu_conv._chunks(64, per_sample)] == [16] * 4
    monkeypatch.setattr(cpu_conv, "THREADS", 2)
    assert [count for _, count in cpu_conv._chunks(7, 1)] == [4, 3]
    assert [count for _, count in cpu_conv._chunks(1, 10**12)] == [1]


# ---------------------------------------------------------------------------------------
# Strided im2col and col2im over the input split in phases of the stride, and the forward's
# wide GEMM for few output pixels.
# ---------------------------------------------------------------------------------------
STRIDE_PHASE_CASES = [
    ConvCase("dcgan_4x4_stride_2_padding_1", 3, 5, 6, 16, 16, 4, 2, 1),
    ConvCase("4x4_stride_2_odd_size", 2, 3, 4, 11, 9, 4, 2, 1),
    ConvCase("batch_1_stride_2_no_padding", 1, 3, 2, 7, 8, 3, 2, 0),
    ConvCase("stride_3_padding_2_dilation_2", 2, 2, 3, 13, 10, 3, 3, 2, 2),
    ConvCase("stride_2_3_rectangular", 2, 4, 6, 9, 14, (3, 4), (2, 3), (1, 2), groups=2),
    ConvCase("stride_2_kernel_larger_than_padded_phase", 2, 2, 2, 5, 5, 5, 2, 2),
    ConvCase("1x1_stride_2", 2, 4, 3, 7, 6, 1, 2, 0),
    ConvCase("1x1_stride_1_padding_1", 2, 4, 3, 5, 5, 1, 1, 1),
    ConvCase("stride_1_dilation_2_padding_past_reach", 2, 3, 2, 6, 7, 2, 1, 3, 2),
]


@pytest.mark.parametrize("case", STRIDE_PHASE_CASES, ids=lambda case: case.name)
def test_cpu_pad_split_holds_every_phase_of_the_padded_input(case):
    x, _, _ = conv_inputs(case, np.float32, seed=20)
    stride, padding, _, _ = case.args
    plan = cpu_conv._Im2colPlan(x.shape, case.weight_shape, stride, padding, (1, 1), 1, (1, 1),
                                x.dtype)
    split = plan.padded(x, 1 if case.batch > 1 else 0, 1)
    rows, row_w = split.shape[4:]
    padded = np.zeros((1, case.in_channels, rows * stride[0], row_w * stride[1]), x.dtype)
    n = 1 if case.batch > 1 else 0
    padded[:, :, padding[0]:padding[0] + case.height, padding[1]:padding[1] + case.width] = \
        x[n:n + 1]
    for r_h in range(stride[0]):
        for r_w in range(stride[1]):
            np.testing.assert_array_equal(split[:, :, r_h, r_w], padded[:, :, r_h::stride[0],
                                                                         r_w::stride[1]])
    grad_x = np.full_like(x, np.nan)
    cpu_columns.unsplit(split, grad_x, n, padding)
    np.testing.assert_array_equal(grad_x[n:n + 1], x[n:n + 1])


@pytest.mark.parametrize("case", STRIDE_PHASE_CASES, ids=lambda case: case.name)
@pytest.mark.parametrize("dtype, one_loop", [(np.float64, False), (np.float32, False),
                                             (np.float32, True)],
                         ids=["float64_pool", "float32_pool", "float32_one_loop"])
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
@pytest.mark.parametrize("wide_below", [0, 2**20], ids=["per_sample_gemm", "wide_gemm"])
@pytest.mark.parametrize("threads, budget", [(1, 2**22), (2, 1), (2, 2**22)],
                         ids=["one_chunk", "one_sample_chunks_two_threads",
                              "uneven_chunks_two_threads"])
@pytest.mark.parametrize("table_bytes", [0, 2**30], ids=["im2col_loops", "gather_table"])
def test_cpu_strided_conv2d_matches_reference(case, dtype, one_loop, layout, wide_below, threads,
                                              budget, table_bytes, monkeypatch):
    # one_loop: the chunks in im2col_parallel's loops (float32, no groups), else the pool's.
    monkeypatch.setattr(cpu_conv, "PARALLEL_IM2COL", one_loop)
    monkeypatch.setattr(cpu_conv, "WIDE_GEMM_PIXELS", wide_below)
    monkeypatch.setattr(cpu_conv, "GATHER_TABLE_BYTES", table_bytes)
    monkeypatch.setattr(cpu_conv, "THREADS", threads)
    monkeypatch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", budget)
    monkeypatch.setattr(cpu_conv, "WINOGRAD_MIN_CHANNELS", 10**6)
    x, weight, grad_output = conv_inputs(case, dtype, seed=21)
    if layout == "non_contiguous":
        x, weight, grad_output = (non_contiguous(array) for array in (x, weight, grad_output))
    args = case.args
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, args, dtype)


_THREADING_PROBE = """
import os, sys
import numba, numpy as np
from minigen.kernels import cpu
cpu.group_norm_forward(np.ones((2, 4, 3, 3), np.float32), 2, None, None, 1e-5, True)
print(numba.threading_layer(), os.environ.get("GOMP_SPINCOUNT"))
"""


def _threading_of_a_fresh_process(**env) -> list[str]:
    import subprocess
    import sys
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", _THREADING_PROBE], capture_output=True,
                            text=True, timeout=120, env={**environment, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_cpu_backend_runs_numba_on_openmp_with_a_short_spin():
    layer, spin = _threading_of_a_fresh_process()
    assert layer in ("omp", "workqueue")  # workqueue only where no OpenMP runtime loads
    assert spin == str(cpu.SPIN_COUNT)


def test_cpu_backend_leaves_an_explicit_threading_choice_alone():
    assert _threading_of_a_fresh_process(NUMBA_THREADING_LAYER="workqueue",
                                         GOMP_SPINCOUNT="123") == ["workqueue", "123"]


_MEMORY_PROBE = """
import resource
import numpy as np
import minigen.kernels.cpu as cpu
def round_of_held_arrays():
    held = [np.ones(2**17, np.float32) for _ in range(40)]  # 512 KiB each, all alive at once
    del held
round_of_held_arrays()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_of_held_arrays()
print(cpu.KEEPS_FREED_MEMORY, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _memory_of_a_fresh_process(**env) -> tuple[bool, int]:
    import subprocess
    import sys
    environment = {key: value for key, value in os.environ.items()
                   if key not in cpu.MALLOC_SETTINGS + ("GLIBC_TUNABLES",)}
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True,
                            text=True, timeout=120, env={**environment, **env})
    assert result.returncode == 0, result.stderr
    kept, faults = result.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not cpu.KEEPS_FREED_MEMORY, reason="needs glibc's mallopt")
def test_cpu_backend_keeps_freed_activations_memory_so_new_arrays_do_not_fault_pages_in():
    kept, faults = _memory_of_a_fresh_process()
    assert kept
    # 4 rounds of 40 arrays of 128 pages each fault 20,480 times when every one is fresh.
    assert faults < 2_000, f"{faults} page faults"


@pytest.mark.skipif(not cpu.KEEPS_FREED_MEMORY, reason="needs glibc's mallopt")
def test_cpu_backend_leaves_a_malloc_setting_of_the_environment_alone():
    kept, faults = _memory_of_a_fresh_process(MALLOC_MMAP_THRESHOLD_="131072")
    assert not kept
    assert faults > 10_000  # the environment's small threshold: every array fresh from mmap


def _conv_sum_in_child(queue, x, weight):
    queue.put(float(cpu.conv2d_forward(x, weight, (1, 1), (1, 1), (1, 1), 1).sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_cpu_conv2d_threads_work_in_a_forked_child(monkeypatch):
    # The child inherits the parent's thread pool object but not its threads.
    import multiprocessing
    monkeypatch.setattr(cpu_conv, "THREADS", 2)
    x, weight = np.ones((4, 2, 5, 5)), np.ones((3, 2, 3, 3))
    expected = float(cpu.conv2d_forward(x, weight, (1, 1), (1, 1), (1, 1), 1).sum())
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_conv_sum_in_child, args=(queue, x, weight))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child hung in conv2d"
    assert queue.get(timeout=5) == expected


def test_cpu_winograd_is_as_accurate_as_im2col_in_float32_with_many_channels():
    # 128 input channels: rounding in the transforms must not grow with the sum.
    rng = np.random.default_rng(18)
    x, weight = random_array(rng, (2, 128, 10, 10)), random_array(rng, (16, 128, 3, 3))
    exact = reference.conv2d_forward(x, weight, (1, 1), (1, 1), (1, 1), 1)
    assert cpu_conv._winograd_pays(weight.shape, (1, 1), (1, 1), 1) is False
    im2col = cpu.conv2d_forward(x.astype(np.float32), weight.astype(np.float32), (1, 1), (1, 1),
                                (1, 1), 1)
    winograd_y = cpu_conv._winograd_forward(x.astype(np.float32), weight.astype(np.float32), (1, 1),
                                       1, (10, 10))
    im2col_error, winograd_error = (np.abs(y - exact).max() for y in (im2col, winograd_y))
    assert winograd_error < 4 * im2col_error + 1e-6


def _signed_sums(patches, rows, dtype):
    """(R d R^T)[r, s] of every patch d = patches[..., i, j, c], summed term by term in `dtype`
    in the order the channels-last transforms add them (row terms outer, column terms inner),
    R given by rows of (first, sign, second, sign[, terms])."""
    out = {}
    for r, row in enumerate(rows):
        for s, column in enumerate(rows):
            row_terms = [(row[0], row[1]), (row[2], row[3])][:row[4] if len(row) > 4 else 2]
            column_terms = [(column[0], column[1]), (column[2], column[3])][
                :column[4] if len(column) > 4 else 2]
            total = None
            for i, sign_i in row_terms:
                for j, sign_j in column_terms:
                    term = dtype(sign_i * sign_j) * patches[..., i, j, :].astype(dtype)
                    total = term if total is None else total + term
            out[r, s] = total
    return out


def _two_roundings_differ(patches, rows):
    """Whether summing in float64 and rounding once differs from summing in float32 somewhere:
    that is, whether the bit-exact comparison below can tell the two apart."""
    in_float32 = _signed_sums(patches, rows, np.float32)
    in_float64 = _signed_sums(patches, rows, np.float64)
    return any(not np.array_equal(in_float32[key], in_float64[key].astype(np.float32))
               for key in in_float32)


def test_cpu_winograd_input_transform_of_float32_adds_in_float32():
    # The signs once came as float64, which turned the whole channels-last input transform into
    # float64 arithmetic, converted both ways: 41 against 26 us a 32x32 sample of 32 channels.
    # Summed in float32, in order, the result is exact to the bit. (The transform reads the
    # image's columns split by parity, [h, w % 2, w // 2].)
    rng = np.random.default_rng(40)
    batch, tiles_hw, channels = 2, (3, 4), 37
    image = rng.standard_normal((batch, 8, 10, channels)).astype(np.float32)
    tiles = tiles_hw[0] * tiles_hw[1]
    planes = np.zeros((16, batch * tiles * channels), np.float32)
    split = np.ascontiguousarray(image.reshape(batch, 8, 5, 2, channels).swapaxes(2, 3))
    winograd.transform_input_channels_last(split, planes, tiles_hw)
    patches = np.stack([image[:, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4]
                        for ty in range(tiles_hw[0]) for tx in range(tiles_hw[1])], axis=1)
    assert _two_roundings_differ(patches, winograd.B_T_ROWS)
    for (r, s), expected in _signed_sums(patches, winograd.B_T_ROWS, np.float32).items():
        np.testing.assert_array_equal(planes[4 * r + s].reshape(batch, tiles, channels), expected)


@pytest.mark.parametrize("out_hw", [(6, 4), (5, 7), (1, 1)])
def test_cpu_winograd_grad_output_transform_channels_last_is_the_channels_first_one(out_hw):
    # The split, channels-last copy of grad_output (zero past its edge) transformed by
    # transform_split gives transform_grad_output's planes, transposed.
    rng = np.random.default_rng(42)
    grad_output = rng.standard_normal((3, 5, *out_hw))
    tiles_hw = winograd.tiles(out_hw)
    padded = cpu_columns.copy_interior_split(
        grad_output, 1, 2, np.zeros((2, 2 * tiles_hw[0], 2, tiles_hw[1], 5)), (0, 0))
    tiles = tiles_hw[0] * tiles_hw[1]
    planes = winograd.transform_grad_output_channels_last(
        padded, np.full((16, 2 * tiles * 5), np.nan), tiles_hw)
    expected = winograd.transform_grad_output(grad_output, 1, np.zeros((16, 5, 2 * tiles)),
                                              tiles_hw)
    np.testing.assert_allclose(planes.reshape(16, 2 * tiles, 5).swapaxes(1, 2), expected,
                               rtol=1e-14, atol=1e-14)


def test_cpu_stride2_tile_transform_of_float32_adds_in_float32():
    # As above, for the phase split's 3x3 transform (it had the same float64 signs).
    rng = np.random.default_rng(41)
    batch, tiles_hw, channels, blocks = 2, (2, 3), 19, 4
    padded = rng.standard_normal((batch, 12, 14, channels)).astype(np.float32)
    tiles = tiles_hw[0] * tiles_hw[1]
    for block, (p, q) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        planes = np.zeros((9, batch * tiles * blocks * channels), np.float32)
        winograd_stride2.transform_tiles(padded, batch, planes, tiles_hw, (p, q), 4, 2,
                                         winograd_stride2.B_T_ROWS, block, blocks)
        patches = np.stack([padded[:, p + 4 * ty:p + 4 * ty + 5:2, q + 4 * tx:q + 4 * tx + 5:2]
                            for ty in range(tiles_hw[0]) for tx in range(tiles_hw[1])], axis=1)
        assert _two_roundings_differ(patches, winograd_stride2.B_T_ROWS)
        for (r, s), expected in _signed_sums(patches, winograd_stride2.B_T_ROWS,
                                             np.float32).items():
            written = planes[3 * r + s].reshape(batch, tiles, blocks, channels)[:, :, block]
            np.testing.assert_array_equal(written, expected)


def test_cpu_winograd_is_chosen_for_3x3_stride_1_with_32_or_more_channels_per_group():
    assert cpu_conv._winograd_pays((64, 32, 3, 3), (1, 1), (1, 1), 1)
    assert not cpu_conv._winograd_pays((16, 64, 3, 3), (1, 1), (1, 1), 1)
    assert not cpu_conv._winograd_pays((64, 32, 3, 3), (1, 1), (1, 1), 4)  # 16 outputs per group
    assert not cpu_conv._winograd_pays((64, 64, 3, 3), (2, 2), (1, 1), 1)
    assert not cpu_conv._winograd_pays((64, 64, 3, 3), (1, 1), (2, 2), 1)
    assert not cpu_conv._winograd_pays((64, 64, 5, 5), (1, 1), (1, 1), 1)


# ---------------------------------------------------------------------------------------
# 4x4 stride 2: Winograd F(2x2, 2x2) over the phases of the stride (winograd_stride2.py), in
# float32, with the channel threshold lowered to zero; the edges of both tilings: odd outputs
# (half tiles), paddings 0 to 3, one output pixel, rectangles, and an input row or column that
# no output reads (H + 2 * padding - 4 odd).
# ---------------------------------------------------------------------------------------
STRIDE2_CASES = [case for case in CONV_CASES
                 if winograd_stride2.applies(case.weight_shape, pair(case.stride),
                                             pair(case.dilation)) and case.groups == 1]
STRIDE2_CASES += [
    ConvCase("stride2_dcgan_14_to_7", 2, 16, 8, 14, 14, 4, 2, 1),
    ConvCase("stride2_odd_input", 3, 5, 7, 9, 11, 4, 2, 1),
    ConvCase("stride2_no_padding", 2, 3, 4, 8, 9, 4, 2, 0),
    ConvCase("stride2_padding_2", 1, 4, 3, 7, 6, 4, 2, 2),
    ConvCase("stride2_padding_3", 2, 3, 5, 3, 4, 4, 2, 3),
    ConvCase("stride2_one_output_pixel", 2, 6, 5, 2, 2, 4, 2, 1),
    ConvCase("stride2_rectangular_padding", 2, 4, 6, 6, 10, 4, 2, (0, 1)),
    ConvCase("stride2_one_channel_each", 1, 1, 1, 6, 6, 4, 2, 1),
]


@pytest.fixture
def always_stride2(monkeypatch):
    monkeypatch.setattr(cpu_conv, "STRIDE2_WINOGRAD_MIN_CHANNELS", 0)


def record_stride2_calls(monkeypatch) -> list:
    """The names of winograd_stride2's three convolutions, in the order they are called."""
    calls = []
    for name in ("forward", "backward_input", "backward_weight"):
        original = getattr(winograd_stride2, name)
        monkeypatch.setattr(winograd_stride2, name, lambda *args, original=original, name=name:
                            calls.append(name) or original(*args))
    return calls


@pytest.mark.skipif(not cpu_blas.available, reason="NumPy's CBLAS sgemm not found")
@pytest.mark.parametrize("case", STRIDE2_CASES, ids=lambda case: case.name)
@pytest.mark.parametrize("budget, threads", [(1, 3), (2**22, 1), (2**22, 2)],
                         ids=["one_sample_chunks_3_threads", "whole_batch", "two_threads"])
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_cpu_stride2_winograd_matches_reference(case, budget, threads, layout, always_stride2,
                                                monkeypatch):
    monkeypatch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", budget)
    monkeypatch.setattr(cpu_conv, "STRIDE2_BUDGET_BYTES", budget)
    monkeypatch.setattr(cpu_conv, "THREADS", threads)
    calls = record_stride2_calls(monkeypatch)
    x, weight, grad_output = conv_inputs(case, np.float32, seed=31)
    if layout == "non_contiguous":
        x, weight, grad_output = (non_contiguous(array) for array in (x, weight, grad_output))
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, case.args, np.float32)
    assert calls == ["forward", "backward_input", "backward_weight"]


@pytest.mark.skipif(not cpu_blas.available, reason="NumPy's CBLAS sgemm not found")
def test_cpu_stride2_winograd_is_as_accurate_as_im2col_in_float32_with_many_channels(
        monkeypatch):
    # 128 channels, 4 phases each: the transforms only add and subtract.
    rng = np.random.default_rng(32)
    x, weight = random_array(rng, (2, 128, 12, 12)), random_array(rng, (16, 128, 4, 4))
    grad_output = random_array(rng, (2, 16, 6, 6))
    args = ((2, 2), (1, 1), (1, 1), 1)
    exact = [reference.conv2d_forward(x, weight, *args),
             reference.conv2d_backward_input(grad_output, weight, x.shape, *args),
             reference.conv2d_backward_weight(grad_output, x, weight.shape, *args)]
    x, weight, grad_output = (array.astype(np.float32) for array in (x, weight, grad_output))

    def errors():
        results = [cpu.conv2d_forward(x, weight, *args),
                   cpu.conv2d_backward_input(grad_output, weight, x.shape, *args),
                   cpu.conv2d_backward_weight(grad_output, x, weight.shape, *args)]
        return np.array([np.abs(result - truth).max() for result, truth in zip(results, exact)])

    assert cpu_conv._stride2_pays(weight.shape, (2, 2), (1, 1), 1, np.dtype(np.float32))
    winograd_errors = errors()
    monkeypatch.setattr(cpu_conv, "STRIDE2_WINOGRAD_MIN_CHANNELS", None)
    im2col_errors = errors()
    assert np.all(winograd_errors < 2 * im2col_errors + 1e-6), (winograd_errors, im2col_errors)


def test_cpu_stride2_input_gradient_takes_im2col_on_large_inputs(always_stride2, monkeypatch):
    # Above STRIDE2_INPUT_GRADIENT_MAX_PIXELS only the input gradient leaves the phase split.
    monkeypatch.setattr(cpu_conv, "STRIDE2_INPUT_GRADIENT_MAX_PIXELS", 63)
    calls = record_stride2_calls(monkeypatch)
    case = ConvCase("stride2_large_input", 2, 3, 4, 8, 8, 4, 2, 1)
    x, weight, grad_output = conv_inputs(case, np.float32, seed=37)
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, case.args, np.float32)
    assert calls == ["forward", "backward_weight"]


def test_cpu_stride2_winograd_is_chosen_for_4x4_stride_2_float32_with_16_or_more_channels():
    float32, float64 = np.dtype(np.float32), np.dtype(np.float64)
    pays = cpu_conv._stride2_pays
    assert pays((128, 64, 4, 4), (2, 2), (1, 1), 1, float32) is cpu_blas.available
    assert not pays((128, 8, 4, 4), (2, 2), (1, 1), 1, float32)  # a DCGAN's first layer
    assert not pays((1, 64, 4, 4), (2, 2), (1, 1), 1, float32)  # ... and last
    assert not pays((128, 64, 4, 4), (2, 2), (1, 1), 1, float64)
    assert not pays((128, 32, 4, 4), (2, 2), (1, 1), 2, float32)
    assert not pays((128, 64, 4, 4), (1, 1), (1, 1), 1, float32)
    assert not pays((128, 64, 4, 4), (2, 2), (2, 2), 1, float32)
    assert not pays((128, 64, 3, 3), (2, 2), (1, 1), 1, float32)


def test_stride2_weight_gradient_is_the_adjoint_of_the_weight_transform():
    # <U(w), S> = <w, U^T(S)>, with the sums of two workers.
    rng = np.random.default_rng(33)
    weight = rng.standard_normal((5, 3, 4, 4))
    sums = rng.standard_normal((2, 9, 5, 12))
    transformed = winograd_stride2.transform_weight(weight).reshape(9, 5, 12)
    back = winograd_stride2.weight_gradient(sums, np.empty_like(weight))
    assert inner(transformed, sums.sum(axis=0)) == pytest.approx(inner(weight, back), rel=1e-12)


def test_stride2_weight_transform_flipped_is_the_transform_of_the_flipped_phases():
    # Flipping each phase's 2x2 taps is flipping the whole 4x4 kernel and swapping phases 0, 1.
    rng = np.random.default_rng(34)
    weight = rng.standard_normal((2, 3, 4, 4))
    swapped = weight[:, :, ::-1, ::-1].reshape(2, 3, 2, 2, 2, 2)[:, :, :, ::-1, :, ::-1]
    np.testing.assert_allclose(winograd_stride2.transform_weight(weight, flip=True),
                               winograd_stride2.transform_weight(
                                   np.ascontiguousarray(swapped.reshape(2, 3, 4, 4))),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("size, pad, out_size", [(16, 1, 8), (14, 1, 7), (9, 1, 4), (8, 0, 3),
                                                 (7, 2, 4), (3, 3, 4), (2, 1, 1)])
def test_stride2_phases_cover_every_input_row_once(size, pad, out_size):
    (phase0, phase1), rows = winograd_stride2.phases(size, pad, out_size)
    covered = []
    for p, (first, tiles) in enumerate((phase0, phase1)):
        outputs = range(first, first + 2 * tiles)
        covered += [2 * u + p - pad for u in outputs if 2 * u + p - pad < size]
        assert all(2 * u + p - pad >= 0 for u in outputs)
        assert first + 2 * tiles + 1 <= rows  # each tile's three rows of padded grad_output
    assert sorted(covered) == list(range(size))


# ---------------------------------------------------------------------------------------
# Random geometries (hypothesis, derandomized): every CPU conv path against the oracle.
# ---------------------------------------------------------------------------------------
@st.composite
def conv_geometries(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    reach = [d * (k - 1) + 1 - 2 * p for k, d, p in zip(kernel, dilation, padding)]
    height, width = (draw(st.integers(max(1, r), max(1, r) + 6)) for r in reach)
    return ConvCase("random", draw(st.integers(1, 3)), groups * draw(st.integers(1, 3)),
                    groups * draw(st.integers(1, 3)), height, width, kernel, stride, padding,
                    dilation, groups)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(case=conv_geometries(), winograd_threshold=st.sampled_from([0, 32]),
       budget=st.sampled_from([1, 2**22]), threads=st.sampled_from([1, 2, 3]),
       wide_below=st.sampled_from([0, 2**20]), dtype=st.sampled_from([np.float64, np.float32]))
def test_cpu_conv2d_matches_reference_on_random_geometries(case, winograd_threshold, budget,
                                                           threads, wide_below, dtype):
    # float32 without groups takes the one-loop paths (im2col_parallel, winograd_parallel).
    x, weight, grad_output = conv_inputs(case, dtype, seed=19)
    args = case.args
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_conv, "WIDE_GEMM_PIXELS", wide_below)
        patch.setattr(cpu_conv, "WINOGRAD_MIN_CHANNELS", winograd_threshold)
        patch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", budget)
        patch.setattr(cpu_conv, "THREADS", threads)
        assert_cpu_conv2d_matches_reference(x, weight, grad_output, args)


@st.composite
def stride2_geometries(draw):
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    height, width = (draw(st.integers(max(1, 4 - 2 * p), 13)) for p in padding)
    return ConvCase("random_4x4_stride_2", draw(st.integers(1, 3)), draw(st.integers(1, 6)),
                    draw(st.integers(1, 6)), height, width, 4, 2, padding)


@pytest.mark.skipif(not cpu_blas.available, reason="NumPy's CBLAS sgemm not found")
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(case=stride2_geometries(), budget=st.sampled_from([1, 2**22]),
       threads=st.sampled_from([1, 2, 3]))
def test_cpu_stride2_winograd_matches_reference_on_random_geometries(case, budget, threads):
    x, weight, grad_output = conv_inputs(case, np.float32, seed=35)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_conv, "STRIDE2_WINOGRAD_MIN_CHANNELS", 0)
        patch.setattr(cpu_conv, "STRIDE2_BUDGET_BYTES", budget)
        patch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", budget)
        patch.setattr(cpu_conv, "THREADS", threads)
        assert cpu_conv._stride2_pays(weight.shape, *case.args[::2], 1, x.dtype)
        assert_cpu_conv2d_matches_reference(x, weight, grad_output, case.args, np.float32)


# ---------------------------------------------------------------------------------------
# gemm_conv.py's chunking, grouping and transposes (the CUDA backend's host side), driven on
# the CPU by NumPy copies that keep its (C*kH*kW, B*H_out*W_out) column contract.
# ---------------------------------------------------------------------------------------
def _numpy_windows(padded_chunk, kernel, stride, dilation, out_hw):
    """(C, kH, kW, B, H_out, W_out) views of every kernel offset's window of a padded chunk."""
    return [[reference._window(padded_chunk, (i * dilation[0], j * dilation[1]), stride,
                               out_hw).transpose(1, 0, 2, 3)
             for j in range(kernel[1])] for i in range(kernel[0])]


def _numpy_im2col(x, n_start, cols, kernel, stride, padding, dilation, out_hw):
    batch = cols.shape[1] // (out_hw[0] * out_hw[1])
    padded = reference._pad(x[n_start:n_start + batch], padding)
    windows = np.stack([np.stack(row, axis=1) for row in
                        _numpy_windows(padded, kernel, stride, dilation, out_hw)], axis=1)
    cols[...] = windows.reshape(cols.shape)
    return cols


def _numpy_col2im(cols, grad_x, n_start, kernel, stride, padding, dilation, out_hw):
    batch, channels = cols.shape[1] // (out_hw[0] * out_hw[1]), grad_x.shape[1]
    padded = reference._pad(np.zeros_like(grad_x[n_start:n_start + batch]), padding)
    blocks = cols.reshape(channels, *kernel, batch, *out_hw)
    windows = _numpy_windows(padded, kernel, stride, dilation, out_hw)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            windows[i][j] += blocks[:, i, j]
    height, width = grad_x.shape[2:]
    grad_x[n_start:n_start + batch] += padded[:, :, padding[0]:padding[0] + height,
                                              padding[1]:padding[1] + width]
    return grad_x


@conv_cases
@pytest.mark.parametrize("budget", [1, 2**20], ids=["one_sample_chunks", "whole_batch"])
def test_gemm_conv_matches_reference_with_numpy_copies(case, budget):
    backend = gemm_conv.Im2col(np, _numpy_im2col, _numpy_col2im, budget)
    x, weight, grad_output = conv_inputs(case, seed=16)
    args = case.args
    assert_close(gemm_conv.conv2d_forward(backend, x, weight, *args),
                 reference.conv2d_forward(x, weight, *args))
    assert_close(gemm_conv.conv2d_backward_input(backend, grad_output, weight, x.shape, *args),
                 reference.conv2d_backward_input(grad_output, weight, x.shape, *args))
    assert_close(gemm_conv.conv2d_backward_weight(backend, grad_output, x, weight.shape, *args),
                 reference.conv2d_backward_weight(grad_output, x, weight.shape, *args))


@pool_cases
@dtypes
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_cpu_max_pool2d_matches_reference(case, dtype, layout):
    rng = np.random.default_rng(15)
    x, grad_output = (random_array(rng, shape, dtype) for shape in
                      (case.input_shape, case.output_shape))
    if layout == "non_contiguous":
        x, grad_output = non_contiguous(x), non_contiguous(grad_output)
    y, indices = cpu.max_pool2d_forward(x, *case.args)
    expected_y, expected_indices = reference.max_pool2d_forward(x, *case.args)
    assert_close(y, expected_y, dtype)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected_indices)
    assert_close(cpu.max_pool2d_backward(grad_output, indices, x.shape),
                 reference.max_pool2d_backward(grad_output, indices, x.shape), dtype)


def test_cpu_max_pool2d_ties_and_nans_follow_reference():
    x = np.zeros((1, 2, 6, 6), np.float32)
    x[0, 1, 2, 3] = np.nan
    y, indices = cpu.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1))
    expected_y, expected_indices = reference.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(indices, expected_indices)


@pool_cases
@dtypes
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_cpu_avg_pool2d_matches_reference(case, dtype, layout):
    rng = np.random.default_rng(16)
    x, grad_output = (random_array(rng, shape, dtype) for shape in
                      (case.input_shape, case.output_shape))
    if layout == "non_contiguous":
        x, grad_output = non_contiguous(x), non_contiguous(grad_output)
    assert_close(cpu.avg_pool2d_forward(x, *case.args),
                 reference.avg_pool2d_forward(x, *case.args), dtype)
    assert_close(cpu.avg_pool2d_backward(grad_output, x.shape, *case.args),
                 reference.avg_pool2d_backward(grad_output, x.shape, *case.args), dtype)


@upsample_cases
@dtypes
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_cpu_upsample_nearest2d_matches_reference(shape, scale, dtype, layout):
    rng = np.random.default_rng(17)
    x = random_array(rng, shape, dtype)
    grad_output = random_array(rng, (*shape[:2], shape[2] * scale[0], shape[3] * scale[1]), dtype)
    if layout == "non_contiguous":
        x, grad_output = non_contiguous(x), non_contiguous(grad_output)
    assert_close(cpu.upsample_nearest2d_forward(x, scale),
                 reference.upsample_nearest2d_forward(x, scale), dtype)
    assert_close(cpu.upsample_nearest2d_backward(grad_output, scale),
                 reference.upsample_nearest2d_backward(grad_output, scale), dtype)


# ---------------------------------------------------------------------------------------
# CPU conv: threads only where the work pays (MACS_PER_THREAD)
# ---------------------------------------------------------------------------------------
def test_cpu_conv2d_threads_follow_the_work(monkeypatch):
    monkeypatch.setattr(cpu_conv, "THREADS", None)
    monkeypatch.setattr(cpu_conv.numba, "get_num_threads", lambda: 2)
    per_thread = cpu_conv.MACS_PER_THREAD
    assert cpu_conv.threads_for(0) == 1
    assert cpu_conv.threads_for(2 * per_thread - 1) == 1
    assert cpu_conv.threads_for(2 * per_thread) == 2
    assert cpu_conv.threads_for(10**15) == 2
    per_thread_bytes = cpu_conv.BYTES_PER_THREAD
    assert cpu_conv.threads_for(0, 2 * per_thread_bytes - 1) == 1
    assert cpu_conv.threads_for(0, 2 * per_thread_bytes) == 2
    monkeypatch.setattr(cpu_conv, "THREADS", 3)  # a value set there is used as it is
    assert cpu_conv.threads_for(0) == 3


THREAD_SWITCH_CASES = [
    ConvCase("3x3_padding_1", 5, 4, 3, 7, 6),
    ConvCase("4x4_stride_2", 4, 3, 5, 10, 9, 4, 2, 1),
    ConvCase("pointwise", 6, 5, 4, 3, 5, 1, 1, 0),
]


@pytest.mark.parametrize("case", THREAD_SWITCH_CASES, ids=lambda case: case.name)
@pytest.mark.parametrize("winograd_min", [0, 10**6], ids=["winograd", "im2col"])
@pytest.mark.parametrize("per_thread, threads", [(1, 2), (10**15, 1)],
                         ids=["parallel", "serial"])
def test_cpu_conv2d_serial_and_parallel_paths_match_reference(case, winograd_min, per_thread,
                                                              threads, monkeypatch):
    monkeypatch.setattr(cpu_conv, "THREADS", None)
    monkeypatch.setattr(cpu_conv.numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(cpu_conv, "MACS_PER_THREAD", per_thread)
    monkeypatch.setattr(cpu_conv, "BYTES_PER_THREAD", per_thread)
    monkeypatch.setattr(cpu_conv, "WINOGRAD_MIN_CHANNELS", winograd_min)
    monkeypatch.setattr(cpu_conv, "COLUMNS_BUDGET_BYTES", 1)  # one sample per chunk
    used = []
    chunks = cpu_conv._chunks
    monkeypatch.setattr(cpu_conv, "_chunks",
                        lambda batch, size, count=None, budget=None: used.append(count)
                        or chunks(batch, size, count, budget))
    x, weight, grad_output = conv_inputs(case, np.float32, seed=23)
    args = case.args
    assert_cpu_conv2d_matches_reference(x, weight, grad_output, args, np.float32)
    assert used and set(used) == {threads}
