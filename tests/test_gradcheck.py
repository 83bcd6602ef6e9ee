"""The checkers can fail: wrong backward rules planted on purpose are caught, first order by
gradcheck and second order by gradgradcheck, and the error names the input, the worst
element, and the analytic and numeric values there.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import minigen
from minigen.ops.elementwise import constant, cos, exp
from minigen.tensor import Function


def leaf(array) -> minigen.Tensor:
    return minigen.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def random_leaf(*shape, seed: int = 0) -> minigen.Tensor:
    return leaf(np.random.default_rng(seed).standard_normal(shape))


# ---- planted backward rules ---------------------------------------------------------------------
class SinWithSinDerivative(Function):
    """sin whose backward wrongly uses sin instead of cos."""

    def forward(self, x):
        return np.sin(x)

    def backward(self, grad_output):
        return grad_output * self.inputs[0].sin()


class SinOnePercentOff(Function):
    """sin whose derivative is 1% too large: small errors are caught too."""

    def forward(self, x):
        return np.sin(x)

    def backward(self, grad_output):
        return grad_output * cos(self.inputs[0]) * 1.01


class MulWithWrongSecondGradient(Function):
    """a * b whose gradient for b is doubled: the error is pinned on input 1, not input 0."""

    def forward(self, a, b):
        return a * b

    def backward(self, grad_output):
        a, b = self.inputs
        return grad_output * b, grad_output * a * 2


class ExpWithConstantFactor(Function):
    """exp with a first derivative that is right in value but treats exp(x) as a constant,
    so its own derivative (the second derivative of exp) comes out zero."""

    def forward(self, x):
        return np.exp(x)

    def backward(self, grad_output):
        return grad_output * constant(np.exp(self.inputs[0].data))


class SinOnRawArrays(Function):
    """sin whose backward computes on raw arrays: right values, but no graph at all."""

    def forward(self, x):
        return np.sin(x)

    def backward(self, grad_output):
        return minigen.Tensor(grad_output.data * np.cos(self.inputs[0].data))


class CorrectExp(Function):
    def forward(self, x):
        return np.exp(x)

    def backward(self, grad_output):
        return grad_output * exp(self.inputs[0])


# ---- the checks catch them -------------------------------------------------------------------------
@pytest.mark.parametrize("op", [SinWithSinDerivative, SinOnePercentOff])
def test_gradcheck_catches_a_wrong_first_derivative(op):
    with pytest.raises(minigen.GradcheckError):
        minigen.gradcheck(lambda x: op()(x), [random_leaf(3, 2)])


def test_gradcheck_error_names_the_input_the_worst_element_and_both_values():
    x = random_leaf(3, 2)
    with pytest.raises(minigen.GradcheckError) as error:
        minigen.gradcheck(lambda x: SinWithSinDerivative()(x), [x])
    message = str(error.value)
    match = re.search(r"input 0 \(shape \(3, 2\)\), element \((\d+), (\d+)\): "
                      r"analytic (\S+), numeric (\S+)", message)
    assert match, message
    element = (int(match[1]), int(match[2]))
    analytic, numeric = float(match[3]), float(match[4])
    # gradcheck weights the outputs by v ~ N(0, 1) with its seed; recompute both sides here
    weights = np.random.default_rng(0).standard_normal(x.shape)
    expected_analytic = weights * np.sin(x.data)
    expected_numeric = weights * np.cos(x.data)
    worst = np.unravel_index(np.argmax(np.abs(expected_analytic - expected_numeric)
                                       - 1e-3 * np.abs(expected_numeric)), x.shape)
    assert element == tuple(int(i) for i in worst)
    np.testing.assert_allclose(analytic, expected_analytic[element], rtol=1e-6)
    np.testing.assert_allclose(numeric, expected_numeric[element], rtol=1e-5)


def test_gradcheck_pins_the_error_on_the_input_whose_gradient_is_wrong():
    with pytest.raises(minigen.GradcheckError, match=r"input 1 \(shape \(2, 3\)\)"):
        minigen.gradcheck(lambda a, b: MulWithWrongSecondGradient()(a, b),
                          [random_leaf(2, 3, seed=1), random_leaf(2, 3, seed=2)])


def test_a_first_derivative_right_in_value_but_not_differentiable_passes_gradcheck_only():
    x = random_leaf(4)
    assert minigen.gradcheck(lambda x: ExpWithConstantFactor()(x), [x])
    with pytest.raises(minigen.GradcheckError, match="input 0"):
        minigen.gradgradcheck(lambda x: ExpWithConstantFactor()(x), [x])


def test_gradgradcheck_says_when_a_backward_is_written_on_raw_arrays():
    x = random_leaf(4)
    assert minigen.gradcheck(lambda x: SinOnRawArrays()(x), [x])
    with pytest.raises(minigen.GradcheckError, match="carry no graph"):
        minigen.gradgradcheck(lambda x: SinOnRawArrays()(x), [x])


# ---- and pass what is right ------------------------------------------------------------------------
def test_a_correct_rule_passes_both_checks():
    x = random_leaf(2, 3)
    assert minigen.gradcheck(lambda x: CorrectExp()(x), [x])
    assert minigen.gradgradcheck(lambda x: CorrectExp()(x), [x])


def test_gradcheck_perturbs_non_contiguous_inputs_in_place():
    array = np.random.default_rng(3).standard_normal((3, 4)).T
    assert not array.flags.c_contiguous
    assert minigen.gradcheck(lambda x: x.sin() * 2, [minigen.tensor(array, requires_grad=True)])


def test_gradcheck_checks_only_inputs_that_require_grad():
    constant_input = minigen.tensor(np.array([2.0, 3.0]))
    assert minigen.gradcheck(lambda x, c: x * c, [random_leaf(2), constant_input])


def test_gradcheck_leaves_its_inputs_unchanged():
    x = random_leaf(3)
    before = x.data.copy()
    minigen.gradcheck(lambda x: x.exp(), [x])
    np.testing.assert_array_equal(x.data, before)


# ---- misuse is refused with a reason -----------------------------------------------------------------
def test_gradcheck_refuses_float32_inputs():
    x = minigen.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="input 0 is float32; use float64"):
        minigen.gradcheck(lambda x: x * 2, [x])


def test_gradcheck_refuses_inputs_that_need_no_grad():
    with pytest.raises(ValueError, match="no input requires grad"):
        minigen.gradcheck(lambda x: x * 2, [minigen.tensor(np.ones(3))])
