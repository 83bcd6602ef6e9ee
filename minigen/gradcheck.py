"""Numerical gradient checks, first and second order (float64 central differences).

gradcheck compares v . J (from backward) with central differences of v . f for a random
weighting v of the outputs: one backward and 2 evaluations per input element.
gradgradcheck applies the same test to the function x -> grad(v . f(x)) built with
create_graph=True. Both return True or raise GradcheckError naming the worst element.
"""
from __future__ import annotations

import numpy as np

from minigen import backend
from minigen.tensor import Tensor, enable_grad, grad, no_grad


class GradcheckError(AssertionError):
    pass


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _weighted_sum(outputs, weights) -> Tensor:
    total = None
    for out, weight in zip(outputs, weights):
        term = (out * weight).sum()
        total = term if total is None else total + term
    return total


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              seed: int = 0) -> bool:
    """Check the backward of fn(*inputs) against central differences.

    inputs: Tensors; those with requires_grad are checked (they should be float64).
    """
    inputs = _as_tuple(inputs)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} is {inputs[i].dtype}; use float64 inputs")
    rng = np.random.default_rng(seed)
    outputs = _as_tuple(fn(*inputs))
    weights = [Tensor(backend.to_device(rng.standard_normal(out.shape), out.device)) for out in outputs]
    differentiable = [o for o in outputs if o.requires_grad]
    if not differentiable:
        raise GradcheckError("gradcheck: no output depends on the inputs through the graph")
    analytic = grad(_weighted_sum(outputs, weights), [inputs[i] for i in checked], allow_unused=True)

    def objective() -> float:
        with no_grad():
            return float(_weighted_sum(_as_tuple(fn(*inputs)), weights).item())

    for position, i in enumerate(checked):
        x = inputs[i]
        numeric = np.zeros(x.shape)
        for element in np.ndindex(*x.shape):  # indexing in place works for any memory layout
            original = float(x.data[element])
            x.data[element] = original + eps
            plus = objective()
            x.data[element] = original - eps
            minus = objective()
            x.data[element] = original
            numeric[element] = (plus - minus) / (2 * eps)
        computed = analytic[position]
        computed = np.zeros(x.shape) if computed is None else backend.to_numpy(computed.data)
        error = np.abs(computed - numeric) - (atol + rtol * np.abs(numeric))
        if error.size and error.max() > 0:
            worst = np.unravel_index(int(error.argmax()), x.shape)
            raise GradcheckError(
                f"gradcheck: input {i} (shape {tuple(x.shape)}), element {tuple(int(w) for w in worst)}: "
                f"analytic {computed[worst]:.8g}, numeric {numeric[worst]:.8g} "
                f"(atol {atol}, rtol {rtol})")
    return True


def gradgradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
                  seed: int = 0) -> bool:
    """Check second derivatives: gradcheck of x, v -> d(v . fn(x))/dx built with create_graph."""
    inputs = _as_tuple(inputs)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    rng = np.random.default_rng(seed + 1)
    with no_grad():
        outputs = _as_tuple(fn(*inputs))
    weights = [Tensor(backend.to_device(rng.standard_normal(out.shape), out.device),
                      requires_grad=True) for out in outputs]

    def first_derivatives(*args):
        xs, vs = args[:len(inputs)], args[len(inputs):]
        with enable_grad():  # gradcheck evaluates under no_grad; this inner graph is needed
            grads = grad(_weighted_sum(_as_tuple(fn(*xs)), vs), [xs[i] for i in checked],
                         create_graph=True, allow_unused=True)
        kept = tuple(g for g in grads if g is not None and g.requires_grad)
        if not kept:
            raise GradcheckError("gradgradcheck: the first derivatives carry no graph "
                                 "(is a backward rule written on raw arrays?)")
        return kept

    return gradcheck(first_derivatives, inputs + tuple(weights), eps, atol, rtol, seed)
