"""EMA: an exponential moving average of a model's parameters, the weights that DDPM and
GAN papers sample from.

After each optimizer step, update() moves every shadow array towards the parameter:
shadow = decay_t * shadow + (1 - decay_t) * param. Buffers (BatchNorm statistics) are copied,
not averaged. With warmup, decay_t = min(decay, (1 + t) / (10 + t)) for the t-th update
(t = 0, 1, ...), so early shadows are not dominated by the random initialisation.
"""
from __future__ import annotations

import contextlib

from minigen import backend, kernels
from minigen.fusion import fusion_enabled
from minigen.nn.module import Module


class EMA:
    """Shadow copies of `model`'s parameters (and buffers), averaged by update()."""

    def __init__(self, model: Module, decay: float = 0.999, warmup: bool = False):
        if not 0 <= decay <= 1:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        self.model, self.decay, self.warmup = model, decay, warmup
        self.num_updates = 0
        self.shadow = {name: param.data.copy() for name, param in model.named_parameters()}
        self.buffers = {name: buffer.data.copy() for name, buffer in model.named_buffers()}

    def current_decay(self) -> float:
        """The decay the next update() uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def _pairs(self, model: Module, registry: dict, named) -> list:
        tensors = dict(named)
        missing = [name for name in registry if name not in tensors]
        if missing or len(tensors) != len(registry):
            raise ValueError(f"EMA: the model's tensors do not match the averaged ones (missing "
                             f"{missing[:5]}, {len(tensors)} in the model vs {len(registry)}); "
                             "pass a model of the same architecture")
        return [(name, tensors[name]) for name in registry]

    def update(self, model: Module | None = None) -> None:
        """shadow = decay_t shadow + (1 - decay_t) param, for each parameter of the model."""
        model = self.model if model is None else model
        decay = self.current_decay()
        shadows, params = [], []
        for name, param in self._pairs(model, self.shadow, model.named_parameters()):
            if backend.device_of(self.shadow[name]) != param.device:  # the model moved since
                self.shadow[name] = backend.to_device(self.shadow[name], param.device)
            shadows.append(self.shadow[name])
            params.append(param.data)
        if shadows and fusion_enabled() and len({type(a) for a in shadows + params}) == 1:
            kernels.for_array(shadows[0]).ema_update(shadows, params, decay)  # one pass
        else:
            for shadow, param in zip(shadows, params):
                shadow -= (1 - decay) * (shadow - param)
        for name, buffer in self._pairs(model, self.buffers, model.named_buffers()):
            self.buffers[name] = buffer.data.copy()
        self.num_updates += 1

    def copy_to(self, model: Module | None = None) -> None:
        """Write the averaged weights (and buffers) into a model's tensors in place."""
        model = self.model if model is None else model
        for registry, named in ((self.shadow, model.named_parameters()),
                                (self.buffers, model.named_buffers())):
            for name, tensor in self._pairs(model, registry, named):
                value = backend.to_device(registry[name], tensor.device)
                tensor.data[...] = value.astype(tensor.dtype, copy=False)

    @contextlib.contextmanager
    def average_parameters(self, model: Module | None = None):
        """Within the block the model holds the averaged weights; the trained ones come back
        after (also when the block raises)."""
        model = self.model if model is None else model
        saved = [(tensor, tensor.data.copy())
                 for tensor in list(model.parameters()) + list(model.buffers())]
        self.copy_to(model)
        try:
            yield model
        finally:
            for tensor, data in saved:
                tensor.data[...] = data

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": dict(self.shadow), "buffers": dict(self.buffers)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the averages (NumPy or CuPy arrays land on the model's device)."""
        for key in ("shadow", "buffers"):
            ours, theirs = getattr(self, key), state_dict[key]
            if set(ours) != set(theirs):
                raise ValueError(f"EMA.load_state_dict: {key} names differ: missing "
                                 f"{sorted(set(ours) - set(theirs))[:5]}, unexpected "
                                 f"{sorted(set(theirs) - set(ours))[:5]}")
            for name, value in theirs.items():
                if tuple(value.shape) != tuple(ours[name].shape):
                    raise ValueError(f"EMA.load_state_dict: {key} '{name}' has shape "
                                     f"{tuple(value.shape)} but the model has "
                                     f"{tuple(ours[name].shape)}")
        for key in ("shadow", "buffers"):
            ours = getattr(self, key)
            for name, value in state_dict[key].items():
                like = ours[name]
                moved = backend.to_device(value, backend.device_of(like))
                ours[name] = backend.array_module(like).array(moved, dtype=like.dtype, copy=True)
        self.decay = float(state_dict["decay"])
        self.warmup = bool(state_dict["warmup"])
        self.num_updates = int(state_dict["num_updates"])
