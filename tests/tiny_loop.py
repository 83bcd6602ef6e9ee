"""A tiny training loop that exercises the run harness in a fraction of a second per step.

It learns to denoise: a small MLP maps x + sigma * noise back to x (any data, flattened), and
samples by denoising pure noise once. The noise comes from minigen's default generator, so a
resumed run equals a straight one only if the harness restores the RNG state exactly. Below it
are the helpers that test_run.py and test_cli.py share.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import minigen
import minigen.functional as F
from minigen import nn, optim, viz
from minigen.checkpoint import load_checkpoint
from minigen.loop import TrainingLoop
from minigen.run import default_config


class TinyLoop(TrainingLoop):
    name = "tiny"
    default_dataset = "ring8"
    default_steps = 20
    default_batch_size = 16
    default_lr = 1e-2
    default_checkpoint_every = 5

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--hidden", type=int, default=16, help="hidden units of the MLP")
        parser.add_argument("--sigma", type=float, default=0.5, help="training noise level")
        parser.add_argument("--step-delay", type=float, default=0.0,
                            help="seconds to sleep in each step (lets a test signal mid-run)")

    @classmethod
    def add_sample_arguments(cls, parser) -> None:
        parser.add_argument("--temperature", type=float, default=1.0,
                            help="scale of the noise that sampling starts from")

    def __init__(self, config: dict, device: str):
        super().__init__(config, device)
        if config["hidden"] < 1:
            raise ValueError(f"--hidden is {config['hidden']}; pass 1 or more")
        self.size = math.prod(config["data_shape"])
        self.model = nn.Sequential(nn.Linear(self.size, config["hidden"]), nn.ReLU(),
                                   nn.Linear(config["hidden"], self.size))
        self.model.to(device)
        self.optimizer = optim.Adam(self.model.parameters(), lr=config["lr"])

    def models(self) -> dict:
        return {"denoiser": self.model}

    def optimizers(self) -> dict:
        return {"adam": self.optimizer}

    def train_step(self, batch, labels, step: int) -> dict:
        if self.config["step_delay"]:
            time.sleep(self.config["step_delay"])
        clean = batch.reshape(batch.shape[0], self.size)
        noisy = clean + self.config["sigma"] * minigen.randn_like(clean)
        loss = F.mse_loss(self.model(noisy), clean)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.item()), "lr": self.config["lr"]}

    def sample(self, n: int, temperature: float = 1.0):
        with minigen.no_grad():
            noise = temperature * minigen.randn(n, self.size, device=self.device)
            samples = self.model(noise).numpy()
        if self.config["data_kind"] == "images":
            samples = np.clip(samples, -1.0, 1.0)
        return samples.reshape(n, *self.config["data_shape"])


# How the command line finds this loop (see minigen.cli.LOOPS_ENV): in-process through the
# environment variable (pytest puts tests/ on sys.path), in a subprocess with PYTHONPATH too.
LOOP_SPEC = "tiny=tiny_loop:TinyLoop"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def tiny_config(out, **overrides) -> dict:
    """The options of `minigen train tiny --out OUT` with no quality measures (fast)."""
    return default_config(TinyLoop, **{"out": str(out), "eval_samples": 0, **overrides})


def subprocess_env() -> dict:
    """The environment in which `python -m minigen ...` knows the tiny loop."""
    env = dict(os.environ, MINIGEN_LOOPS=LOOP_SPEC)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
    return env


def run_minigen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m minigen ARGS` in a subprocess, output captured as text."""
    return subprocess.run([sys.executable, "-m", "minigen", *args], env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def load_tiny(path) -> tuple[TinyLoop, dict]:
    """The tiny loop with everything a checkpoint holds restored, and the checkpoint's state."""
    from minigen.run import read_checkpoint_config
    config, _ = read_checkpoint_config(str(path))
    loop = TinyLoop(config, "cpu")
    state = load_checkpoint(path, models=loop.models(), optimizers=loop.optimizers(),
                            restore_rng=False)
    return loop, state


@pytest.fixture
def cheap_plots(request, monkeypatch):
    """matplotlib takes most of a tiny run's time: plots become 1-pixel PNGs, except in tests
    that ask for the `real_plots` fixture. Test files use it with autouse (see test_run.py)."""
    if "real_plots" in request.fixturenames:
        return

    def one_pixel(data, path, *args, **kwargs):
        Image.new("L", (1, 1)).save(path)

    monkeypatch.setattr(viz, "save_loss_curves", one_pixel)
    monkeypatch.setattr(viz, "save_scatter", one_pixel)


@pytest.fixture
def real_plots():
    """Ask for this to draw loss.png and scatter plots with matplotlib (see cheap_plots)."""
