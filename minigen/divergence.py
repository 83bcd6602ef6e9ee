"""What the harness does when training diverges: a loss or gradient norm that is NaN or inf.

A loop calls TrainingLoop.check_finite before each optimizer step (minigen.loop); the
`NonFiniteGuard` here runs each step, stops the run at the first non-finite value with one line
naming the step, the quantity and what to try, or with --on-nonfinite skip counts the skipped
steps. `check_weights` keeps NaN weights from ever being saved over a good checkpoint. The
harness (minigen.run) owns one guard per run.
"""
from __future__ import annotations

import math

import numpy as np

from minigen import backend
from minigen.loop import NonFiniteStep, TrainingLoop, UserError

NONFINITE_MODES = ("stop", "skip")
MAX_SKIPS_IN_A_ROW = 100  # --on-nonfinite skip: so many bad steps in a row end the run anyway


class TrainingDiverged(UserError):
    """A loss, gradient norm or weight became NaN or infinite; the run stopped without saving
    the bad state."""


def _first_nonfinite(scalars: dict) -> NonFiniteStep | None:
    """A loss or gradient norm among a step's returned scalars that is NaN or infinite."""
    for key, value in scalars.items():
        if ("loss" in key or key.startswith("grad_norm")) and not math.isfinite(value):
            return NonFiniteStep(key, value, scalars)
    return None


class NonFiniteGuard:
    """Runs a loop's steps and decides what a non-finite one means for the run.

    mode: "stop" or "skip". skipped: steps skipped so far (a resumed run starts from the count
    its checkpoint holds). The log's 'skipped' column (skip mode) holds that count."""

    def __init__(self, loop: TrainingLoop, config: dict, mode: str = "stop", skipped: int = 0):
        self.loop, self.config, self.mode = loop, config, mode
        self.skipped, self.skipped_in_a_row = skipped, 0
        self.can_skip = True  # False once the loop is seen not to call check_finite

    @property
    def skipping(self) -> bool:
        return self.mode == "skip"

    def step(self, batch, labels, step: int) -> tuple[dict, str | None]:
        """(scalars, stop): the loop's scalars (plus 'skipped' in skip mode) and, when the run
        must stop, the one-line reason without what happened to the checkpoint.

        NumPy's overflow warnings are silenced during the step: the guard says it in one line."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                scalars, bad = self.loop.train_step(batch, labels, step), None
            except NonFiniteStep as error:  # raised before the update was applied
                scalars, bad = error.scalars, error
        applied = bad is None
        if applied:  # a loop that does not call check_finite: its update is in already
            bad = _first_nonfinite(scalars)
            self.can_skip = bad is None
        if bad is None:
            self.skipped_in_a_row = 0
        elif self.skipping and not applied:
            self.skipped, self.skipped_in_a_row = self.skipped + 1, self.skipped_in_a_row + 1
        if self.skipping:
            scalars = {**scalars, "skipped": self.skipped}
        stop = bad is not None and (not self.skipping or applied
                                    or self.skipped_in_a_row >= MAX_SKIPS_IN_A_ROW)
        return scalars, (self._reason(step, bad, applied) if stop else None)

    def _reason(self, step: int, bad: NonFiniteStep, applied: bool) -> str:
        if self.skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
            what = (f"{self.skipped_in_a_row} steps in a row had a non-finite value (the last: "
                    f"{bad.quantity} {bad.value}), so training stopped")
        elif applied:
            what = (f"{bad.quantity} is {bad.value}, so training stopped (the "
                    f"{self.config['loop']} loop applies its update before reporting it and "
                    "does not call check_finite, so the step could not be skipped)")
        else:
            what = f"{bad.quantity} is {bad.value}, so training stopped before that update"
        return f"step {step}: {what}"

    def advice(self) -> str:
        """What to try, for the end of the message: the options this run can change."""
        tries = []
        if self.config.get("lr") is not None:
            tries.append(f"a lower --lr (now {self.config['lr']:g})")
        if "grad_clip" in self.config:
            clip = self.config["grad_clip"]
            tries.append(f"a smaller --grad-clip (now {clip:g})" if clip else
                         "--grad-clip 1 (now off)")
        if not self.skipping and self.can_skip:
            tries.append("--on-nonfinite skip to skip such steps")
        if not tries:
            return "try other settings"
        return "try " + (", ".join(tries[:-1]) + " or " if len(tries) > 1 else "") + tries[-1]


def nonfinite_weight(loop: TrainingLoop) -> str | None:
    """The name (MODEL.KEY) of the first floating-point weight or buffer holding NaN or inf."""
    for name, model in loop.models().items():
        for key, value in model.state_dict().items():
            data = getattr(value, "data", value)
            if (np.issubdtype(data.dtype, np.floating)
                    and not bool(backend.array_module(data).isfinite(data).all())):
                return f"{name}.{key}"
    return None
