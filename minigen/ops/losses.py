"""Losses: mse_loss, binary_cross_entropy_with_logits, cross_entropy, nll_loss.

Each works from logits in a form that stays finite for logits of +-1e4: BCE as
max(x, 0) - x t + log(1 + e^-|x|), cross-entropy through log_softmax.
"""
from __future__ import annotations

from minigen import backend
from minigen.ops.activations import log_softmax, sigmoid
from minigen.ops.reduce import mean, sum
from minigen.ops.shape import getitem, permute, reshape
from minigen.tensor import Function, Tensor, _as_tensor


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return mean(loss)
    if reduction == "sum":
        return sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def _same_shape(name: str, input: Tensor, target: Tensor) -> None:
    if input.shape != target.shape:
        raise ValueError(f"{name}: input shape {input.shape} and target shape {target.shape} differ")


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    target = _as_tensor(target, input)
    _same_shape("mse_loss", input, target)
    diff = input - target
    return _reduce(diff * diff, reduction)


class BCEWithLogits(Function):
    """-[t log s(x) + (1-t) log(1-s(x))]; d/dx = s(x) - t, d/dt = -x."""

    def forward(self, logits, target):
        xp = backend.array_module(logits)
        return xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))

    def backward(self, grad_output):
        logits, target = self.inputs
        grad_logits = grad_output * (sigmoid(logits) - target) if self.needs_grad[0] else None
        grad_target = -grad_output * logits if self.needs_grad[1] else None
        return grad_logits, grad_target


def binary_cross_entropy_with_logits(input: Tensor, target, reduction: str = "mean") -> Tensor:
    target = _as_tensor(target, input)
    _same_shape("binary_cross_entropy_with_logits", input, target)
    return _reduce(BCEWithLogits()(input, target), reduction)


def nll_loss(log_probs: Tensor, target, reduction: str = "mean") -> Tensor:
    """-log_probs[n, target[n]] for log_probs (N, C) or (N, C, d1, ...) and target (N, d1, ...)."""
    target = target.data if isinstance(target, Tensor) else target
    target_shape = target.shape  # reduction="none" gives one loss per target, in its shape
    if log_probs.ndim > 2:  # move classes last and flatten the rest
        dims = (0,) + tuple(range(2, log_probs.ndim)) + (1,)
        log_probs = reshape(permute(log_probs, *dims), -1, log_probs.shape[1])
        target = target.reshape(-1)
    if target.shape != log_probs.shape[:1]:
        raise ValueError(f"nll_loss: target shape {target.shape} does not match input "
                         f"shape {log_probs.shape} (expected ({log_probs.shape[0]},))")
    num_classes = log_probs.shape[1]
    if target.size and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"nll_loss: target holds classes outside [0, {num_classes - 1}]")
    xp = backend.array_module(log_probs.data)
    picked = getitem(log_probs, (xp.arange(log_probs.shape[0]), xp.asarray(target)))
    return _reduce(reshape(-picked, target_shape), reduction)


def cross_entropy(input: Tensor, target, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy from logits (N, C, ...): target is class indices (N, ...) or
    class probabilities of the input's shape."""
    log_probs = log_softmax(input, 1)
    if isinstance(target, Tensor) and target.dtype.kind == "f":
        _same_shape("cross_entropy", input, target)
        if label_smoothing:  # mix the targets with the uniform distribution, as PyTorch does
            target = target * (1 - label_smoothing) + label_smoothing / input.shape[1]
        return _reduce(-sum(target * log_probs, 1), reduction)
    loss = nll_loss(log_probs, target, reduction)
    if label_smoothing:
        smooth = _reduce(-mean(log_probs, 1), reduction)
        loss = loss * (1 - label_smoothing) + smooth * label_smoothing
    return loss
