"""Kernel tests of the CUDA backend: against the NumPy oracle on the same cases as the CPU tests
(tests/helpers.py), in float32 and float64, with contiguous and non-contiguous inputs. They run
on the GPU where one can be used, else on CPU threads through tests/cuda_on_cpu/ (the same .cu
sources and Python glue), so `pytest -m cuda` runs them on every machine with a C++ compiler.
"""
from __future__ import annotations

import numpy as np
import pytest

from minigen import kernels
from minigen.kernels import reference
from helpers import (CONV_CASES, POOL_CASES, UPSAMPLE_CASES, assert_close, non_contiguous,
                     random_array)

pytestmark = pytest.mark.cuda

DTYPES = [np.float32, np.float64]
conv_cases = pytest.mark.parametrize("case", CONV_CASES, ids=lambda case: case.name)
pool_cases = pytest.mark.parametrize("case", POOL_CASES, ids=lambda case: case.name)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
layouts = pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])


@pytest.fixture
def cuda(cuda_backend):
    assert kernels.for_array(cuda_backend.asarray(np.zeros(1))) is cuda_backend.kernels
    return cuda_backend.kernels


@pytest.fixture
def on_gpu(cuda_backend):
    """Device copies of NumPy arrays; strided views of them when layout is non_contiguous."""
    def copy(*arrays, layout="contiguous"):
        copies = [cuda_backend.asarray(array) for array in arrays]
        return copies if layout == "contiguous" else [non_contiguous(copy) for copy in copies]
    return copy


@pytest.fixture
def on_cpu(cuda_backend):
    return cuda_backend.asnumpy


@conv_cases
@dtypes
@layouts
def test_cuda_conv2d_matches_reference(case, dtype, layout, cuda, on_gpu, on_cpu):
    rng = np.random.default_rng(20)
    x, weight, grad_output = (random_array(rng, shape, dtype) for shape in
                              (case.input_shape, case.weight_shape, case.output_shape))
    x_gpu, weight_gpu, grad_gpu = on_gpu(x, weight, grad_output, layout=layout)
    args = case.args
    y = cuda.conv2d_forward(x_gpu, weight_gpu, *args)
    assert y.dtype == dtype
    assert_close(on_cpu(y), reference.conv2d_forward(x, weight, *args), dtype)
    assert_close(on_cpu(cuda.conv2d_backward_input(grad_gpu, weight_gpu, x.shape, *args)),
                 reference.conv2d_backward_input(grad_output, weight, x.shape, *args), dtype)
    assert_close(on_cpu(cuda.conv2d_backward_weight(grad_gpu, x_gpu, weight.shape, *args)),
                 reference.conv2d_backward_weight(grad_output, x, weight.shape, *args), dtype)


@conv_cases
@dtypes
def test_cuda_conv2d_with_bias_and_its_gradient_match_reference(case, dtype, cuda, on_gpu,
                                                              on_cpu):
    rng = np.random.default_rng(21)
    x, weight, grad_output, bias = (random_array(rng, shape, dtype) for shape in
                                    (case.input_shape, case.weight_shape, case.output_shape,
                                     case.weight_shape[0]))
    x_gpu, weight_gpu, grad_gpu, bias_gpu = on_gpu(x, weight, grad_output, bias)
    y = cuda.conv2d_forward(x_gpu, weight_gpu, *case.args, bias=bias_gpu)
    assert y.dtype == dtype
    assert_close(on_cpu(y), reference.conv2d_forward(x, weight, *case.args, bias=bias), dtype)
    assert_close(on_cpu(cuda.conv2d_backward_bias(grad_gpu)),
                 reference.conv2d_backward_bias(grad_output), dtype)


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[1], CONV_CASES[8]],
                         ids=lambda case: case.name)
def test_cuda_conv2d_splits_the_batch_into_chunks_when_columns_exceed_budget(
        case, cuda, monkeypatch, on_gpu, on_cpu):
    monkeypatch.setattr(cuda, "COLUMNS_BUDGET_BYTES", 1)
    rng = np.random.default_rng(21)
    x, weight, grad_output = (random_array(rng, shape) for shape in
                              (case.input_shape, case.weight_shape, case.output_shape))
    x_gpu, weight_gpu, grad_gpu = on_gpu(x, weight, grad_output)
    args = case.args
    assert_close(on_cpu(cuda.conv2d_forward(x_gpu, weight_gpu, *args)),
                 reference.conv2d_forward(x, weight, *args))
    assert_close(on_cpu(cuda.conv2d_backward_input(grad_gpu, weight_gpu, x.shape, *args)),
                 reference.conv2d_backward_input(grad_output, weight, x.shape, *args))
    assert_close(on_cpu(cuda.conv2d_backward_weight(grad_gpu, x_gpu, weight.shape, *args)),
                 reference.conv2d_backward_weight(grad_output, x, weight.shape, *args))


def test_cuda_conv2d_backward_input_with_output_padding_matches_reference(cuda, on_gpu, on_cpu):
    # Stride 2 takes the col2im path; output_padding 1 asks for one extra row and column.
    rng = np.random.default_rng(22)
    grad_output, weight = random_array(rng, (2, 4, 4, 4)), random_array(rng, (4, 3, 3, 3))
    args, shape = ((2, 2), (1, 1), (1, 1), 1), (2, 3, 8, 8)
    grad_gpu, weight_gpu = on_gpu(grad_output, weight)
    assert_close(on_cpu(cuda.conv2d_backward_input(grad_gpu, weight_gpu, shape, *args)),
                 reference.conv2d_backward_input(grad_output, weight, shape, *args))


@pool_cases
@dtypes
@layouts
def test_cuda_max_pool2d_matches_reference(case, dtype, layout, cuda, on_gpu, on_cpu):
    rng = np.random.default_rng(23)
    x, grad_output = (random_array(rng, shape, dtype) for shape in
                      (case.input_shape, case.output_shape))
    x_gpu, grad_gpu = on_gpu(x, grad_output, layout=layout)
    y, indices = cuda.max_pool2d_forward(x_gpu, *case.args)
    expected_y, expected_indices = reference.max_pool2d_forward(x, *case.args)
    assert_close(on_cpu(y), expected_y, dtype)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(on_cpu(indices), expected_indices)
    assert_close(on_cpu(cuda.max_pool2d_backward(grad_gpu, indices, x.shape)),
                 reference.max_pool2d_backward(grad_output, expected_indices, x.shape), dtype)


def test_cuda_max_pool2d_ties_and_nans_follow_reference(cuda, on_gpu, on_cpu):
    x = np.zeros((1, 2, 6, 6), np.float32)
    x[0, 1, 2, 3] = np.nan
    (x_gpu,) = on_gpu(x)
    y, indices = cuda.max_pool2d_forward(x_gpu, (3, 3), (2, 2), (1, 1))
    expected_y, expected_indices = reference.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(on_cpu(y), expected_y)
    np.testing.assert_array_equal(on_cpu(indices), expected_indices)


@pytest.mark.parametrize("kernel_size, stride, padding", [((2, 2), (2, 2), (1, 1)),
                                                       ((3, 3), (1, 1), (1, 1))])
def test_max_pool2d_of_a_window_of_minus_infinity_reports_its_first_pixel(
        kernel_size, stride, padding, cuda, on_gpu, on_cpu):
    # The oracle used to report index 0 for such a window; the kernels, cpu.py and PyTorch
    # report the window's first pixel inside the image.
    from minigen.kernels import cpu
    torch = pytest.importorskip("torch")
    x = np.full((1, 2, 5, 5), -np.inf)
    x[0, 1, 4, 4] = 1.0
    args = (kernel_size, stride, padding)
    expected_y, expected_indices = torch.nn.functional.max_pool2d(
        torch.from_numpy(x), kernel_size, stride, padding, return_indices=True)
    for y, indices in (reference.max_pool2d_forward(x, *args), cpu.max_pool2d_forward(x, *args),
                       [on_cpu(a) for a in cuda.max_pool2d_forward(*on_gpu(x), *args)]):
        np.testing.assert_array_equal(y, expected_y.numpy())
        np.testing.assert_array_equal(indices, expected_indices.numpy())


@pool_cases
@dtypes
@layouts
def test_cuda_avg_pool2d_matches_reference(case, dtype, layout, cuda, on_gpu, on_cpu):
    rng = np.random.default_rng(24)
    x, grad_output = (random_array(rng, shape, dtype) for shape in
                      (case.input_shape, case.output_shape))
    x_gpu, grad_gpu = on_gpu(x, grad_output, layout=layout)
    assert_close(on_cpu(cuda.avg_pool2d_forward(x_gpu, *case.args)),
                 reference.avg_pool2d_forward(x, *case.args), dtype)
    assert_close(on_cpu(cuda.avg_pool2d_backward(grad_gpu, x.shape, *case.args)),
                 reference.avg_pool2d_backward(grad_output, x.shape, *case.args), dtype)


@pytest.mark.parametrize("shape, scale", UPSAMPLE_CASES)
@dtypes
@layouts
def test_cuda_upsample_nearest2d_matches_reference(shape, scale, dtype, layout, cuda, on_gpu,
                                                   on_cpu):
    rng = np.random.default_rng(25)
    x = random_array(rng, shape, dtype)
    grad_output = random_array(rng, (*shape[:2], shape[2] * scale[0], shape[3] * scale[1]), dtype)
    x_gpu, grad_gpu = on_gpu(x, grad_output, layout=layout)
    assert_close(on_cpu(cuda.upsample_nearest2d_forward(x_gpu, scale)),
                 reference.upsample_nearest2d_forward(x, scale), dtype)
    assert_close(on_cpu(cuda.upsample_nearest2d_backward(grad_gpu, scale)),
                 reference.upsample_nearest2d_backward(grad_output, scale), dtype)


@pytest.fixture
def one_block(cuda, monkeypatch):
    """The grid capped at one block of one warp: every grid-stride loop takes many turns."""
    monkeypatch.setattr(cuda, "MAX_BLOCKS", 1)
    monkeypatch.setattr(cuda, "THREADS_PER_BLOCK", 32)


@conv_cases
def test_cuda_conv2d_matches_reference_with_the_grid_capped_at_one_block(case, cuda, one_block,
                                                                         on_gpu, on_cpu):
    test_cuda_conv2d_matches_reference(case, np.float64, "contiguous", cuda, on_gpu, on_cpu)


@pool_cases
def test_cuda_pooling_matches_reference_with_the_grid_capped_at_one_block(case, cuda, one_block,
                                                                          on_gpu, on_cpu):
    test_cuda_max_pool2d_matches_reference(case, np.float64, "contiguous", cuda, on_gpu, on_cpu)
    test_cuda_avg_pool2d_matches_reference(case, np.float64, "contiguous", cuda, on_gpu, on_cpu)


@pytest.mark.parametrize("shape, scale", UPSAMPLE_CASES)
def test_cuda_upsample_matches_reference_with_the_grid_capped_at_one_block(shape, scale, cuda,
                                                                           one_block, on_gpu,
                                                                           on_cpu):
    test_cuda_upsample_nearest2d_matches_reference(shape, scale, np.float64, "contiguous", cuda,
                                                   on_gpu, on_cpu)
