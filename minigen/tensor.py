"""Tensor, the op protocol (Function) and the backward walk.

A Tensor wraps a NumPy or CuPy array. Every differentiable operation is a `Function`:
`forward` computes on raw arrays, `backward` returns input gradients built from other
Tensor ops, so with `create_graph=True` the gradients carry a graph of their own and
second derivatives come for free. `backward()` orders the graph topologically once and
runs the rules in reverse, summing the gradients of every use of a tensor.
"""
from __future__ import annotations

import contextlib
import weakref

import numpy as np

from minigen import backend

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def set_grad_enabled(mode: bool):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, bool(mode)
    try:
        yield
    finally:
        _grad_enabled = previous


# Called as hook(leaves) after each backward() with the leaves that received a gradient:
# data-parallel training averages the gradients over processes there (minigen.distributed),
# before the loop clips them or steps an optimizer, so the loops need not know about it.
_backward_hooks: list = []


@contextlib.contextmanager
def after_backward(hook):
    """Within this context, call hook(leaves) at the end of every backward()."""
    _backward_hooks.append(hook)
    try:
        yield hook
    finally:
        _backward_hooks.remove(hook)


def no_grad():
    """Context manager (and decorator) under which no graph is recorded."""
    return set_grad_enabled(False)


def enable_grad():
    return set_grad_enabled(True)


def _default_dtype_for(data):
    """float32 for Python floats, int64 for ints, the array's own dtype otherwise."""
    if hasattr(data, "dtype"):
        return None
    flat = np.asarray(data)
    if flat.dtype.kind == "f":
        return np.float32
    if flat.dtype.kind in "iu":
        return np.int64
    return None


class Tensor:
    """An array with an optional gradient and the op that created it (`_ctx`)."""

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_retains_grad", "__weakref__")
    __array_priority__ = 1000  # so that `ndarray * Tensor` defers to Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if device is None:
            xp = backend.array_module(data)
        else:
            xp = backend.xp_for(device)
        if dtype is None:
            dtype = _default_dtype_for(data)
        self.data = xp.asarray(data, dtype=dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, not {self.data.dtype}")
        self.grad: Tensor | None = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Function | None = None
        self._retains_grad = False

    # ---- plain properties -------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    @property
    def grad_fn(self):
        return self._ctx

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        device = ", device='cuda'" if self.device == "cuda" else ""
        return f"tensor({backend.to_numpy(self.data)!r}{device}{grad})"

    __hash__ = object.__hash__

    # ---- conversion ---------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        if self.requires_grad:
            raise RuntimeError("numpy(): this tensor requires grad; call .detach().numpy()")
        return backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    # Without __bool__, Python would fall back on __len__: `if tensor([0.0]) > 1:` would be true.
    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor of shape {self.shape} is ambiguous; "
                               "reduce it to one element first (with .max() or .min())")
        return bool(self.data.item())

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def tolist(self):
        return backend.to_numpy(self.data).tolist()

    def detach(self) -> "Tensor":
        """The same array, cut off from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, mode: bool = True) -> "Tensor":
        self.requires_grad = mode
        return self

    def retain_grad(self) -> None:
        """Keep `.grad` on this non-leaf tensor after backward, as PyTorch does."""
        self._retains_grad = True

    def to(self, device_or_dtype) -> "Tensor":
        from minigen.ops import elementwise
        if isinstance(device_or_dtype, str) and device_or_dtype.split(":")[0] in backend.DEVICES:
            return elementwise.ToDevice(device_or_dtype)(self)
        return elementwise.Cast(device_or_dtype)(self)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def float(self) -> "Tensor":
        return self.to(np.float32)

    def double(self) -> "Tensor":
        return self.to(np.float64)

    def long(self) -> "Tensor":
        return self.to(np.int64)

    # ---- autograd -------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`.

        grad: the gradient of some scalar with respect to self (default 1 for a scalar).
        """
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad and has no graph")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward(): grad can be created implicitly only for scalar "
                                   f"outputs, but this output has shape {self.shape}")
            grad = Tensor(self.data * 0 + 1)
        run_backward([self], [_as_tensor(grad, self)], retain_graph or create_graph,
                     create_graph, targets=None)

    # ---- operators (the rules live in minigen/ops) --------------------------------------
    def __add__(self, other): return elementwise.add(self, other)
    def __radd__(self, other): return elementwise.add(other, self)
    def __sub__(self, other): return elementwise.sub(self, other)
    def __rsub__(self, other): return elementwise.sub(other, self)
    def __mul__(self, other): return elementwise.mul(self, other)
    def __rmul__(self, other): return elementwise.mul(other, self)
    def __truediv__(self, other): return elementwise.div(self, other)
    def __rtruediv__(self, other): return elementwise.div(other, self)
    def __pow__(self, exponent): return elementwise.pow(self, exponent)
    def __rpow__(self, base): return elementwise.pow(base, self)
    def __neg__(self): return elementwise.neg(self)
    def __matmul__(self, other): return matmul.matmul(self, other)
    def __rmatmul__(self, other): return matmul.matmul(other, self)
    def __getitem__(self, index): return shape_ops.getitem(self, index)

    # comparisons give boolean tensors with no gradient
    def _compare(self, other, name):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(getattr(self.data, name)(other))

    def __lt__(self, other): return self._compare(other, "__lt__")
    def __le__(self, other): return self._compare(other, "__le__")
    def __gt__(self, other): return self._compare(other, "__gt__")
    def __ge__(self, other): return self._compare(other, "__ge__")
    def __eq__(self, other): return self._compare(other, "__eq__")
    def __ne__(self, other): return self._compare(other, "__ne__")
    def __invert__(self): return Tensor(~self.data)
    def __and__(self, other): return self._compare(other, "__and__")
    def __or__(self, other): return self._compare(other, "__or__")

    # ---- methods with PyTorch's names ------------------------------------------------------
    def exp(self): return elementwise.exp(self)
    def log(self): return elementwise.log(self)
    def sqrt(self): return elementwise.sqrt(self)
    def sin(self): return elementwise.sin(self)
    def cos(self): return elementwise.cos(self)
    def abs(self): return elementwise.abs(self)
    def clamp(self, min=None, max=None): return elementwise.clamp(self, min, max)
    def pow(self, exponent): return elementwise.pow(self, exponent)
    def sum(self, dim=None, keepdim=False): return reduce.sum(self, dim, keepdim)
    def mean(self, dim=None, keepdim=False): return reduce.mean(self, dim, keepdim)
    def var(self, dim=None, keepdim=False, unbiased=True): return reduce.var(self, dim, keepdim, unbiased)
    def std(self, dim=None, keepdim=False, unbiased=True): return reduce.std(self, dim, keepdim, unbiased)
    def max(self, dim=None, keepdim=False): return reduce.max(self, dim, keepdim)
    def min(self, dim=None, keepdim=False): return reduce.min(self, dim, keepdim)
    def logsumexp(self, dim, keepdim=False): return reduce.logsumexp(self, dim, keepdim)
    def argmax(self, dim=None, keepdim=False): return reduce.argmax(self, dim, keepdim)
    def argmin(self, dim=None, keepdim=False): return reduce.argmin(self, dim, keepdim)
    def norm(self): return reduce.norm(self)
    def reshape(self, *shape): return shape_ops.reshape(self, *shape)
    def view(self, *shape): return shape_ops.reshape(self, *shape)
    def transpose(self, dim0, dim1): return shape_ops.transpose(self, dim0, dim1)
    def permute(self, *dims): return shape_ops.permute(self, *dims)
    def expand(self, *shape): return shape_ops.expand(self, *shape)
    def unsqueeze(self, dim): return shape_ops.unsqueeze(self, dim)
    def squeeze(self, dim=None): return shape_ops.squeeze(self, dim)
    def flatten(self, start_dim=0, end_dim=-1): return shape_ops.flatten(self, start_dim, end_dim)
    def split(self, split_size, dim=0): return shape_ops.split(self, split_size, dim)
    def chunk(self, chunks, dim=0): return shape_ops.chunk(self, chunks, dim)
    def relu(self): return activations.relu(self)
    def sigmoid(self): return activations.sigmoid(self)
    def tanh(self): return activations.tanh(self)
    def softmax(self, dim): return activations.softmax(self, dim)
    def log_softmax(self, dim): return activations.log_softmax(self, dim)

    @property
    def T(self) -> "Tensor":
        return shape_ops.permute(self, *reversed(range(self.ndim)))


def _as_tensor(value, like: Tensor | None = None) -> Tensor:
    """Wrap a scalar or array as a constant Tensor, in `like`'s dtype and device for scalars."""
    if isinstance(value, Tensor):
        return value
    if like is not None and np.isscalar(value):
        xp = backend.array_module(like.data)
        dtype = like.dtype
        if dtype.kind not in "fc" and isinstance(value, float):
            dtype = np.float32
        return Tensor(xp.asarray(value, dtype=dtype))
    return Tensor(value)


_new_tensor = object.__new__


def _wrap(array) -> "Tensor":
    """An op's output array as a Tensor: NumPy arrays skip the checks of Tensor()."""
    if type(array) is not np.ndarray:
        return Tensor(array)  # NumPy scalars become 0-d arrays there; CuPy arrays pass
    result = _new_tensor(Tensor)
    result.data, result.grad, result.requires_grad = array, None, False
    result._ctx, result._retains_grad = None, False
    return result


class Function:
    """One differentiable op. Subclasses define `forward(*arrays)` and `backward(*grads)`.

    Parameters that are not tensors (a dim, a stride) go to `__init__`. In `backward`,
    `self.inputs` are the input Tensors, `self.output_tensors()` the outputs, and
    `self.needs_grad[i]` says whether input i wants a gradient (so work can be skipped).
    """

    inputs: tuple = ()
    needs_grad: tuple = ()

    def __call__(self, *inputs):
        # The hot path of every op, so it avoids generators and repeated work: constants are
        # wrapped only when present, devices compared only when the array types differ.
        for x in inputs:
            if not isinstance(x, Tensor):
                like = next((x for x in inputs if isinstance(x, Tensor)), None)
                inputs = tuple(_as_tensor(x, like) for x in inputs)
                break
        if len(inputs) > 1:
            first = type(inputs[0].data)
            for x in inputs:
                if type(x.data) is not first:
                    _check_same_device(self, inputs)
                    break
        try:
            outputs = self.forward(*[x.data for x in inputs])
        except ValueError as error:
            shapes = " and ".join(str(x.shape) for x in inputs)
            raise ValueError(f"{self.name()}: inputs of shapes {shapes}: {error}") from None
        single = type(outputs) is not tuple
        results = (_wrap(outputs),) if single else tuple(
            _wrap(out) if out is not None else None for out in outputs)
        if _grad_enabled:
            needs_grad = tuple([x.requires_grad for x in inputs])
            if True in needs_grad:
                self.inputs, self.needs_grad = inputs, needs_grad
                self._outputs = tuple([weakref.ref(r) if r is not None else None for r in results])
                # Shapes too: an output the caller dropped (weakref dead) still gets a zero
                # gradient.
                self._output_specs = tuple([(r.data.shape, r.data.dtype) if r is not None else None
                                            for r in results])
                for result in results:
                    if result is not None and result.data.dtype.kind == "f":
                        result.requires_grad, result._ctx = True, self
        return results[0] if single else results

    def output_tensors(self) -> tuple:
        return tuple(ref() if ref is not None else None for ref in self._outputs)

    def zero_grad_output(self, index: int):
        """A zero gradient for output `index` (None for an output that forward left None)."""
        if self._output_specs[index] is None:
            return None
        shape, dtype = self._output_specs[index]
        return Tensor(backend.array_module(self.inputs[0].data).zeros(shape, dtype=dtype))

    def name(self) -> str:
        return type(self).__name__.lower()

    def forward(self, *arrays):  # pragma: no cover - every op defines it
        raise NotImplementedError

    def backward(self, *grad_outputs):  # pragma: no cover
        raise NotImplementedError


def _check_same_device(function: Function, inputs) -> None:
    kinds = {type(x.data) for x in inputs}
    if len(kinds) > 1 and len({x.device for x in inputs}) > 1:
        devices = ", ".join(x.device for x in inputs)
        raise RuntimeError(f"{function.name()}: inputs live on different devices ({devices}); "
                           "move them with .to(device) first")


def _topological_order(roots) -> list:
    """Functions reachable from the roots, each after every function it depends on."""
    order, visited = [], set()
    for root in roots:
        if root._ctx is None or id(root._ctx) in visited:
            continue
        stack = [(root._ctx, False)]
        while stack:
            function, expanded = stack.pop()
            if expanded:
                order.append(function)
                continue
            if id(function) in visited:
                continue
            visited.add(id(function))
            stack.append((function, True))
            if function.inputs is None:
                raise RuntimeError("backward through a graph that was already freed; pass "
                                   "retain_graph=True to the first backward() to go through it twice")
            for x in function.inputs:
                if x._ctx is not None and id(x._ctx) not in visited:
                    stack.append((x._ctx, False))
    return order


def run_backward(roots, root_grads, retain_graph: bool, create_graph: bool, targets=None):
    """The reverse walk shared by `Tensor.backward` and `minigen.grad`.

    With targets=None the gradients land in the leaves' `.grad`; otherwise the gradients
    of the targets are returned (and no `.grad` is touched).
    """
    grads: dict[int, Tensor] = {}
    keep = {id(t) for t in targets} if targets is not None else set()
    for root, grad in zip(roots, root_grads):
        grads[id(root)] = grads[id(root)] + grad if id(root) in grads else grad
    leaves = {id(root): root for root in roots if root._ctx is None}
    order = _topological_order(roots)
    # Hold every tensor of the graph until the walk ends: outputs are only weakly referenced
    # by their creators, and freeing a consumer's inputs must not drop them mid-walk.
    alive = [x for function in order for x in function.inputs]  # noqa: F841
    with set_grad_enabled(create_graph):
        for function in reversed(order):
            outputs = function.output_tensors()
            grad_outputs = []
            for out in outputs:
                if out is None:
                    grad_outputs.append(None)
                    continue
                grad = grads.get(id(out)) if id(out) in keep or out._retains_grad else grads.pop(id(out), None)
                if out._retains_grad and grad is not None and targets is None:
                    out.grad = grad if create_graph else grad.detach()
                grad_outputs.append(grad)
            missing = [g is None for g in grad_outputs]  # `None in` would call Tensor.__eq__
            if True in missing:
                if False not in missing:
                    continue
                grad_outputs = [g if g is not None else function.zero_grad_output(index)
                                for index, g in enumerate(grad_outputs)]
            grad_inputs = function.backward(*grad_outputs)
            if not isinstance(grad_inputs, tuple):
                grad_inputs = (grad_inputs,)
            for x, needs, grad in zip(function.inputs, function.needs_grad, grad_inputs):
                if not needs or grad is None:
                    continue
                if grad.shape != x.shape:
                    raise RuntimeError(f"{function.name()}.backward gave a gradient of shape "
                                       f"{grad.shape} for an input of shape {x.shape}")
                grads[id(x)] = grads[id(x)] + grad if id(x) in grads else grad
                if x._ctx is None:
                    leaves[id(x)] = x
            if not retain_graph:
                function.inputs = None
    if targets is not None:
        return [grads.get(id(t)) for t in targets]
    for key, leaf in leaves.items():
        if not leaf.requires_grad:
            continue
        grad = grads[key] if create_graph else grads[key].detach()
        leaf.grad = grad if leaf.grad is None else leaf.grad + grad
    if _backward_hooks:
        updated = [leaf for leaf in leaves.values() if leaf.requires_grad]
        for hook in tuple(_backward_hooks):
            hook(updated)
    return None


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, allow_unused: bool = False) -> tuple:
    """d(outputs)/d(inputs) without touching `.grad`, as torch.autograd.grad.

    With create_graph=True the results have graphs, e.g. for a gradient penalty.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    root_grads = []
    for out, g in zip(outputs, grad_outputs):
        if g is None:
            if out.data.size != 1:
                raise RuntimeError(f"grad(): grad_outputs is needed for the non-scalar output of "
                                   f"shape {out.shape}")
            g = Tensor(out.data * 0 + 1)
        root_grads.append(_as_tensor(g, out))
    retain = create_graph if retain_graph is None else retain_graph
    results = run_backward(outputs, root_grads, retain, create_graph, targets=inputs)
    for index, (x, g) in enumerate(zip(inputs, results)):
        if g is None and not allow_unused:
            raise RuntimeError(f"grad(): input {index} (shape {x.shape}) was not used to compute "
                               "the outputs; pass allow_unused=True to get None for it")
    return tuple(results)


# The op families import Tensor and Function from this module, so they come last.
from minigen.ops import activations, elementwise, matmul, reduce  # noqa: E402
from minigen.ops import shape as shape_ops  # noqa: E402
