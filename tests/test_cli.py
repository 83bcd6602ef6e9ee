"""The `minigen` command: --help with defaults on every subcommand, one-line errors with a
non-zero exit code for every bad input, Ctrl-C / SIGTERM sent to a real training process, and
the sample / eval / inspect / demo commands on a checkpoint of the tiny loop.

Most cases call minigen.cli.main in-process; a few run `python -m minigen` as a user would.
"""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minigen.metrics
from minigen import backend, cli
from minigen.run import train
from tiny_loop import (LOOP_SPEC, TinyLoop, cheap_plots, load_tiny, run_minigen,  # noqa: F401
                       subprocess_env, tiny_config)

pytestmark = pytest.mark.usefixtures("cheap_plots")


@pytest.fixture(autouse=True)
def tiny_is_registered(monkeypatch):
    monkeypatch.setenv(cli.LOOPS_ENV, LOOP_SPEC)


def minigen_main(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `minigen ARGS`, run in-process."""
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 3-step run of the tiny loop (lr 0.02), and files that are not checkpoints."""
    folder = tmp_path_factory.mktemp("trained")
    train(TinyLoop, tiny_config(folder / "run", steps=3, lr=0.02), say=lambda _: None)
    (folder / "corrupt.h5").write_text("this is not a checkpoint\n")
    whole = (folder / "run" / "checkpoint.h5").read_bytes()
    (folder / "truncated.h5").write_bytes(whole[:len(whole) // 2])
    return folder


# --- --help -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, shown", [
    (["--help"], ["train", "sample", "eval", "inspect", "demo"]),
    (["train", "--help"], ["ddpm", "gan", "tiny", "MINIGEN_LOOPS"]),
    (["train", "tiny", "--help"], ["--steps STEPS total number of training steps to reach",
                                   "(default: 20)", "(default: ring8)", "(default: 0.01)",
                                   "--hidden HIDDEN hidden units of the MLP (default: 16)",
                                   "--resume CKPT", "--force", "(default: cpu)"]),
    (["sample", "--help"], ["CKPT", "--n N number of samples (default: 64)",
                            "(default: samples.png)", "options of tiny checkpoints",
                            "--temperature TEMPERATURE", "(default: 1.0)"]),
    (["eval", "--help"], ["--n N number of samples to measure (default: 500 for images, 2500 for points)"]),
    (["inspect", "--help"], ["CKPT"]),
    (["demo", "--help"], ["NAME", "ARGS"]),
])
def test_help_of_each_command_lists_its_options_with_defaults(capsys, args, shown):
    code, out, err = minigen_main(capsys, *args)
    assert code == 0 and err == ""
    assert one_line(out).startswith("usage: minigen")
    for text in shown:
        assert text in one_line(out)


@pytest.mark.parametrize("loop", ["ddpm", "gan"])
def test_the_ddpm_and_gan_loops_are_registered_with_their_options(capsys, loop):
    code, out, _ = minigen_main(capsys, "train", loop, "--help")
    assert code == 0 and "unavailable" not in out
    assert f"usage: minigen train {loop}" in out and "--batch-size" in out


def test_version(capsys):
    code, out, _ = minigen_main(capsys, "--version")
    assert code == 0 and out.strip() == f"minigen {minigen.__version__}"


# --- bad input: one line, exit code 2 ---------------------------------------------------
BAD_INPUTS = [
    ("unknown dataset", ["train", "tiny", "--dataset", "nope", "--out", "{tmp}/a"],
     "unknown dataset 'nope'; known: digits"),
    ("missing data folder", ["train", "tiny", "--dataset", "mnist", "--data-dir", "{tmp}/none",
                             "--out", "{tmp}/a"], "--data-dir {tmp}/none is not a folder"),
    ("missing data file", ["train", "tiny", "--dataset", "{tmp}/none.npy", "--out", "{tmp}/a"],
     "--dataset {tmp}/none.npy: no such file or folder"),
    ("missing checkpoint", ["train", "tiny", "--resume", "{tmp}/none.h5"],
     "{tmp}/none.h5 does not exist"),
    ("corrupt checkpoint", ["train", "tiny", "--resume", "{trained}/corrupt.h5"],
     "{trained}/corrupt.h5 is not an HDF5 file"),
    ("truncated checkpoint", ["train", "tiny", "--resume", "{trained}/truncated.h5"],
     "{trained}/truncated.h5 is truncated or damaged"),
    ("negative steps", ["train", "tiny", "--steps", "-5", "--out", "{tmp}/a"],
     "--steps is -5; pass the total number of steps to reach, 0 or more"),
    ("steps not a number", ["train", "tiny", "--steps", "many"],
     "argument --steps: invalid int value: 'many' (see 'minigen train tiny --help')"),
    ("folder holding another run", ["train", "tiny", "--out", "{trained}/run", "--steps", "9"],
     "{trained}/run holds another run (lr 0.02 -> 0.01, steps 3 -> 9); pass --resume"),
    ("resume contradicting the checkpoint", ["train", "tiny", "--resume",
                                             "{trained}/run/checkpoint.h5", "--lr", "0.5"],
     "--lr 0.5 differs from the 0.02 that {trained}/run/checkpoint.h5 was trained with"),
    ("resume beyond steps", ["train", "tiny", "--resume", "{trained}/run/checkpoint.h5",
                             "--steps", "2", "--out", "{tmp}/a"], "is at step 3, beyond --steps 2"),
    ("option the loop rejects", ["train", "tiny", "--hidden", "0", "--out", "{tmp}/a"],
     "tiny: --hidden is 0; pass 1 or more"),
    ("unknown loop", ["train", "nope"], "argument LOOP: invalid choice: 'nope'"),
    ("unknown option", ["train", "tiny", "--stepz", "3"], "unrecognized arguments: --stepz 3"),
    ("no command", [], "the following arguments are required: COMMAND"),
    ("sample to an unknown format", ["sample", "{trained}/run/checkpoint.h5", "--out", "x.jpg"],
     "--out x.jpg: pass a file name ending in .png"),
    ("sample zero", ["sample", "{trained}/run/checkpoint.h5", "--n", "0", "--out", "{tmp}/s.npy"],
     "--n is 0"),
    ("another loop's sampling option", ["sample", "{trained}/run/checkpoint.h5",
                                        "--sampling-steps", "5", "--out", "{tmp}/s.npy"],
     "--sampling-steps is not an option of the tiny loop that {trained}/run/checkpoint.h5 holds"),
    ("sample a missing checkpoint", ["sample", "{tmp}/none.h5"], "{tmp}/none.h5 does not exist"),
    ("eval a corrupt checkpoint", ["eval", "{trained}/corrupt.h5"], "is not an HDF5 file"),
    ("inspect a missing checkpoint", ["inspect", "{tmp}/none.h5"], "{tmp}/none.h5 does not exist"),
    ("unknown demo", ["demo", "nope"], "no demo named 'nope'; available:"),
]


@pytest.mark.parametrize("args, message", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_code_2(capsys, tmp_path, trained, args, message):
    def fill(text):
        return text.format(tmp=tmp_path, trained=trained)
    code, out, err = minigen_main(capsys, *map(fill, args))
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("minigen: error: ") and fill(message) in err


def test_cuda_without_cupy_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    code, _, err = minigen_main(capsys, "train", "tiny", "--device", "cuda", "--out", tmp_path)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("minigen: error: device 'cuda' was asked for, but CuPy is not installed")


@pytest.mark.skipif(backend._cupy is None or backend.cuda_available(),
                    reason="needs CuPy installed on a machine where it cannot run")
def test_cuda_with_cupy_but_no_gpu_is_one_line_that_names_what_is_missing(capsys, tmp_path):
    code, _, err = minigen_main(capsys, "train", "tiny", "--device", "cuda", "--out", tmp_path)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("minigen: error: device 'cuda' was asked for, but CuPy cannot run here: ")
    assert "no CUDA GPU can be used" in err or "cannot be loaded" in err


def test_a_malformed_loop_registration_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv(cli.LOOPS_ENV, "tiny")
    code, _, err = minigen_main(capsys, "train", "--help")
    assert code == 2 and err.strip() == ("minigen: error: MINIGEN_LOOPS entry 'tiny' is not "
                                         "NAME=module:Class (for example "
                                         "mine=my_package.loop:MyLoop)")


def test_a_loop_that_cannot_load_is_reported_when_used_and_spares_the_others(capsys, monkeypatch):
    monkeypatch.setenv(cli.LOOPS_ENV, f"{LOOP_SPEC},broken=no_such_module:Loop")
    code, _, err = minigen_main(capsys, "train", "broken", "--steps", "3")
    assert code == 2 and err.strip() == ("minigen: error: the broken loop (no_such_module:Loop) "
                                         "cannot be loaded: ModuleNotFoundError: No module "
                                         "named 'no_such_module'")
    assert minigen_main(capsys, "train", "tiny", "--help")[0] == 0


@pytest.mark.parametrize("args, message", [
    (["train", "tiny", "--steps", "-1"], "minigen: error: --steps is -1"),
    (["inspect", "{trained}/corrupt.h5"], "minigen: error: {trained}/corrupt.h5 is not an HDF5"),
])
def test_a_real_process_exits_2_with_one_line_and_no_traceback(trained, args, message):
    result = run_minigen(*(arg.format(trained=trained) for arg in args))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(message.format(trained=trained))
    assert len(result.stderr.splitlines()) == 1


# --- Ctrl-C and SIGTERM -----------------------------------------------------------------
def log_rows(path) -> int:
    try:
        with open(path, newline="") as handle:
            return len(list(csv.DictReader(handle)))
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_a_training_process_saves_a_checkpoint_and_exits_non_zero(tmp_path, signum):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "minigen.cli", "train", "tiny", "--out", str(out), "--steps",
         "100000", "--step-delay", "0.01", "--checkpoint-every", "100000", "--eval-samples", "0"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # generous: the test machine may be busy
        while log_rows(out / "log.csv") < 3 and time.monotonic() < deadline \
                and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert f"interrupted by {signal.Signals(signum).name} after step" in err
    _, state = load_tiny(out / "checkpoint.h5")
    assert state["step"] >= 3 and state["step"] == log_rows(out / "log.csv")


# --- train -------------------------------------------------------------------------------
def test_resume_continues_in_the_checkpoints_folder_with_its_settings(capsys, tmp_path):
    out = tmp_path / "run"
    assert minigen_main(capsys, "train", "tiny", "--out", out, "--steps", 3, "--lr", 0.02)[0] == 0
    code, _, _ = minigen_main(capsys, "train", "tiny", "--resume", out / "checkpoint.h5",
                              "--steps", 5)
    assert code == 0 and log_rows(out / "log.csv") == 5
    _, state = load_tiny(out / "checkpoint.h5")
    assert state["step"] == 5 and state["config"]["lr"] == 0.02  # not the default 0.01


def test_the_default_output_folder_can_be_trained_twice_and_guards_other_settings(
        capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert minigen_main(capsys, "train", "tiny", "--steps", 2)[0] == 0
    assert (tmp_path / "runs" / "tiny-ring8" / "checkpoint.h5").is_file()
    code, _, err = minigen_main(capsys, "train", "tiny", "--steps", 2)
    assert code == 0 and "same settings" in err
    code, _, err = minigen_main(capsys, "train", "tiny", "--steps", 3)
    assert code == 2 and "holds another run" in err
    assert minigen_main(capsys, "train", "tiny", "--steps", 3, "--force")[0] == 0
    assert log_rows(tmp_path / "runs" / "tiny-ring8" / "log.csv") == 3


# --- sample, eval, inspect --------------------------------------------------------------
def test_sample_writes_the_raw_array_with_the_loops_options(capsys, tmp_path, trained):
    checkpoint = trained / "run" / "checkpoint.h5"
    code, _, err = minigen_main(capsys, "sample", checkpoint, "--n", 7, "--out", tmp_path / "a.npy")
    assert code == 0 and "wrote 7 samples" in err
    samples = np.load(tmp_path / "a.npy")
    assert samples.shape == (7, 2) and samples.dtype == np.float32
    assert not np.array_equal(samples[0], samples[1])
    # --temperature 0 starts every sample from the same (zero) noise
    minigen_main(capsys, "sample", checkpoint, "--n", 3, "--temperature", 0,
                 "--out", tmp_path / "cold.npy")
    cold = np.load(tmp_path / "cold.npy")
    assert np.array_equal(cold[0], cold[1]) and np.array_equal(cold[0], cold[2])


def test_sample_is_reproducible_by_seed(capsys, tmp_path, trained):
    checkpoint = trained / "run" / "checkpoint.h5"
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        minigen_main(capsys, "sample", checkpoint, "--seed", seed,
                     "--out", tmp_path / f"{name}.npy")
    a, b, c = (np.load(tmp_path / f"{name}.npy") for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sample_draws_a_picture(capsys, tmp_path, trained):
    out = tmp_path / "pictures" / "points.png"
    assert minigen_main(capsys, "sample", trained / "run" / "checkpoint.h5", "--out", out)[0] == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_eval_prints_one_json_object_of_the_quality_measures(capsys, trained, monkeypatch):
    def evaluate(samples, dataset):
        return {"n": len(samples), "modes_covered": 5, "dataset_seen": dataset.name}
    monkeypatch.setattr(minigen.metrics, "evaluate", evaluate, raising=False)
    code, out, _ = minigen_main(capsys, "eval", trained / "run" / "checkpoint.h5", "--n", 30)
    assert code == 0 and len(out.splitlines()) == 1
    assert json.loads(out) == {"checkpoint": str(trained / "run" / "checkpoint.h5"), "loop": "tiny",
                               "dataset": "ring8", "step": 3, "n": 30, "modes_covered": 5,
                               "dataset_seen": "ring8"}


def test_eval_of_zero_samples_says_so_in_one_line(capsys, trained):
    code, out, err = minigen_main(capsys, "eval", trained / "run" / "checkpoint.h5", "--n", 0)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "--n is 0" in err


def test_eval_of_points_draws_the_2500_samples_of_the_mode_coverage_papers(capsys, trained, monkeypatch):
    monkeypatch.setattr(minigen.metrics, "evaluate", lambda samples, dataset: {"n": len(samples)})
    code, out, _ = minigen_main(capsys, "eval", trained / "run" / "checkpoint.h5")
    assert code == 0 and json.loads(out)["n"] == 2500


def test_inspect_lists_the_step_the_config_and_the_arrays(capsys, trained):
    code, out, _ = minigen_main(capsys, "inspect", trained / "run" / "checkpoint.h5")
    assert code == 0 and "step: 3" in out and '"loop": "tiny"' in out
    assert "denoiser/" in out and "0.weight" in out


# --- demo --------------------------------------------------------------------------------
@pytest.fixture
def demos(tmp_path, monkeypatch):
    folder = tmp_path / "demos"
    folder.mkdir()
    (folder / "echo_args.py").write_text(
        "import json, sys\nopen(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))\nsys.exit(3)\n")
    (folder / "_shared.py").write_text("")
    monkeypatch.setattr(cli, "DEMOS_DIR", folder)
    return folder


def test_demo_runs_the_script_with_its_arguments_and_exit_code(capsys, tmp_path, demos):
    record = tmp_path / "argv.json"
    code, _, _ = minigen_main(capsys, "demo", "echo_args", record, "--steps", "5")
    assert code == 3 and json.loads(record.read_text()) == ["--steps", "5"]


def test_demo_without_a_name_lists_the_demos(capsys, demos):
    code, out, _ = minigen_main(capsys, "demo")
    assert code == 0 and out.split() == ["echo_args"]


def test_demo_without_the_demos_folder_says_where_it_looked(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEMOS_DIR", tmp_path / "absent")
    code, _, err = minigen_main(capsys, "demo", "anything")
    assert code == 2 and f"the demos folder is not there ({tmp_path / 'absent'})" in err


def test_the_console_script_runs_main():
    script = shutil.which("minigen", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . puts `minigen` beside the Python executable"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"minigen {minigen.__version__}"
