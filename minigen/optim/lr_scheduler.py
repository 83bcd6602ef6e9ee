"""Learning-rate schedules, as torch.optim.lr_scheduler: each sets every group's "lr" to
base_lr * factor(t), where t counts the calls to step() (t = 0 right after construction).

LambdaLR takes any factor function; LinearWarmup, CosineAnnealingLR and WarmupCosine are the
schedules that diffusion and GAN training use. state_dict holds plain numbers only.
"""
from __future__ import annotations

import math
from typing import Callable

from minigen.optim.optimizer import Optimizer


class LRScheduler:
    """Base class: subclasses define `factor(t)`, the multiplier of each group's base lr
    (or override `lrs_at(t)` when the groups need different factors)."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def lrs_at(self, t: int) -> list[float]:
        scale = self.factor(t)
        return [base_lr * scale for base_lr in self.base_lrs]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lrs_at(self.last_epoch)):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def step(self) -> None:
        """Advance t by one and set each group's lr."""
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict:
        """The counters and base rates (functions, e.g. a LambdaLR's, are not saved)."""
        return {key: value for key, value in self.__dict__.items()
                if key not in ("optimizer", "lr_lambda")}

    def load_state_dict(self, state_dict: dict) -> None:
        for key, value in state_dict.items():
            setattr(self, key, list(value) if isinstance(value, tuple) else value)
        self._apply()


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(t)."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float],
                 last_epoch: int = -1):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        return self.lr_lambda(t)


class LinearWarmup(LRScheduler):
    """lr rises linearly over warmup_steps: factor(t) = min(1, (t + 1) / warmup_steps), so
    the first step already trains (at base_lr / warmup_steps) and step warmup_steps - 1 is at
    the full rate."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1):
        if warmup_steps < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        return min(1.0, (t + 1) / self.warmup_steps)


def _cosine(progress: float, min_ratio: float) -> float:
    """min_ratio + (1 - min_ratio) (1 + cos(pi progress)) / 2."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2 (Loshchilov and Hutter,
    2017), the closed form of torch.optim.lr_scheduler.CosineAnnealingLR; like it, the rate
    rises again after T_max (use WarmupCosine for a schedule that stays at its floor)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1):
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, t: int) -> list[float]:
        # eta_min is absolute, so each group has its own ratio.
        return [base_lr * _cosine(t / self.T_max, self.eta_min / base_lr if base_lr else 0.0)
                for base_lr in self.base_lrs]


class WarmupCosine(LRScheduler):
    """Linear warmup, then cosine decay to min_lr_ratio * base_lr at total_steps:

    factor(t) = (t + 1) / warmup_steps                                   for t < warmup_steps
    factor(t) = r + (1 - r) (1 + cos(pi (t - warmup_steps) / (total_steps - warmup_steps))) / 2
    with r = min_lr_ratio, and factor = r after total_steps.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 min_lr_ratio: float = 0.0, last_epoch: int = -1):
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"WarmupCosine: need 0 <= warmup_steps <= total_steps, got "
                             f"warmup_steps={warmup_steps}, total_steps={total_steps}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = \
            warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / decay_steps)
        return _cosine(progress, self.min_lr_ratio)
