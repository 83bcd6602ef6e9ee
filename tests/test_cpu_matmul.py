"""The CPU backend's matmul (kernels/cpu_matmul.py) against the oracle: row blocks on several
threads, operands read in place (transposed views, slices with a row stride) or copied, and
what it leaves to np.matmul (other dtypes, broadcasting, small products)."""
from __future__ import annotations

import numpy as np
import pytest

from minigen.kernels import cpu, cpu_blas, cpu_matmul, reference
from helpers import assert_close

pytestmark = pytest.mark.skipif(not cpu_blas.available, reason="NumPy's CBLAS sgemm not found")


@pytest.fixture
def threaded(monkeypatch):
    """Every product on up to three threads, however small, and the calls of the threaded
    path counted."""
    monkeypatch.setattr(cpu_matmul, "MACS_PER_THREAD", 0)
    monkeypatch.setattr(cpu_matmul.numba, "get_num_threads", lambda: 3)
    calls = []
    blocks = cpu_matmul._blocks
    monkeypatch.setattr(cpu_matmul, "_blocks", lambda *args: calls.append(args) or blocks(*args))
    return calls


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def operand_cases(rng):
    """name -> (a, b): the layouts attention's products come in, and the awkward ones."""
    wide = rand(rng, 5, 9, 3 * 11)  # a qkv-like (N, tokens, 3C) array, sliced into q, k, v
    query, key = wide[..., :11], wide[..., 11:22]
    return {
        "odd_sizes": (rand(rng, 37, 23), rand(rng, 23, 41)),
        "transposed_weight": (rand(rng, 37, 23), rand(rng, 41, 23).T),
        "transposed_left": (rand(rng, 23, 37).T, rand(rng, 23, 41)),
        "row_stride_slice": (rand(rng, 37, 30)[:, :23], rand(rng, 23, 41)),
        "one_row": (rand(rng, 1, 23), rand(rng, 23, 41)),
        "wide_transposed_both": (rand(rng, 23, 5).T, rand(rng, 41, 23).T),
        "wide_batched": (rand(rng, 4, 3, 6), rand(rng, 4, 6, 29)),
        "one_column": (rand(rng, 37, 23), rand(rng, 23, 1)),
        "batched": (rand(rng, 5, 7, 6), rand(rng, 5, 6, 9)),
        "batch_1": (rand(rng, 1, 7, 6), rand(rng, 1, 6, 9)),
        "sliced_query_times_transposed_key": (query, key.transpose(0, 2, 1)),
        "every_other_element": (rand(rng, 5, 7, 12)[..., ::2], rand(rng, 5, 6, 9)),
        "batch_strided": (rand(rng, 10, 7, 6)[::2], rand(rng, 5, 6, 9)),
    }


@pytest.mark.parametrize("name", list(operand_cases(np.random.default_rng(0))))
def test_cpu_matmul_matches_reference_on_threads(name, threaded):
    a, b = operand_cases(np.random.default_rng(0))[name]
    actual = cpu.matmul(a, b)
    assert actual.dtype == np.float32
    assert_close(actual, reference.matmul(a, b), np.float32)
    assert len(threaded) == 1


@pytest.mark.parametrize("a_shape, b_shape, dtype", [
    ((4, 7, 6), (6, 9), np.float32),  # a stack times one matrix: broadcasting
    ((7, 6), (4, 6, 9), np.float32),
    ((2, 3, 7, 6), (2, 3, 6, 9), np.float32),  # four dimensions
    ((7, 6), (6, 9), np.float64),
    ((7, 6), (6, 9), np.int64),
    ((0, 6), (6, 9), np.float32),  # empty
], ids=["stack_times_matrix", "matrix_times_stack", "four_dims", "float64", "int64", "empty"])
def test_cpu_matmul_leaves_the_rest_to_numpy(a_shape, b_shape, dtype, threaded):
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(shape).astype(dtype) for shape in (a_shape, b_shape))
    actual = cpu.matmul(a, b)
    np.testing.assert_array_equal(actual, np.matmul(a, b))
    assert actual.dtype == np.matmul(a, b).dtype
    assert threaded == []


def test_cpu_matmul_keeps_small_products_on_one_thread(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_matmul, "_blocks", lambda *args: calls.append(args))
    a, b = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)
    np.testing.assert_array_equal(cpu.matmul(a, b), np.full((4, 5), 3.0, np.float32))
    assert calls == []


@pytest.mark.parametrize("a_shape, b_shape, by_columns", [((10, 4), (4, 3), False),
                                                         ((3, 4), (4, 10), True)],
                         ids=["tall_by_rows", "wide_by_columns"])
def test_cpu_matmul_cuts_a_single_product_along_its_longer_side(a_shape, b_shape, by_columns,
                                                                threaded):
    rng = np.random.default_rng(2)
    a, b = rand(rng, *a_shape), rand(rng, *b_shape)
    assert_close(cpu.matmul(a, b), reference.matmul(a, b), np.float32)
    (args,) = threaded
    blocks, columns, workers = args[14], args[15], args[16]
    assert (blocks, columns, workers) == (3 * cpu_matmul.BLOCKS_PER_THREAD, by_columns, 3)
