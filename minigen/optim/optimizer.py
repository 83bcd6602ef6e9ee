"""Optimizers with PyTorch's update rules: SGD (momentum, Nesterov, weight decay), Adam, AdamW.

Parameters are held in param_groups (dicts with "params" and the hyper-parameters, e.g. "lr",
which schedules change). `step()` updates each parameter's array in place (no graph), using
whichever array module owns it, so the same code runs on NumPy and CuPy. Per-parameter state
(momentum buffers, Adam moments) lives in `self.state[param]`. With fusion on
(minigen.fusion_enabled()) each group is updated by one multi-tensor kernel of minigen.kernels
(every parameter in one threaded pass); with it off, parameter by parameter in array ops. Both
compute the same operations in the same order, so they give the same bits.
"""
from __future__ import annotations

from typing import Iterable

from minigen import backend, kernels
from minigen.fusion import fusion_enabled
from minigen.tensor import Tensor


def _copy_to(array, like):
    """A fresh copy of a state array on `like`'s device, in its dtype when floating."""
    array = backend.to_device(array, backend.device_of(like))
    dtype = like.dtype if getattr(array, "dtype", None) is not None and array.dtype.kind == "f" \
        else None
    return backend.array_module(like).array(array, dtype=dtype, copy=True)


class Optimizer:
    """Base class: param_groups, state, zero_grad, state_dict / load_state_dict."""

    def __init__(self, params: Iterable, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict = {}  # keyed by the Parameter itself (Tensor hashes by identity)
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass "
                             "model.parameters() of a model that has parameters")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for param in group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError(f"{type(self).__name__}: parameters must be Tensors, got "
                                f"{type(param).__name__}")
            if any(param is other for g in self.param_groups for other in g["params"]):
                raise ValueError(f"{type(self).__name__}: a parameter (shape {param.shape}) "
                                 "appears in more than one parameter group")
        for name, value in self.defaults.items():
            group.setdefault(name, value)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if set_to_none or param.grad is None:
                    param.grad = None
                else:
                    param.grad = Tensor(param.grad.data * 0)

    def step(self) -> None:
        for group in self.param_groups:
            params, grads = [], []
            for param in group["params"]:
                if param.grad is not None:
                    grad = param.grad.data
                    if backend.device_of(grad) != param.device:
                        raise RuntimeError(f"{type(self).__name__}: a gradient on "
                                           f"{backend.device_of(grad)} for a parameter on "
                                           f"{param.device} (shape {param.shape})")
                    params.append(param)
                    grads.append(grad)
            if not params:
                continue
            if fusion_enabled() and len({type(p.data) for p in params}) == 1:
                states = [self.state.setdefault(param, {}) for param in params]
                self._fused_update(kernels.for_array(params[0].data), params, grads, states,
                                   group)
                continue
            for param, grad in zip(params, grads):
                self._update(param, grad, self.state.setdefault(param, {}), group)

    def _update(self, param: Tensor, grad, state: dict, group: dict) -> None:
        """One parameter's step, in array ops."""
        raise NotImplementedError

    def _fused_update(self, backend_kernels, params: list, grads: list, states: list,
                      group: dict) -> None:
        """The whole group's step in one multi-tensor kernel of `backend_kernels`; an
        optimizer without one (a subclass that defines only _update) steps parameter by
        parameter."""
        for param, grad, state in zip(params, grads, states):
            self._update(param, grad, state, group)

    # ---- saving and restoring -----------------------------------------------------------
    def _all_params(self) -> list:
        return [param for group in self.param_groups for param in group["params"]]

    def state_dict(self) -> dict:
        """{"state": {index: {name: array or number}}, "param_groups": [{..., "params": [index]}]}.

        Parameters are numbered in the order of param_groups, as PyTorch numbers them; the
        arrays are the live state arrays (NumPy or CuPy), not copies.
        """
        index_of = {id(param): index for index, param in enumerate(self._all_params())}
        state = {index_of[id(param)]: dict(values) for param, values in self.state.items()}
        groups, start = [], 0
        for group in self.param_groups:
            saved = {key: value for key, value in group.items() if key != "params"}
            saved["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(saved)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and per-parameter state; arrays (NumPy or CuPy) are copied
        onto each parameter's device and dtype."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state has "
                             f"{len(saved_groups)} parameter groups but the optimizer has "
                             f"{len(self.param_groups)}")
        for number, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: group {number} holds "
                                 f"{len(saved['params'])} parameters in the state but "
                                 f"{len(group['params'])} in the optimizer")
        params = {}
        for saved, group in zip(saved_groups, self.param_groups):
            params.update({int(index): param for index, param in zip(saved["params"], group["params"])})
            for key, value in saved.items():
                if key != "params":
                    group[key] = tuple(value) if isinstance(value, list) else value
        self.state = {}
        for index, values in state_dict["state"].items():
            param = params[int(index)]
            restored = {}
            for name, value in values.items():
                if hasattr(value, "shape") and value.shape != ():
                    if tuple(value.shape) != tuple(param.shape):
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state "
                                         f"'{name}' of parameter {index} has shape "
                                         f"{tuple(value.shape)} but the parameter has "
                                         f"{tuple(param.shape)}")
                    restored[name] = _copy_to(value, param.data)
                else:  # a number, perhaps read back as a 0-d array
                    restored[name] = value.item() if hasattr(value, "item") else value
            self.state[param] = restored

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for number, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {number}")
            lines += [f"    {key}: {value}" for key, value in sorted(group.items()) if key != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD:

    g = grad + weight_decay * p
    buf = g (first step), else momentum * buf + (1 - dampening) * g
    g = g + momentum * buf (nesterov) or buf (momentum > 0)
    p = p - lr * g
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _update(self, param, grad, state, group):
        grad = -grad if group["maximize"] else grad
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param.data
        momentum = group["momentum"]
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.astype(param.dtype, copy=True)
            else:
                buffer *= momentum
                buffer += (1 - group["dampening"]) * grad
            grad = grad + momentum * buffer if group["nesterov"] else buffer
        param.data -= group["lr"] * grad

    def _fused_update(self, backend_kernels, params, grads, states, group):
        buffers, first_steps = [], []
        if group["momentum"]:
            xp = backend.array_module(params[0].data)
            for param, state in zip(params, states):
                first_steps.append(state.get("momentum_buffer") is None)
                if first_steps[-1]:
                    state["momentum_buffer"] = xp.empty_like(param.data)
                buffers.append(state["momentum_buffer"])
        backend_kernels.sgd_update([p.data for p in params], grads, buffers, first_steps,
                                   group["lr"], group["momentum"], group["dampening"],
                                   group["weight_decay"], group["nesterov"], group["maximize"])


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015), as torch.optim.Adam (L2 weight decay added to the gradient):

    m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    (amsgrad: v replaced by its running maximum in the denominator).
    """

    decoupled_weight_decay = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"{type(self).__name__}: need lr, eps, weight_decay >= 0 and betas "
                             f"in [0, 1), got lr={lr}, eps={eps}, weight_decay={weight_decay}, "
                             f"betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _update(self, param, grad, state, group):
        xp = backend.array_module(param.data)
        grad = -grad if group["maximize"] else grad
        lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
        if decay and self.decoupled_weight_decay:
            param.data *= 1 - lr * decay
        elif decay:
            grad = grad + decay * param.data
        self._count_step(state, param, group)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second_moment = state["max_exp_avg_sq"]
        else:
            second_moment = exp_avg_sq
        step = state["step"]
        step_size = lr / (1 - beta1 ** step)
        denominator = xp.sqrt(second_moment) / ((1 - beta2 ** step) ** 0.5) + group["eps"]
        param.data -= step_size * (exp_avg / denominator)

    @staticmethod
    def _count_step(state: dict, param, group: dict) -> None:
        """Counts one more step in `state`, creating the moments (zeros) on the first."""
        if not state:
            xp = backend.array_module(param.data)
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(param.data)
            state["exp_avg_sq"] = xp.zeros_like(param.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(param.data)
        state["step"] += 1

    def _fused_update(self, backend_kernels, params, grads, states, group):
        for param, state in zip(params, states):
            self._count_step(state, param, group)
        beta1, beta2 = group["betas"]
        backend_kernels.adam_update(
            [p.data for p in params], grads, [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else None,
            [s["step"] for s in states], group["lr"], beta1, beta2, group["eps"],
            group["weight_decay"], self.decoupled_weight_decay, group["amsgrad"],
            group["maximize"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019), as torch.optim.AdamW:
    p = p (1 - lr weight_decay) before the Adam step. Default weight_decay 1e-2."""

    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)
