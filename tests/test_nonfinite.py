"""Non-finite training: the first step whose loss or gradient norm is NaN or infinite stops the
run with one line (the step, the quantity, what to try), before its update is applied and
without saving over the last checkpoint; --on-nonfinite skip skips such steps and counts them.
The DDPM and GAN loops check before each optimizer step; the command line is measured too.
"""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

import minigen
import minigen.functional as F
from minigen.ddpm import DDPMLoop
from minigen.gan import GANLoop
from minigen.loop import NonFiniteStep, gradient_norm
from minigen.run import TrainingDiverged, default_config, train
from minigen.tensor import Tensor
from tiny_loop import TinyLoop, cheap_plots, load_tiny  # noqa: F401 (cheap_plots: a fixture)

pytestmark = pytest.mark.usefixtures("cheap_plots")


class PoisonedLoop(TinyLoop):
    """The tiny loop, made to go wrong on purpose at --poison-steps: a NaN loss, an infinite
    gradient, a weight set to inf after a finite step, or a NaN loss in a loop that (like
    loops written before check_finite) never calls it."""

    name = "poisoned"

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--poison-steps", default="", help="steps to poison, e.g. 3,7")
        parser.add_argument("--poison", default="loss",
                            choices=("loss", "grad", "weight", "unchecked"))

    def train_step(self, batch, labels, step: int) -> dict:
        poisoned = str(step) in self.config["poison_steps"].split(",")
        kind = self.config["poison"]
        clean = batch.reshape(batch.shape[0], self.size)
        noisy = clean + self.config["sigma"] * minigen.randn_like(clean)
        loss = F.mse_loss(self.model(noisy), clean)
        if poisoned and kind in ("loss", "unchecked"):
            loss = loss * float("nan")
        self.optimizer.zero_grad()
        loss.backward()
        if poisoned and kind == "grad":
            weight = self.model[0].weight
            weight.grad = Tensor(weight.grad.data * np.float32(np.inf))
        scalars = {"loss": float(loss.item()), "lr": self.config["lr"]}
        if kind != "unchecked":
            self.check_finite(loss=scalars["loss"],
                              grad_norm=gradient_norm(self.model.parameters()))
        self.optimizer.step()
        if poisoned and kind == "weight":
            self.model[0].weight.data[0, 0] = np.inf
        return scalars


def poisoned_config(out, **overrides) -> dict:
    return default_config(PoisonedLoop, **{"out": str(out), "eval_samples": 0, **overrides})


def quiet(_message) -> None:
    pass


def read_log(folder) -> list[dict]:
    with open(folder / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def weights_of(path) -> dict:
    loop, _ = load_tiny(path)
    return {key: value.data.copy() for key, value in loop.model.state_dict().items()}


# --- stop ---------------------------------------------------------------------------------
@pytest.mark.parametrize("poison, quantity", [("loss", "loss is nan"),
                                              ("grad", "grad_norm is inf")])
def test_the_first_nonfinite_step_stops_the_run_in_one_line(tmp_path, poison, quantity):
    config = poisoned_config(tmp_path, steps=12, checkpoint_every=5, poison_steps="7",
                             poison=poison)
    with pytest.raises(TrainingDiverged) as caught:
        train(PoisonedLoop, config, say=quiet)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"step 7: {quantity}, so training stopped before that update")
    assert f"{tmp_path / 'checkpoint.h5'} keeps step 5" in message
    assert "a lower --lr (now 0.01)" in message and "--on-nonfinite skip" in message
    rows = read_log(tmp_path)
    assert [row["step"] for row in rows] == [str(step) for step in range(8)]


def test_a_stopped_run_leaves_the_last_good_checkpoint_byte_for_byte(tmp_path):
    clean = tmp_path / "clean"
    train(PoisonedLoop, poisoned_config(clean, steps=5, checkpoint_every=5), say=quiet)
    poisoned = tmp_path / "poisoned"
    with pytest.raises(TrainingDiverged):
        train(PoisonedLoop, poisoned_config(poisoned, steps=12, checkpoint_every=5,
                                            poison_steps="7"), say=quiet)
    saved = (poisoned / "checkpoint.h5").read_bytes()
    assert load_tiny(poisoned / "checkpoint.h5")[1]["step"] == 5
    for name, value in weights_of(poisoned / "checkpoint.h5").items():
        np.testing.assert_array_equal(value, weights_of(clean / "checkpoint.h5")[name])
    kept = weights_of(poisoned / "checkpoint.h5").values()
    assert np.isfinite(np.concatenate([value.ravel() for value in kept])).all()
    assert saved == (poisoned / "checkpoint.h5").read_bytes()
    assert not (poisoned / "metrics.json").exists()


def test_a_run_that_stops_before_its_first_checkpoint_says_none_was_written(tmp_path):
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        train(PoisonedLoop, poisoned_config(tmp_path, steps=12, poison_steps="2"), say=quiet)
    assert not (tmp_path / "checkpoint.h5").exists()


def test_nan_weights_after_a_finite_step_are_never_saved(tmp_path):
    config = poisoned_config(tmp_path, steps=12, checkpoint_every=5, poison_steps="4",
                             poison="weight")
    with pytest.raises(TrainingDiverged, match=r"after step 4 the weight denoiser\.0\.weight "
                                               r"holds NaN or inf"):
        train(PoisonedLoop, config, say=quiet)
    assert not (tmp_path / "checkpoint.h5").exists()


def test_a_loop_that_does_not_check_is_still_stopped_and_says_it_cannot_skip(tmp_path):
    config = poisoned_config(tmp_path, steps=12, poison_steps="3", poison="unchecked",
                             on_nonfinite="skip")
    with pytest.raises(TrainingDiverged) as caught:
        train(PoisonedLoop, config, say=quiet)
    assert str(caught.value).startswith("step 3: loss is nan, so training stopped")
    assert "does not call check_finite, so the step could not be skipped" in str(caught.value)


# --- skip ---------------------------------------------------------------------------------
def test_skip_mode_skips_without_applying_the_update_and_counts_in_the_log(tmp_path):
    skipped = tmp_path / "skipped"
    summary = train(PoisonedLoop, poisoned_config(skipped, steps=4, poison_steps="3",
                                                  on_nonfinite="skip"), say=quiet)
    assert summary["skipped_steps"] == 1
    straight = tmp_path / "straight"
    train(PoisonedLoop, poisoned_config(straight, steps=3), say=quiet)
    # Step 3 was skipped: the weights are those after step 2.
    for name, value in weights_of(skipped / "checkpoint.h5").items():
        np.testing.assert_array_equal(value, weights_of(straight / "checkpoint.h5")[name])
    rows = read_log(skipped)
    assert [row["skipped"] for row in rows] == ["0.0", "0.0", "0.0", "1.0"]
    assert rows[3]["loss"] == "nan"


def test_skip_counts_carry_over_a_resume(tmp_path):
    config = poisoned_config(tmp_path, steps=6, checkpoint_every=3, poison_steps="1,4",
                             on_nonfinite="skip")
    train(PoisonedLoop, dict(config, steps=3), say=quiet)
    summary = train(PoisonedLoop, dict(config, resume=str(tmp_path / "checkpoint.h5")),
                    say=quiet, explicit={"resume", "steps"})
    assert summary["skipped_steps"] == 2
    assert [row["skipped"] for row in read_log(tmp_path)] == ["0.0", "1.0", "1.0", "1.0",
                                                              "2.0", "2.0"]


def test_skip_mode_gives_up_after_too_many_bad_steps_in_a_row(tmp_path, monkeypatch):
    from minigen import divergence
    monkeypatch.setattr(divergence, "MAX_SKIPS_IN_A_ROW", 3)
    config = poisoned_config(tmp_path, steps=12, poison_steps="2,3,4,5", on_nonfinite="skip")
    with pytest.raises(TrainingDiverged, match=r"^step 4: 3 steps in a row had a non-finite "
                                               r"value \(the last: loss nan\)"):
        train(PoisonedLoop, config, say=quiet)


# --- the real loops check before their optimizer steps ------------------------------------
def parameters_of(*modules) -> list[np.ndarray]:
    return [p.data.copy() for module in modules for p in module.parameters()]


def flat_arrays(tree) -> list[np.ndarray]:
    """Every array in a nested state dict, copied, in order."""
    if isinstance(tree, dict):
        return [a for key in sorted(tree, key=str) for a in flat_arrays(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [a for item in tree for a in flat_arrays(item)]
    data = getattr(tree, "data", tree)
    return [np.array(data, copy=True)] if isinstance(data, np.ndarray) else [np.array(tree)]


def test_ddpm_raises_before_its_update_and_leaves_weights_ema_and_schedule_alone():
    minigen.manual_seed(0)
    config = default_config(DDPMLoop, dataset="ring8", grad_clip=0.0)
    config.update(loop="ddpm", data_kind="points", data_shape=[2], num_classes=8)
    loop = DDPMLoop(config, "cpu")
    before, ema_before = parameters_of(loop.model), flat_arrays(loop.ema.state_dict())
    lr_before = loop.optimizer.param_groups[0]["lr"]
    batch = minigen.Tensor(np.full((8, 2), np.nan, np.float32))
    with pytest.raises(NonFiniteStep) as caught, np.errstate(all="ignore"):
        loop.train_step(batch, None, 0)
    assert caught.value.quantity == "loss"
    for old, new in zip(before, parameters_of(loop.model)):
        np.testing.assert_array_equal(old, new)
    assert loop.optimizer.param_groups[0]["lr"] == lr_before
    assert loop.optimizer.state_dict()["state"] == {} or all(
        not state for state in loop.optimizer.state_dict()["state"].values())
    for old, new in zip(ema_before, flat_arrays(loop.ema.state_dict()), strict=True):
        np.testing.assert_array_equal(old, new)


def test_gan_raises_before_the_discriminator_update():
    minigen.manual_seed(0)
    config = {"data_kind": "points", "data_shape": [2], "num_classes": 8, "dataset": "ring8"}
    loop = GANLoop(config, "cpu")
    before = parameters_of(loop.generator, loop.discriminator)
    with pytest.raises(NonFiniteStep) as caught, np.errstate(all="ignore"):
        loop.train_step(minigen.Tensor(np.full((8, 2), np.inf, np.float32)), None, 0)
    assert caught.value.quantity in ("loss_d", "grad_norm_d")
    for old, new in zip(before, parameters_of(loop.generator, loop.discriminator)):
        np.testing.assert_array_equal(old, new)


def test_gradient_norm_does_not_overflow_on_large_finite_float32_gradients():
    weight = minigen.Tensor(np.zeros(4, np.float32), requires_grad=True)
    weight.grad = minigen.Tensor(np.full(4, 1e30, np.float32))
    assert gradient_norm([weight]) == pytest.approx(2e30)


# --- the command line ---------------------------------------------------------------------
def test_the_nan_run_of_the_issue_exits_non_zero_with_one_line(tmp_path):
    """`minigen train ddpm --dataset ring8 --lr 1e4 --steps 300` once trained on with NaN
    weights and exited 0."""
    out = tmp_path / "nan"
    result = subprocess.run([sys.executable, "-m", "minigen", "train", "ddpm", "--dataset",
                             "ring8", "--lr", "1e4", "--steps", "300", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("training ddpm on ring8") and len(lines) == 2, result.stderr
    assert lines[1].startswith("minigen: error: step ")
    assert "is inf" in lines[1] or "is nan" in lines[1]
    assert "a lower --lr (now 10000)" in lines[1] and "--grad-clip" in lines[1]
    assert "RuntimeWarning" not in result.stderr
    assert not (out / "checkpoint.h5").exists() and not (out / "metrics.json").exists()
