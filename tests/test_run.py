"""The run harness, called in-process with the tiny loop: the files of a run folder, exact
resumption, saving on a signal, the output-folder rules, and the option checks.

The command line over it (and the signal sent to a real subprocess) is in test_cli.py.
"""
from __future__ import annotations

import csv
import json
import signal

import numpy as np
import pytest
from PIL import Image

import minigen
from minigen import backend, run
from minigen.run import (TrainingInterrupted, UserError, default_config, draw_samples,
                         resumed_options, sample_defaults, train)
from tiny_loop import TinyLoop, cheap_plots, load_tiny, real_plots, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("cheap_plots")


def read_log(folder) -> list[dict]:
    with open(folder / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_state(first, second) -> None:
    """Every weight and every optimizer state array of two checkpoints is bit-identical."""
    loop_a, state_a = load_tiny(first)
    loop_b, state_b = load_tiny(second)
    assert state_a["step"] == state_b["step"]
    weights_a, weights_b = loop_a.model.state_dict(), loop_b.model.state_dict()
    assert list(weights_a) == list(weights_b)
    for name in weights_a:
        np.testing.assert_array_equal(weights_a[name].data, weights_b[name].data, err_msg=name)
    adam_a, adam_b = loop_a.optimizer.state_dict(), loop_b.optimizer.state_dict()
    assert sorted(adam_a["state"]) == sorted(adam_b["state"]) and adam_a["state"]
    for index, values in adam_a["state"].items():
        for key, value in values.items():
            np.testing.assert_array_equal(np.asarray(value),
                                          np.asarray(adam_b["state"][index][key]),
                                          err_msg=f"Adam state {index}/{key}")
    assert state_a["rng_state"] == state_b["rng_state"]


# --- the run folder ---------------------------------------------------------------------
def test_a_run_writes_checkpoint_pictures_log_config_and_metrics(tmp_path, real_plots):
    summary = train(TinyLoop, tiny_config(tmp_path / "run", steps=6), say=lambda _: None)
    folder = tmp_path / "run"
    assert sorted(path.name for path in folder.iterdir()) == sorted(run.RUN_FILES)
    rows = read_log(folder)
    assert [row["step"] for row in rows] == [str(step) for step in range(6)]
    assert list(rows[0]) == ["step", "loss", "lr", "seconds"]
    assert all(float(row["loss"]) > 0 for row in rows)
    config = json.loads((folder / "config.json").read_text())
    assert config["loop"] == "tiny" and config["dataset"] == "ring8"
    assert config["data_kind"] == "points" and config["data_shape"] == [2]
    assert config["num_classes"] == 8 and config["steps"] == 6
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["training"] == summary
    assert summary["steps"] == 6 and summary["seconds"] > 0
    assert summary["images_per_second"] == pytest.approx(16 * 6 / summary["seconds"], rel=0.01)
    assert summary["final"]["loss"] == pytest.approx(np.mean([float(r["loss"]) for r in rows]))
    _, state = load_tiny(folder / "checkpoint.h5")
    assert state["step"] == 6 and state["config"] == config
    for picture in ("samples.png", "loss.png"):
        with Image.open(folder / picture) as image:
            assert image.size[0] > 100 and image.size[1] > 100


def test_image_data_gives_a_grid_of_64_samples(tmp_path):
    train(TinyLoop, tiny_config(tmp_path, dataset="digits", steps=2), say=lambda _: None)
    with Image.open(tmp_path / "samples.png") as image:
        # 8 x 8 digits enlarged 6 times, 8 per row, 3 pixels of padding so that they never touch
        assert image.size == (8 * 51 + 3, 8 * 51 + 3)


def test_checkpoints_are_saved_every_k_steps_and_at_the_end(tmp_path, monkeypatch):
    saved_steps = []
    original = run.save_checkpoint
    monkeypatch.setattr(run, "save_checkpoint",
                        lambda *args, **kwargs: (saved_steps.append(kwargs["step"]),
                                                 original(*args, **kwargs)))
    train(TinyLoop, tiny_config(tmp_path, steps=7, checkpoint_every=3), say=lambda _: None)
    assert saved_steps == [3, 6, 7]


def test_zero_steps_saves_the_initial_model(tmp_path):
    train(TinyLoop, tiny_config(tmp_path, steps=0), say=lambda _: None)
    _, state = load_tiny(tmp_path / "checkpoint.h5")
    assert state["step"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["final"] == {}


def test_metrics_json_holds_the_quality_measures_when_minigen_has_them(tmp_path, monkeypatch):
    import minigen.metrics
    seen = {}

    def evaluate(samples, dataset):
        seen.update(shape=samples.shape, dataset=dataset.name)
        return {"modes_covered": 3, "n": len(samples)}

    monkeypatch.setattr(minigen.metrics, "evaluate", evaluate, raising=False)
    train(TinyLoop, tiny_config(tmp_path, steps=2, eval_samples=40), say=lambda _: None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert seen == {"shape": (40, 2), "dataset": "ring8"}
    assert metrics["modes_covered"] == 3 and metrics["n"] == 40
    assert metrics["training"]["steps"] == 2
    # how the samples were drawn, so another measure of the checkpoint can be compared
    assert metrics["sampling"] == {"seed": run.MEASURE_SEED, "temperature": 1.0}


def test_samples_asked_for_one_class_are_measured_against_that_class(monkeypatch):
    import minigen.metrics

    class ClassLoop(TinyLoop):
        def sample(self, n, temperature=1.0, class_label=None):
            return super().sample(n, temperature)

    seen = {}
    monkeypatch.setattr(minigen.metrics, "class_measures", lambda samples, dataset, label: (
        seen.update(n=len(samples), label=label) or {"n": len(samples), "read_as_class": 0.9}))
    config = dict(tiny_config("unused"), loop="tiny", data_kind="points", data_shape=[2],
                  num_classes=8)
    dataset = run.load_run_data(config)
    measures = run.quality_measures(ClassLoop(config, "cpu"), dataset, 12,
                                    {"temperature": 1.0, "class_label": 3}, seed=5)
    assert seen == {"n": 12, "label": 3}
    assert measures == {"n": 12, "read_as_class": 0.9,
                        "sampling": {"seed": 5, "temperature": 1.0, "class_label": 3}}


def test_the_progress_bar_shows_the_losses_and_images_per_second(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "terminal_columns", lambda: 100)
    train(TinyLoop, tiny_config(tmp_path, steps=3), progress=True, say=lambda _: None)
    bar = capsys.readouterr().err
    assert "3/3" in bar and "loss " in bar and " img/s" in bar
    assert "lr" not in bar  # only the losses: the rest is in log.csv


GAN_SCALARS = {"loss_d": 1.38123, "d_real": 0.5012, "d_fake": 0.4987, "grad_norm_d": 1.2345,
               "loss_g": 0.69315, "grad_norm_g": 2.3456}


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_the_gan_progress_bar_keeps_its_bar_readable_at_80_to_120_columns(columns):
    from tqdm import tqdm
    postfix = run.bar_postfix(GAN_SCALARS, 412.3)
    assert postfix == "loss_d 1.38, loss_g 0.693, 412 img/s"
    for done, elapsed in ((1, 1.0), (1000, 600.0), (20000, 9000.0)):
        line = tqdm.format_meter(done, 20000, elapsed, ncols=columns, postfix=postfix,
                                 unit="step", bar_format=run.BAR_FORMAT)
        bar = line.split("|")[1]
        assert len(bar) >= 8 and line.endswith("412 img/s]"), line


@pytest.mark.parametrize("rows, columns, usable", [(24, 80, 80), (0, 80, 0), (24, 0, 0)])
def test_a_terminal_that_reports_no_width_or_no_height_counts_as_zero_columns(
        monkeypatch, rows, columns, usable):
    import fcntl
    import os
    import struct
    import termios
    leader, follower = os.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        with os.fdopen(os.dup(follower), "w") as terminal:
            monkeypatch.setattr("sys.stderr", terminal)
            assert run.terminal_columns() == usable
    finally:
        os.close(leader)
        os.close(follower)


def test_stderr_that_is_no_terminal_has_no_columns(tmp_path, monkeypatch):
    with open(tmp_path / "log", "w") as file:
        monkeypatch.setattr("sys.stderr", file)
        assert run.terminal_columns() is None


def test_a_terminal_of_zero_columns_gets_the_plain_status_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "terminal_columns", lambda: 0)
    messages = []
    train(TinyLoop, tiny_config(tmp_path, steps=4, checkpoint_every=2), progress=True,
          say=messages.append)
    assert capsys.readouterr().err == ""  # no bar, which such a terminal would not show
    assert any(message.startswith("step 2/4  loss ") for message in messages), messages


def test_the_end_of_training_says_what_it_does_and_ends_with_the_measures(tmp_path, monkeypatch):
    import minigen.metrics
    monkeypatch.setattr(minigen.metrics, "evaluate", lambda samples, dataset: {
        "n": len(samples), "modes_covered": 7, "num_modes": 8, "high_quality_fraction": 0.825})
    messages = []
    train(TinyLoop, tiny_config(tmp_path, steps=2, eval_samples=40), say=messages.append)
    assert messages[-3].startswith("step 2: writing checkpoint.h5, loss.png and samples.png")
    assert messages[-2] == (f"measuring sample quality for metrics.json on 40 samples (seed "
                            f"{run.MEASURE_SEED}; `minigen eval` repeats it)")
    assert messages[-1].startswith("done: 2 steps in ")
    assert "; 7/8 modes, 82.5% high quality on 40 samples; " in messages[-1]


def test_the_progress_bar_is_quiet_when_stderr_is_not_a_terminal(tmp_path, capsys):
    train(TinyLoop, tiny_config(tmp_path, steps=3), say=lambda _: None)  # capsys: not a tty
    assert capsys.readouterr().err == ""


# --- exact resumption -------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["ring8", "digits"])
def test_resume_equals_a_straight_run_bit_for_bit(tmp_path, dataset, real_plots):
    # The straight run saves and draws pictures at steps 3, 6 and 9, which must not matter.
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(TinyLoop, tiny_config(straight, dataset=dataset, steps=10, checkpoint_every=3),
          say=lambda _: None)
    train(TinyLoop, tiny_config(split, dataset=dataset, steps=5), say=lambda _: None)
    train(TinyLoop, tiny_config(split, dataset=dataset, steps=10,
                                resume=str(split / "checkpoint.h5")), say=lambda _: None)
    assert_same_state(straight / "checkpoint.h5", split / "checkpoint.h5")
    losses = [[row["loss"] for row in read_log(folder)] for folder in (straight, split)]
    assert losses[0] == losses[1] and len(losses[0]) == 10
    pictures = [np.asarray(Image.open(folder / "samples.png")) for folder in (straight, split)]
    np.testing.assert_array_equal(pictures[0], pictures[1])


def test_pictures_during_training_do_not_change_the_training(tmp_path):
    train(TinyLoop, tiny_config(tmp_path / "often", steps=6, sample_every=1), say=lambda _: None)
    train(TinyLoop, tiny_config(tmp_path / "never", steps=6, sample_every=0), say=lambda _: None)
    assert_same_state(tmp_path / "often" / "checkpoint.h5", tmp_path / "never" / "checkpoint.h5")


def test_draw_samples_puts_the_random_state_back():
    loop = TinyLoop(dict(tiny_config("unused"), data_kind="points", data_shape=[2]), "cpu")
    minigen.manual_seed(7)
    before = backend.get_rng_state()
    first = draw_samples(loop, 5, sample_defaults(TinyLoop), seed=3)
    assert backend.get_rng_state() == before
    np.testing.assert_array_equal(first, draw_samples(loop, 5, {"temperature": 1.0}, seed=3))


def test_a_resumed_log_keeps_the_rows_before_the_checkpoint_only(tmp_path):
    folder = tmp_path / "run"
    train(TinyLoop, tiny_config(folder, steps=4), say=lambda _: None)
    straight_rows = read_log(folder)
    train(TinyLoop, tiny_config(folder, steps=6, resume=str(folder / "checkpoint.h5")),
          say=lambda _: None)
    rows = read_log(folder)
    assert [row["step"] for row in rows] == [str(step) for step in range(6)]
    assert [row["loss"] for row in rows[:4]] == [row["loss"] for row in straight_rows]
    # the clock continues from the checkpoint's
    assert float(rows[4]["seconds"]) >= float(rows[3]["seconds"])


# --- SIGINT / SIGTERM -------------------------------------------------------------------
class SignallingLoop(TinyLoop):
    """Sends itself a signal during step 2, as a user pressing Ctrl-C mid-step would."""
    signum = signal.SIGINT

    def train_step(self, batch, labels, step):
        if step == 2:
            signal.raise_signal(self.signum)
        return super().train_step(batch, labels, step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_stops(tmp_path, monkeypatch, signum):
    monkeypatch.setattr(SignallingLoop, "signum", signum)
    with pytest.raises(TrainingInterrupted) as caught:
        train(SignallingLoop, tiny_config(tmp_path, steps=50), say=lambda _: None)
    assert caught.value.step == 3 and caught.value.exit_code == 128 + signum
    assert "--resume" in str(caught.value)
    _, state = load_tiny(tmp_path / "checkpoint.h5")
    assert state["step"] == 3 and len(read_log(tmp_path)) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


# --- the output folder ------------------------------------------------------------------
def test_a_folder_holding_a_run_with_other_settings_is_refused(tmp_path):
    train(TinyLoop, tiny_config(tmp_path, steps=2), say=lambda _: None)
    with pytest.raises(UserError, match=r"holds another run \(steps 2 -> 3\).*--resume.*--force"):
        train(TinyLoop, tiny_config(tmp_path, steps=3), say=lambda _: None)


def test_the_hint_offers_resume_only_when_resuming_gives_the_run_asked_for(tmp_path):
    train(TinyLoop, tiny_config(tmp_path, steps=3), say=lambda _: None)
    # another learning rate: a resumed run would keep the old one
    with pytest.raises(UserError) as refused:
        train(TinyLoop, tiny_config(tmp_path, steps=3, lr=0.5), say=lambda _: None)
    assert "--resume would continue with its own settings" in str(refused.value)
    assert "pass --resume" not in str(refused.value)
    # fewer steps: resuming a run at step 3 cannot reach step 2
    with pytest.raises(UserError) as refused:
        train(TinyLoop, tiny_config(tmp_path, steps=2), say=lambda _: None)
    assert "pass --resume" not in str(refused.value)


@pytest.mark.parametrize("loop, options, folder", [
    ("ddpm", {}, "runs/ddpm-digits"),
    ("ddpm", {"conditional": True}, "runs/ddpm-digits-conditional"),
    ("ddpm", {"conditional": True, "schedule": "linear"}, "runs/ddpm-digits-conditional-linear"),
    ("ddpm", {"lr": 1e-3}, "runs/ddpm-digits"),  # not a naming option: guarded by the folder
    ("gan", {"dataset": "ring8", "loss": "wgan-gp"}, "runs/gan-ring8-wgan-gp"),
    ("gan", {"conditional": True}, "runs/gan-digits-conditional"),
    ("gan", {"dataset": "some/where/faces.npz"}, "runs/gan-faces"),
])
def test_the_default_folder_names_the_options_that_tell_runs_apart(loop, options, folder):
    from minigen.ddpm import DDPMLoop
    from minigen.gan import GANLoop
    loop_cls = {"ddpm": DDPMLoop, "gan": GANLoop}[loop]
    assert run.default_out(loop_cls, default_config(loop_cls, **options)) == folder


def test_a_folder_holding_a_run_with_the_same_settings_is_trained_again(tmp_path):
    # The README's quick start must work twice: the same settings give the same result.
    messages = []
    train(TinyLoop, tiny_config(tmp_path, steps=3), say=lambda _: None)
    train(TinyLoop, tiny_config(tmp_path, steps=3, checkpoint_every=1), say=messages.append)
    assert "same settings: training it again from step 0" in messages[0]
    assert len(read_log(tmp_path)) == 3


def test_force_overwrites_a_run_with_other_settings(tmp_path):
    train(TinyLoop, tiny_config(tmp_path, steps=3), say=lambda _: None)
    train(TinyLoop, tiny_config(tmp_path, steps=2, force=True), say=lambda _: None)
    assert len(read_log(tmp_path)) == 2


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        train(TinyLoop, tiny_config(tmp_path / "file"), say=lambda _: None)


# --- options ----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"steps": -1}, "--steps is -1"),
    ({"batch_size": 0}, "--batch-size is 0"),
    ({"checkpoint_every": 0}, "--checkpoint-every is 0"),
    ({"seed": -2}, "--seed is -2"),
    ({"batch_size": 100_000}, "more than the 20000 training samples"),
    ({"dataset": "nonexistent"}, "unknown dataset 'nonexistent'"),
    ({"dataset": "mnist", "data_dir": "/no/such/folder"}, "--data-dir /no/such/folder is not"),
    ({"hidden": 0}, "tiny: --hidden is 0"),
])
def test_bad_options_are_user_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        train(TinyLoop, tiny_config(tmp_path, **overrides), say=lambda _: None)


def test_default_config_names_an_unknown_option():
    with pytest.raises(ValueError, match="no option 'stpes'"):
        default_config(TinyLoop, stpes=3)


@pytest.fixture
def checkpoint(tmp_path):
    train(TinyLoop, tiny_config(tmp_path / "run", steps=4, lr=0.02), say=lambda _: None)
    return str(tmp_path / "run" / "checkpoint.h5")


def test_a_resumed_run_keeps_the_checkpoints_settings_unless_told(checkpoint):
    options = dict(default_config(TinyLoop), resume=checkpoint, steps=8)
    merged = resumed_options(TinyLoop, options, explicit={"resume", "steps"})
    assert merged["lr"] == 0.02 and merged["steps"] == 8       # lr kept, steps taken
    assert merged["out"].endswith("run")                       # the checkpoint's folder


def test_a_resumed_run_refuses_an_option_that_contradicts_the_checkpoint(checkpoint):
    options = dict(default_config(TinyLoop), resume=checkpoint, lr=0.5)
    with pytest.raises(UserError, match="--lr 0.5 differs from the 0.02"):
        resumed_options(TinyLoop, options, explicit={"resume", "lr"})


def test_resuming_beyond_steps_is_refused(checkpoint):
    with pytest.raises(UserError, match="at step 4, beyond --steps 3"):
        train(TinyLoop, dict(default_config(TinyLoop), resume=checkpoint, steps=3),
              explicit={"resume", "steps"}, say=lambda _: None)


def test_resuming_with_another_loop_is_refused(checkpoint):
    class OtherLoop(TinyLoop):
        name = "other"
    with pytest.raises(UserError, match="written by the 'tiny' loop"):
        train(OtherLoop, dict(default_config(OtherLoop), resume=checkpoint), explicit={"resume"},
              say=lambda _: None)


def test_resuming_into_another_folder_that_holds_another_run_is_refused(checkpoint, tmp_path):
    train(TinyLoop, tiny_config(tmp_path / "other", steps=2), say=lambda _: None)
    with pytest.raises(UserError, match="holds another run"):
        train(TinyLoop, dict(default_config(TinyLoop), resume=checkpoint, steps=6,
                             out=str(tmp_path / "other")),
              explicit={"resume", "steps", "out"}, say=lambda _: None)


def test_a_bad_dataset_leaves_no_output_folder_behind(tmp_path):
    with pytest.raises(UserError):
        train(TinyLoop, tiny_config(tmp_path / "new", dataset="nonexistent"), say=lambda _: None)
    assert not (tmp_path / "new").exists()


def test_resuming_a_checkpoint_that_records_no_loop_is_refused(tmp_path):
    minigen.save_checkpoint(tmp_path / "bare.h5", step=3, config={})
    with pytest.raises(UserError, match="records no training loop"):
        train(TinyLoop, dict(default_config(TinyLoop), resume=str(tmp_path / "bare.h5")),
              explicit={"resume"}, say=lambda _: None)


# --- quality measured during training (--eval-every) -----------------------------------------
def test_eval_every_writes_a_curve_of_the_measures_and_leaves_training_alone(tmp_path, real_plots):
    measured, plain = tmp_path / "measured", tmp_path / "plain"
    messages = []
    train(TinyLoop, tiny_config(measured, steps=6, eval_every=2, eval_samples=200),
          say=messages.append)
    train(TinyLoop, tiny_config(plain, steps=6), say=lambda _: None)
    (loop_a, _), (loop_b, _) = (load_tiny(folder / "checkpoint.h5") for folder in (measured, plain))
    for name, tensor in loop_a.model.state_dict().items():
        np.testing.assert_array_equal(tensor.data, loop_b.model.state_dict()[name].data)
    with open(measured / "eval.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["2", "4", "6"]
    assert {"modes_covered", "high_quality_fraction", "distance_to_data",
            "distance_to_data_floor"} <= set(rows[0])
    assert sum(message.startswith("eval at step") for message in messages) == 3
    with Image.open(measured / "eval.png") as image:
        assert image.size[0] > 100
    assert not (plain / "eval.csv").exists()


def test_a_resumed_eval_log_keeps_the_rows_before_the_checkpoint(tmp_path):
    folder = tmp_path / "run"
    train(TinyLoop, tiny_config(folder, steps=4, eval_every=2, eval_samples=100),
          say=lambda _: None)
    train(TinyLoop, tiny_config(folder, steps=6, eval_every=2, eval_samples=100,
                                resume=str(folder / "checkpoint.h5")), say=lambda _: None)
    with open(folder / "eval.csv", newline="") as handle:
        assert [row["step"] for row in csv.DictReader(handle)] == ["2", "4", "6"]


def test_eval_every_without_samples_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="--eval-every measures --eval-samples samples, and that "
                                        "is 0"):
        train(TinyLoop, tiny_config(tmp_path / "run", steps=2, eval_every=1), say=lambda _: None)
