"""The training-loop protocol: what a loop (DDPM, GAN, or any subclass) gives the harness.

`TrainingLoop` is the base class that minigen.ddpm and minigen.gan implement; `UserError` and
`TrainingInterrupted` are the two ways a run ends early that a user can cause. A loop calls
`check_finite` with a step's loss and gradient norm before it applies the update: a NaN or an
infinity raises `NonFiniteStep`, and the harness stops the run or skips the step. The harness
(minigen.run) calls a loop through this protocol only, so the loops never import the harness.
"""
from __future__ import annotations

import math
import signal

import numpy as np

from minigen import kernels
from minigen.fusion import fusion_enabled


class UserError(Exception):
    """Bad input from the user (an option, a file, a folder): reported as one line, no traceback."""

    quiet = False  # True on the ranks of a data-parallel run that leave the report to rank 0


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the run saved a checkpoint at `step` and stopped."""

    def __init__(self, signum: int, step: int, checkpoint: str, loop_name: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; saved "
                         f"{checkpoint} (continue with: minigen train {loop_name} --resume "
                         f"{checkpoint})")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "killed by signal N"


class NonFiniteStep(Exception):
    """A step's loss or gradient norm is NaN or infinite. Raised by TrainingLoop.check_finite
    before the optimizer applies the update, so skipping the step leaves the weights as they
    were. quantity: the scalar's name; scalars: every scalar the loop had for the step."""

    def __init__(self, quantity: str, value: float, scalars: dict):
        self.quantity, self.value, self.scalars = quantity, value, dict(scalars)
        super().__init__(f"{quantity} is {value}")


def gradient_norm(parameters) -> float:
    """The L2 norm of all gradients of `parameters` taken together (0.0 when none has one),
    summed in float64 so that large but finite float32 gradients do not overflow; with fusion
    on, in one multi-tensor pass (the kernels' grad_norm, as clip_grad_norm_ uses)."""
    parameters = list(parameters)
    grads = [param.grad.data for param in parameters if param.grad is not None]
    if grads and fusion_enabled() and len({type(grad) for grad in grads}) == 1:
        return float(kernels.for_array(grads[0]).grad_norm(grads, 2.0))
    total = 0.0
    for param in parameters:
        if param.grad is not None:
            grad = param.grad.data.astype(np.float64) if param.grad.data.dtype != np.float64 \
                else param.grad.data
            total += float((grad * grad).sum())
    return math.sqrt(total)


class TrainingLoop:
    """The base class of every training loop (DDPMLoop, GANLoop): what the harness calls.

    A subclass builds its models, optimizers and EMAs from `config` alone (so the same class
    rebuilds a trained loop from a checkpoint), does one step in `train_step`, and draws samples
    in `sample`. Randomness must come only from minigen's default generators (minigen.randn and
    friends), which the harness seeds and checkpoints: that makes a resumed run equal a straight
    one bit for bit. Raise ValueError for a bad option; the harness reports it as one line.
    sample() may switch models to eval mode (or to EMA weights) but must leave them as it found
    them, since training continues after each picture.
    """

    name: str = ""                   # the word in `minigen train NAME`
    default_dataset: str = "digits"
    default_steps: int = 1000        # defaults of the harness's common options, per loop
    default_batch_size: int = 64
    default_lr: float = 2e-4
    default_checkpoint_every: int = 500
    # Options that name the default output folder when they differ from their default
    # (a flag by its name, any other option by its value): runs/ddpm-digits-conditional, so
    # runs with different settings do not fight over one folder.
    run_name_options: tuple[str, ...] = ()
    # The default of --lr in words, for a loop whose default_lr is None (chosen from the data).
    default_lr_help: str = ""

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add the loop's own `minigen train NAME` options (with help, so defaults show)."""

    @classmethod
    def add_sample_arguments(cls, parser) -> None:
        """Add the loop's options of `minigen sample` (they arrive as **options in sample)."""

    def __init__(self, config: dict, device: str):
        """config: every option plus loop, dataset, data_kind ("images" | "points"),
        data_shape (one sample's shape, e.g. [1, 8, 8] or [2]) and num_classes (int or None)."""
        self.config, self.device = config, device

    def models(self) -> dict:
        """name -> nn.Module, saved under the checkpoint's /models."""
        raise NotImplementedError(f"{type(self).__name__} must define models()")

    def optimizers(self) -> dict:
        """name -> optimizer or LR scheduler (anything with state_dict / load_state_dict)."""
        raise NotImplementedError(f"{type(self).__name__} must define optimizers()")

    def emas(self) -> dict:
        """name -> EMA (empty when the loop keeps none)."""
        return {}

    def train_step(self, batch, labels, step: int) -> dict:
        """One iteration on `batch` (Tensor on the loop's device; labels Tensor or None).
        Returns the scalars to log as Python floats, e.g. {"loss": 0.03, "lr": 2e-4}."""
        raise NotImplementedError(f"{type(self).__name__} must define train_step()")

    def check_finite(self, **scalars: float) -> None:
        """Call with a step's loss and gradient norm (Python floats), after backward and before
        the optimizer step: a NaN or infinite one raises NonFiniteStep, so the bad update is
        never applied. The harness then stops the run (the last checkpoint kept as it was), or
        with --on-nonfinite skip counts the step as skipped and goes on. A loop with several
        optimizers checks before each step, as mixed-precision trainers skip each on its own."""
        for quantity, value in scalars.items():
            if not math.isfinite(value):
                raise NonFiniteStep(quantity, value, scalars)

    def sample(self, n: int, **options):
        """n samples as a NumPy array: images in [-1, 1] (n, C, H, W), points (n, D)."""
        raise NotImplementedError(f"{type(self).__name__} must define sample()")
