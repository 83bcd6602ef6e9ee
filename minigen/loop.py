"""The training-loop protocol: what a loop (DDPM, GAN, or any subclass) gives the harness.

`TrainingLoop` is the base class that minigen.ddpm and minigen.gan implement; `UserError` and
`TrainingInterrupted` are the two ways a run ends early that a user can cause. The harness
(minigen.run) calls a loop through this protocol only, so the loops never import the harness.
"""
from __future__ import annotations

import signal


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

    def sample(self, n: int, **options):
        """n samples as a NumPy array: images in [-1, 1] (n, C, H, W), points (n, D)."""
        raise NotImplementedError(f"{type(self).__name__} must define sample()")
