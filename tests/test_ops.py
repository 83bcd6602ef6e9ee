"""Every differentiable op of the core, one table row per op and input shapes: first-order
gradcheck, second-order gradgradcheck (for piecewise-linear ops such as relu it checks the
zero second derivative away from kinks), float32 kept as float32, and values and gradients
against PyTorch in float64 (skipped with a reason when PyTorch is missing). Then the
subgradients at ties and kinks, and stability for logits of +-1e4.

A row's function takes `F` first: minigen.functional, or for the cross-check PyTorch's
torch.nn.functional with torch behind it, so that one lambda states the op for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import minigen
import minigen.functional
from helpers import assert_matches_torch, import_torch


class Library:
    """Attribute lookup through several modules in turn (the functional module first)."""

    def __init__(self, *modules):
        self.modules = modules

    def __getattr__(self, name):
        for module in self.modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"no {name} in {[module.__name__ for module in self.modules]}")


MINIGEN = Library(minigen.functional, minigen)


def torch_library() -> Library:
    torch = import_torch()
    return Library(torch.nn.functional, torch)


# ---- input specifications: a bare shape means standard-normal floats ------------------------
@dataclass(frozen=True)
class Spec:
    kind: str      # "positive", "unit", "integers", "mask" or "probabilities"
    shape: tuple
    high: int = 0  # integers are drawn from [0, high)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "positive":
            return rng.uniform(0.5, 2.0, self.shape)
        if self.kind == "unit":
            return rng.uniform(0.0, 1.0, self.shape)
        if self.kind == "integers":
            return rng.integers(0, self.high, self.shape)
        if self.kind == "mask":
            return rng.random(self.shape) < 0.5
        weights = rng.random(self.shape) + 0.1  # probabilities: rows along dim 1 sum to one
        return weights / weights.sum(axis=1, keepdims=True)

    def __str__(self) -> str:
        return f"{self.kind}{'x'.join(map(str, self.shape))}"


def positive(*shape):
    return Spec("positive", shape)


def unit(*shape):
    """Floats in [0, 1), as binary targets."""
    return Spec("unit", shape)


def integers(high, *shape):
    """Integer labels or indices in [0, high), repeats likely (they exercise scatter-add)."""
    return Spec("integers", shape, high)


def mask(*shape):
    return Spec("mask", shape)


def probabilities(*shape):
    """Soft targets: rows along dim 1 that sum to one."""
    return Spec("probabilities", shape)


def make_inputs(specs, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [spec.draw(rng) if isinstance(spec, Spec) else rng.standard_normal(spec) for spec in specs]


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable                    # fn(F, *inputs)
    specs: tuple                    # one spec per input
    torch_fn: Callable | None = None  # where PyTorch spells the op differently

    @property
    def id(self) -> str:
        shapes = ",".join(str(s) if isinstance(s, Spec) else "x".join(map(str, s)) for s in self.specs)
        return f"{self.name}[{shapes}]"


def cases(name, fn, *spec_sets, **options) -> list:
    return [Case(name, fn, tuple(specs), **options) for specs in spec_sets]


BROADCAST_PAIRS = ([(3, 4), (3, 4)], [(3, 1), (4,)], [(2, 1, 4), (3, 1)], [(), (2, 3)],
                   [(2, 3), ()])

CASES = [
    # elementwise arithmetic, with broadcasting, size-1 axes and scalars
    *cases("add", lambda F, a, b: a + b, *BROADCAST_PAIRS),
    *cases("sub", lambda F, a, b: a - b, *BROADCAST_PAIRS),
    *cases("mul", lambda F, a, b: a * b, *BROADCAST_PAIRS),
    *cases("div", lambda F, a, b: a / b, [(3, 4), positive(3, 4)], [(3, 1), positive(4)],
           [(), positive(2, 3)]),
    *cases("python_scalar_operands", lambda F, x: (2 - x) * 3 + x / 4 - 1 + 2 / (x * x + 1),
           [(2, 3)], [()]),
    *cases("neg", lambda F, x: -x, [(2, 3)], [()]),
    *cases("pow_scalar", lambda F, x: x ** 3, [(2, 3)], [()]),
    *cases("pow_square", lambda F, x: x ** 2, [(2, 3)]),
    *cases("pow_fractional", lambda F, x: x ** 0.5, [positive(2, 3)]),
    *cases("pow_negative", lambda F, x: F.pow(x, -1.5), [positive(2, 3)]),
    *cases("pow_tensor", lambda F, a, b: a ** b, [positive(2, 3), (2, 3)], [positive(3, 1), (4,)]),
    *cases("rpow", lambda F, x: 2 ** x, [(2, 3)]),
    *cases("exp", lambda F, x: F.exp(x), [(2, 3)], [()]),
    *cases("log", lambda F, x: F.log(x), [positive(2, 3)], [positive()]),
    *cases("sqrt", lambda F, x: F.sqrt(x), [positive(2, 3)]),
    *cases("sin", lambda F, x: F.sin(x), [(2, 3)]),
    *cases("cos", lambda F, x: F.cos(x), [(2, 3)]),
    *cases("abs", lambda F, x: F.abs(x), [(2, 3)]),
    *cases("clamp", lambda F, x: F.clamp(x, -0.5, 0.7), [(3, 4)]),
    *cases("clamp_min", lambda F, x: F.clamp(x, min=-0.3), [(3, 4)]),
    *cases("clamp_max", lambda F, x: x.clamp(max=0.2), [(3, 4)]),
    *cases("maximum", lambda F, a, b: F.maximum(a, b), [(3, 4), (3, 4)], [(3, 1), (4,)]),
    *cases("minimum", lambda F, a, b: F.minimum(a, b), [(3, 4), (3, 4)], [(2, 1, 4), (3, 1)]),
    *cases("where", lambda F, condition, a, b: F.where(condition, a, b),
           [mask(3, 4), (3, 4), (3, 4)], [mask(3, 4), (3, 1), (4,)], [mask(2, 3), (2, 3), ()]),
    *cases("where_scalar", lambda F, condition, x: F.where(condition, x, 0.5), [mask(3, 4), (3, 4)]),

    # reductions, over all dims, one dim, several dims, with and without keepdim
    *cases("sum", lambda F, x: x.sum(), [(3, 4)], [()]),
    *cases("sum_dim", lambda F, x: x.sum(1), [(3, 4)], [(2, 3, 4)]),
    *cases("sum_dims_keepdim", lambda F, x: F.sum(x, (0, 2), keepdim=True), [(2, 3, 4)]),
    *cases("sum_negative_dim", lambda F, x: x.sum(-1, keepdim=True), [(3, 1)]),
    *cases("mean", lambda F, x: x.mean(), [(3, 4)]),
    *cases("mean_dim", lambda F, x: x.mean(0, keepdim=True), [(3, 4)], [(1, 4)]),
    *cases("mean_dims", lambda F, x: F.mean(x, (1, 2)), [(2, 3, 4)]),
    *cases("var", lambda F, x: x.var(), [(3, 4)]),
    *cases("var_dim_biased", lambda F, x: F.var(x, 1, keepdim=True, unbiased=False), [(3, 4)]),
    *cases("var_dims", lambda F, x: F.var(x, (0, 2)), [(2, 3, 4)]),
    *cases("std", lambda F, x: x.std(1), [(3, 4)]),
    *cases("max", lambda F, x: x.max(), [(3, 4)]),
    *cases("max_dim", lambda F, x: x.max(1), [(3, 4)], [(2, 3, 4)], torch_fn=lambda F, x: x.amax(1)),
    *cases("max_dims_keepdim", lambda F, x: F.max(x, (0, 2), keepdim=True), [(2, 3, 4)],
           torch_fn=lambda F, x: x.amax((0, 2), keepdim=True)),
    *cases("min", lambda F, x: x.min(), [(3, 4)]),
    *cases("min_dim_keepdim", lambda F, x: x.min(0, keepdim=True), [(3, 4)],
           torch_fn=lambda F, x: x.amin(0, keepdim=True)),
    *cases("logsumexp", lambda F, x: F.logsumexp(x, 1), [(3, 4)], [(2, 3, 4)]),
    *cases("logsumexp_keepdim", lambda F, x: x.logsumexp(0, keepdim=True), [(3, 4)]),
    *cases("norm", lambda F, x: x.norm(), [(3, 4)]),

    # shape ops
    *cases("reshape", lambda F, x: x.reshape(4, 3), [(3, 4)]),
    *cases("reshape_tuple_with_minus_one", lambda F, x: F.reshape(x, (2, -1)), [(2, 3, 2)]),
    *cases("reshape_scalar", lambda F, x: x.reshape(1, 1), [()]),
    *cases("view", lambda F, x: x.view(6, 2), [(3, 4)]),
    *cases("transpose", lambda F, x: x.transpose(0, 2), [(2, 3, 4)]),
    *cases("transpose_negative", lambda F, x: F.transpose(x, -1, -2), [(2, 3, 4)]),
    *cases("T", lambda F, x: x.T, [(3, 4)]),
    *cases("permute", lambda F, x: x.permute(2, 0, 1), [(2, 3, 4)]),
    *cases("permute_tuple", lambda F, x: F.permute(x, (1, 2, 0)), [(2, 3, 4)]),
    *cases("expand", lambda F, x: x.expand(2, 3, 4), [(3, 1)], [(1, 4)]),
    *cases("expand_minus_one", lambda F, x: x.expand(2, -1, 4), [(3, 1)]),
    *cases("expand_scalar", lambda F, x: x.expand(2, 3), [()]),
    *cases("unsqueeze", lambda F, x: x.unsqueeze(1), [(3, 4)]),
    *cases("unsqueeze_scalar", lambda F, x: x.unsqueeze(0), [()]),
    *cases("unsqueeze_negative", lambda F, x: F.unsqueeze(x, -1), [(3, 4)]),
    *cases("squeeze", lambda F, x: x.squeeze(), [(3, 1, 4, 1)]),
    *cases("squeeze_dim", lambda F, x: F.squeeze(x, 1), [(3, 1, 4)], [(3, 2)]),
    *cases("squeeze_scalar", lambda F, x: x.squeeze(0), [()]),
    *cases("flatten", lambda F, x: x.flatten(), [(2, 3, 2)], [()]),
    *cases("flatten_from_1", lambda F, x: F.flatten(x, 1), [(2, 3, 2)]),
    *cases("flatten_middle", lambda F, x: x.flatten(1, 2), [(2, 3, 2, 2)]),
    *cases("cat", lambda F, a, b: F.cat([a, b], 1), [(2, 3), (2, 2)], [(2, 1, 2), (2, 3, 2)]),
    *cases("cat_negative_dim", lambda F, a, b, c: F.cat((a, b, c), -1), [(2, 1), (2, 2), (2, 3)]),
    *cases("stack", lambda F, a, b: F.stack([a, b]), [(2, 3), (2, 3)], [(), ()]),
    *cases("stack_last", lambda F, a, b: F.stack([a, b], -1), [(2, 3), (2, 3)]),
    *cases("split", lambda F, x: F.split(x, 2, 1), [(2, 5)]),
    *cases("split_sizes", lambda F, x: x.split([1, 3], 0), [(4, 2)]),
    *cases("chunk", lambda F, x: F.chunk(x, 3, 0), [(7, 2)]),
    *cases("chunk_last", lambda F, x: x.chunk(2, -1), [(2, 4)]),

    # indexing: basic slices, integers, integer arrays (repeats summed), boolean masks
    *cases("index_slice", lambda F, x: x[1:3], [(4, 3)]),
    *cases("index_step", lambda F, x: x[:, ::2], [(3, 5)]),
    *cases("index_int", lambda F, x: x[1], [(3, 4)]),
    *cases("index_negative_and_slice", lambda F, x: x[-1, 1:], [(3, 4)]),
    *cases("index_ellipsis", lambda F, x: x[..., 0], [(2, 3, 4)]),
    *cases("index_none", lambda F, x: x[None, 1], [(3, 4)]),
    *cases("index_int_array", lambda F, x, index: x[index], [(4, 3), integers(4, 6)]),
    *cases("index_two_int_arrays", lambda F, x, rows, cols: x[rows, cols],
           [(4, 3), integers(4, 5), integers(3, 5)]),
    *cases("index_slice_then_array", lambda F, x, index: x[:, index], [(2, 4), integers(4, 5)]),
    *cases("index_mask", lambda F, x, keep: x[keep], [(3, 4), mask(3, 4)]),
    *cases("index_row_mask", lambda F, x, keep: x[keep], [(4, 3), mask(4)]),

    # pad
    *cases("pad_last", lambda F, x: F.pad(x, (1, 2)), [(2, 3)]),
    *cases("pad_two_dims_value", lambda F, x: F.pad(x, (1, 0, 2, 1), value=0.5), [(2, 3, 2)]),

    # matmul and linear
    *cases("matmul", lambda F, a, b: a @ b, [(3, 4), (4, 2)]),
    *cases("matmul_batched", lambda F, a, b: F.matmul(a, b), [(2, 3, 4), (2, 4, 2)]),
    *cases("matmul_broadcast", lambda F, a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)],
           [(2, 3, 4), (4, 2)], [(3, 4), (2, 4, 2)], [(2, 2, 3, 4), (4, 2)]),
    *cases("matmul_rows_of_a_view", lambda F, a, b: a.transpose(1, 2) @ b, [(2, 4, 3), (4, 2)]),
    *cases("matmul_vector", lambda F, a, b: a @ b, [(4,), (4, 2)], [(3, 4), (4,)], [(4,), (4,)],
           [(2, 3, 4), (4,)], [(4,), (2, 4, 3)]),
    *cases("linear", lambda F, x, weight, bias: F.linear(x, weight, bias), [(3, 4), (2, 4), (2,)],
           [(2, 3, 4), (2, 4), (2,)]),
    *cases("linear_no_bias", lambda F, x, weight: F.linear(x, weight), [(3, 4), (2, 4)]),

    # activations
    *cases("relu", lambda F, x: F.relu(x), [(3, 4)], [()]),
    *cases("leaky_relu", lambda F, x: F.leaky_relu(x, 0.2), [(3, 4)]),
    *cases("leaky_relu_default", lambda F, x: F.leaky_relu(x), [(3, 4)]),
    *cases("silu", lambda F, x: F.silu(x), [(3, 4)]),
    *cases("gelu", lambda F, x: F.gelu(x), [(3, 4)]),
    *cases("gelu_tanh", lambda F, x: F.gelu(x, approximate="tanh"), [(3, 4)]),
    *cases("sigmoid", lambda F, x: F.sigmoid(x), [(3, 4)], [()]),
    *cases("tanh", lambda F, x: F.tanh(x), [(3, 4)]),
    *cases("softplus", lambda F, x: F.softplus(x), [(3, 4)]),
    *cases("softmax", lambda F, x: F.softmax(x, 1), [(3, 4)], [(2, 3, 2)]),
    *cases("softmax_last", lambda F, x: F.softmax(x, -1), [(2, 3, 2)]),
    *cases("log_softmax", lambda F, x: F.log_softmax(x, 1), [(3, 4)], [(2, 3, 2)]),
    *cases("log_softmax_first", lambda F, x: x.log_softmax(0), [(3, 4)]),
    *cases("dropout_off_in_eval", lambda F, x: F.dropout(x, 0.5, training=False), [(3, 4)]),

    # losses
    *cases("mse_loss", lambda F, a, b: F.mse_loss(a, b), [(3, 4), (3, 4)], [(), ()]),
    *cases("mse_loss_sum", lambda F, a, b: F.mse_loss(a, b, reduction="sum"), [(3, 4), (3, 4)]),
    *cases("mse_loss_none", lambda F, a, b: F.mse_loss(a, b, reduction="none"), [(3, 4), (3, 4)]),
    *cases("bce_with_logits", lambda F, x, t: F.binary_cross_entropy_with_logits(x, t),
           [(3, 4), unit(3, 4)], [(5,), unit(5)]),
    *cases("bce_with_logits_none",
           lambda F, x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"),
           [(3, 4), unit(3, 4)]),
    *cases("cross_entropy", lambda F, x, target: F.cross_entropy(x, target),
           [(4, 3), integers(3, 4)], [(2, 3, 2, 2), integers(3, 2, 2, 2)]),
    *cases("cross_entropy_sum", lambda F, x, target: F.cross_entropy(x, target, reduction="sum"),
           [(4, 3), integers(3, 4)]),
    *cases("cross_entropy_none", lambda F, x, target: F.cross_entropy(x, target, reduction="none"),
           [(4, 3), integers(3, 4)], [(2, 3, 2, 2), integers(3, 2, 2, 2)]),
    *cases("cross_entropy_soft_targets", lambda F, x, target: F.cross_entropy(x, target),
           [(4, 3), probabilities(4, 3)]),
    *cases("cross_entropy_soft_targets_label_smoothing",
           lambda F, x, target: F.cross_entropy(x, target, label_smoothing=0.3),
           [(4, 3), probabilities(4, 3)], [(2, 3, 2), probabilities(2, 3, 2)]),
    *cases("cross_entropy_label_smoothing",
           lambda F, x, target: F.cross_entropy(x, target, label_smoothing=0.1),
           [(4, 3), integers(3, 4)], [(2, 3, 2, 2), integers(3, 2, 2, 2)]),
    *cases("cross_entropy_label_smoothing_none",
           lambda F, x, target: F.cross_entropy(x, target, reduction="none", label_smoothing=0.2),
           [(4, 3), integers(3, 4)], [(2, 3, 2), integers(3, 2, 2)]),
]

table = pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)


def minigen_inputs(case: Case, dtype=np.float64) -> list:
    """Float inputs require grad; integer and boolean ones are labels, indices and masks."""
    return [minigen.tensor(array.astype(dtype), requires_grad=True) if array.dtype.kind == "f"
            else minigen.tensor(array) for array in make_inputs(case.specs)]


def bind(fn, library):
    return lambda *inputs: fn(library, *inputs)


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@table
def test_gradient_matches_central_differences(case):
    assert minigen.gradcheck(bind(case.fn, MINIGEN), minigen_inputs(case))


@table
def test_second_derivatives_match_central_differences(case):
    assert minigen.gradgradcheck(bind(case.fn, MINIGEN), minigen_inputs(case))


@table
def test_values_and_gradients_match_pytorch_in_float64(case):
    assert_matches_torch(bind(case.fn, MINIGEN), bind(case.torch_fn or case.fn, torch_library()),
                         make_inputs(case.specs))


@table
def test_float32_inputs_give_float32_outputs_and_gradients(case):
    inputs = minigen_inputs(case, np.float32)
    outputs = bind(case.fn, MINIGEN)(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    total = None
    for output in outputs:
        assert output.dtype == np.float32, f"{case.name} gave {output.dtype} from float32 inputs"
        total = output.sum() if total is None else total + output.sum()
    total.backward()
    for x in inputs:
        if x.requires_grad:
            assert x.grad is not None and x.grad.dtype == np.float32, \
                f"{case.name}: gradient dtype {None if x.grad is None else x.grad.dtype}"


def test_split_pieces_that_get_no_gradient_contribute_zeros_at_first_and_second_order():
    x = minigen.tensor(np.arange(12.0).reshape(2, 6), requires_grad=True)
    query, key, value = x.chunk(3, dim=1)
    (query * key).sum().backward()  # value unused
    np.testing.assert_array_equal(x.grad.numpy()[:, :2], x.detach().numpy()[:, 2:4])
    np.testing.assert_array_equal(x.grad.numpy()[:, 2:4], x.detach().numpy()[:, :2])
    np.testing.assert_array_equal(x.grad.numpy()[:, 4:], 0.0)
    assert minigen.gradgradcheck(lambda t: (t.chunk(3, dim=1)[0] ** 2).sum(),
                                 [minigen.tensor(np.random.default_rng(0).standard_normal((2, 6)),
                                                 requires_grad=True)])


# ---- ties and kinks: the subgradient PyTorch picks ---------------------------------------------------
TIES = [
    pytest.param(lambda F, x: x.max(), None, [[[1.0, 3.0], [3.0, 0.0]]], id="max_shares_ties"),
    pytest.param(lambda F, x: x.min(1), lambda F, x: x.amin(1), [[[1.0, 1.0, 2.0], [0.0, 4.0, 0.0]]],
                 id="min_dim_shares_ties"),
    pytest.param(lambda F, a, b: F.maximum(a, b), None, [[1.0, 2.0, 3.0], [1.0, 0.0, 3.0]],
                 id="maximum_halves_at_ties"),
    pytest.param(lambda F, a, b: F.minimum(a, b), None, [[1.0, 2.0], [1.0, 5.0]],
                 id="minimum_halves_at_ties"),
    pytest.param(lambda F, x: F.abs(x), None, [[-1.0, 0.0, 2.0]], id="abs_at_zero"),
    pytest.param(lambda F, x: F.relu(x), None, [[-1.0, 0.0, 2.0]], id="relu_at_zero"),
    pytest.param(lambda F, x: F.leaky_relu(x, 0.1), None, [[-1.0, 0.0, 2.0]], id="leaky_relu_at_zero"),
    pytest.param(lambda F, x: F.clamp(x, -1.0, 1.0), None, [[-2.0, -1.0, 0.0, 1.0, 2.0]],
                 id="clamp_at_its_bounds"),
]


@pytest.mark.parametrize("fn, torch_fn, arrays", TIES)
def test_gradients_at_ties_and_kinks_match_pytorch(fn, torch_fn, arrays):
    assert_matches_torch(bind(fn, MINIGEN), bind(torch_fn or fn, torch_library()),
                         [np.array(array) for array in arrays])


# ---- numerical stability: logits of +-1e4 and -inf masks -----------------------------------------------------
EXTREME = np.array([[-1e4, 0.0, 1e4], [1e4, -1e4, 3.0]])
MASKED = np.array([[-np.inf, 0.0, 1.0], [2.0, -np.inf, -np.inf]])  # as attention masks do
STABLE = [
    pytest.param(lambda F, x, t: F.binary_cross_entropy_with_logits(x, t),
                 [EXTREME, np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.5]])], id="bce_with_logits"),
    pytest.param(lambda F, x, target: F.cross_entropy(x, target), [EXTREME, np.array([0, 1])],
                 id="cross_entropy"),
    pytest.param(lambda F, x: F.log_softmax(x, 1), [EXTREME], id="log_softmax"),
    pytest.param(lambda F, x: F.softmax(x, 1), [EXTREME], id="softmax"),
    pytest.param(lambda F, x: F.logsumexp(x, 1), [EXTREME], id="logsumexp"),
    pytest.param(lambda F, x: F.sigmoid(x), [EXTREME], id="sigmoid"),
    pytest.param(lambda F, x: F.softplus(x), [EXTREME], id="softplus"),
    pytest.param(lambda F, x: F.silu(x), [EXTREME], id="silu"),
    pytest.param(lambda F, x: F.gelu(x), [EXTREME], id="gelu"),
    pytest.param(lambda F, x: F.tanh(x), [EXTREME], id="tanh"),
    pytest.param(lambda F, x: F.softmax(x, 1), [MASKED], id="softmax_masked_by_minus_infinity"),
    pytest.param(lambda F, x: F.logsumexp(x, 1), [MASKED], id="logsumexp_masked_by_minus_infinity"),
]


@pytest.mark.parametrize("fn, arrays", STABLE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_values_and_gradients_stay_finite_for_extreme_logits(fn, arrays, dtype):
    inputs = [minigen.tensor(array.astype(dtype), requires_grad=True) if array.dtype.kind == "f"
              else minigen.tensor(array) for array in arrays]
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # none hidden by the result
        output = fn(MINIGEN, *inputs)
        output.sum().backward()
    assert np.isfinite(output.detach().numpy()).all()
    for x in inputs:
        if x.requires_grad:
            assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("fn, arrays", STABLE)
def test_values_and_gradients_for_extreme_logits_match_pytorch(fn, arrays):
    assert_matches_torch(bind(fn, MINIGEN), bind(fn, torch_library()), arrays)

