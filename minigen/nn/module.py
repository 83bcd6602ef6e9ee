"""Module and Parameter: the containers that layers and models are built from.

A Module registers what is assigned to it: Parameters (trained), buffers (state that is saved
but not trained, e.g. BatchNorm's running statistics) and submodules, each under its attribute
name, so that `state_dict()` keys are dotted paths exactly as in PyTorch ("block.0.weight").
That is what lets a PyTorch state dict load into a minigen model by name.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Callable, Iterator

import numpy as np

from minigen import backend
from minigen.tensor import Tensor

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad=True by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def _array_of(value):
    """The array behind a Tensor, NumPy or CuPy array, or number from a state dict."""
    if isinstance(value, Tensor):
        return value.data
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    return np.asarray(value)


class RemovableHandle:
    """What register_forward_pre_hook returns: remove() takes the hook out again."""

    def __init__(self, hooks: OrderedDict):
        self.hooks, self.key = hooks, object()  # a key no other handle can have

    def remove(self) -> None:
        self.hooks.pop(self.key, None)


class Module:
    """Base class of every layer and model; subclasses define `forward`."""

    training: bool

    def __init__(self):
        # Written through object.__setattr__: our own __setattr__ needs these to exist.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(); define it in the subclass")

    def __call__(self, *args, **kwargs):
        for hook in self.__dict__.get("_forward_pre_hooks", {}).values():
            hook(self, args)
        return self.forward(*args, **kwargs)

    def register_forward_pre_hook(self, hook: Callable) -> "RemovableHandle":
        """Call hook(module, args) before every forward, as PyTorch does (spectral_norm
        recomputes the weight there). Returns a handle whose remove() unregisters it."""
        hooks = self.__dict__.setdefault("_forward_pre_hooks", OrderedDict())
        handle = RemovableHandle(hooks)
        hooks[handle.key] = hook
        return handle

    # ---- registration ---------------------------------------------------------------------
    def _registries(self):
        registries = self.__dict__.get("_parameters")
        if registries is None:
            raise AttributeError(f"cannot assign to {type(self).__name__} before "
                                 "Module.__init__() is called; call super().__init__() first")
        return self._parameters, self._buffers, self._modules

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, (Parameter, Module)):
            parameters, buffers, modules = self._registries()
            for registry in (parameters, buffers, modules):
                registry.pop(name, None)
            self.__dict__.pop(name, None)
            (parameters if isinstance(value, Parameter) else modules)[name] = value
            return
        registries = self.__dict__.get("_parameters")
        if registries is not None:
            for registry, kind in ((self._parameters, "parameter"), (self._modules, "module"),
                                   (self._buffers, "buffer")):
                if name not in registry:
                    continue
                allowed = value is None or (kind == "buffer" and isinstance(value, Tensor))
                if not allowed:
                    raise TypeError(f"cannot assign a {type(value).__name__} to {kind} "
                                    f"'{name}' of {type(self).__name__}; assign a "
                                    f"{'Tensor' if kind == 'buffer' else kind.capitalize()} or None")
                registry[name] = value
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: the registered things live in the registries.
        for registry in ("_parameters", "_buffers", "_modules"):
            values = self.__dict__.get(registry)
            if values is not None and name in values:
                return values[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register a Parameter (or None: a slot that is absent, like a layer without bias)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter('{name}'): expected a Parameter or None, got "
                            f"{type(param).__name__}; wrap it as nn.Parameter(tensor)")
        self._registries()
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register state that is saved (when persistent) and moved with the module, not trained."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer('{name}'): expected a Tensor or None, got "
                            f"{type(tensor).__name__}")
        self._registries()
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: "Module | None") -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module('{name}'): {type(module).__name__} is not a Module")
        self._registries()
        self.__dict__.pop(name, None)
        self._modules[name] = module

    register_module = add_module

    # ---- walking the tree -----------------------------------------------------------------
    def named_modules(self, memo: set | None = None, prefix: str = "") -> Iterator:
        """(dotted name, module) for this module and every descendant, each once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator:
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator["Module"]:
        for _, module in self.named_children():
            yield module

    def _named_members(self, registry: str, prefix: str, recurse: bool,
                       persistent_only: bool = False) -> Iterator:
        seen = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            skip = module._non_persistent_buffers if persistent_only else ()
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen or name in skip:
                    continue
                seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator:
        """(dotted name, Parameter) pairs; a Parameter shared by two modules comes once."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator:
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def num_parameters(self, trainable_only: bool = False) -> int:
        """The number of scalars in all parameters (each shared Parameter counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        """Call fn on every submodule (children first) and on self, as PyTorch does."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ---- modes, gradients, devices -----------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        object.__setattr__(self, "training", bool(mode))
        for module in self.children():
            module.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for param in self.parameters():
            param.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.parameters():
            if set_to_none or param.grad is None:
                param.grad = None
            else:
                param.grad = Tensor(param.grad.data * 0)

    def _tensors(self) -> Iterator[Tensor]:
        for module in self.modules():
            yield from (p for p in module._parameters.values() if p is not None)
            yield from (b for b in module._buffers.values() if b is not None)

    def to(self, device_or_dtype) -> "Module":
        """Move (a device name) or cast (a floating dtype) every parameter and buffer in place.

        The Parameter objects stay the same (only their `.data` is replaced), so an optimizer
        built before the move still holds them. Casting touches floating-point tensors only.
        """
        is_device = isinstance(device_or_dtype, str) and \
            device_or_dtype.split(":")[0] in backend.DEVICES
        if is_device:
            device = backend.check_device(device_or_dtype)
            convert = lambda array: backend.to_device(array, device)  # noqa: E731
        else:
            dtype = np.dtype(device_or_dtype)
            if dtype.kind != "f":
                raise TypeError(f"Module.to: {dtype} is not a floating dtype nor a device name "
                                "('cpu' or 'cuda')")
            convert = lambda array: (  # noqa: E731
                array.astype(dtype) if array.dtype.kind == "f" else array)
        for tensor in self._tensors():
            tensor.data = convert(tensor.data)
            if tensor.grad is not None:
                tensor.grad = Tensor(convert(tensor.grad.data))
        return self

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self) -> "Module":
        return self.to("cuda")

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    # ---- state dicts ------------------------------------------------------------------------
    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> "OrderedDict[str, Tensor]":
        """Parameters and persistent buffers by dotted name, as in PyTorch.

        The tensors share memory with the module (detached, unless keep_vars).
        """
        state = OrderedDict()
        for module_prefix, module in self.named_modules(prefix=prefix.rstrip(".")):
            head = f"{module_prefix}." if module_prefix else ""
            for name, param in module._parameters.items():
                if param is not None:
                    state[head + name] = param if keep_vars else param.detach()
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in module._non_persistent_buffers:
                    state[head + name] = buffer if keep_vars else buffer.detach()
        return state

    def _state_targets(self) -> "OrderedDict[str, tuple[str, Tensor]]":
        """Every state-dict key with its kind ('weight' for parameters, 'buffer') and tensor."""
        kinds = {id(p): "weight" for p in self.parameters()}
        return OrderedDict((key, (kinds.get(id(tensor), "buffer"), tensor))
                           for key, tensor in self.state_dict(keep_vars=True).items())

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy a state dict (Tensors, NumPy or CuPy arrays) into this module's tensors in place.

        Each value lands on its tensor's device and dtype. Shapes must match; with `strict`
        the keys must too. Nothing is changed unless every check passes; a ValueError lists
        the missing keys, the unexpected keys and the shape mismatches.
        """
        targets = self._state_targets()
        missing = [key for key in targets if key not in state_dict]
        unexpected = [key for key in state_dict if key not in targets]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        for key, (kind, tensor) in targets.items():
            if key in state_dict:
                shape = tuple(_array_of(state_dict[key]).shape)
                if shape != tuple(tensor.shape):
                    problems.append(f"{kind} '{key}': checkpoint has shape {shape} but the model "
                                    f"has {tuple(tensor.shape)}")
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for key, (_, tensor) in targets.items():
            if key in state_dict:
                value = backend.to_device(_array_of(state_dict[key]), tensor.device)
                tensor.data[...] = value.astype(tensor.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    # ---- printing -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The arguments shown inside the parentheses of repr (layers override this)."""
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(module).replace("\n", "\n  ")
                 for name, module in self._modules.items() if module is not None]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        body = "\n  ".join(([extra] if extra else []) + lines)
        return f"{type(self).__name__}(\n  {body}\n)"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))
