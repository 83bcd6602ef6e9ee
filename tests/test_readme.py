"""The README's commands, run in order as a newcomer runs them, with short step counts.

Every ```bash block of README.md is cut into commands (one per line, then at each `&&`), and
they run one after another in one empty folder, through minigen.cli.main in this process. The
installs and the test command are what this test itself runs under: they are recognised and
skipped, and any other command that is not `minigen ...` fails the test. Training, sampling
and measuring are cut short by SHORTER (each option set to a small value, or added), so the
whole README runs in about a minute; every command must exit 0, and the files and lines the
README promises are checked after the commands that make them.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from minigen import cli, run

README = Path(__file__).resolve().parent.parent / "README.md"

# What the test runs under already: a virtual environment with minigen and its dev extra.
SET_UP_ALREADY = (["python3", "-m", "venv"], ["source"], ["pip", "install"],
                  ["python", "-m", "pytest"])
# Per subcommand: options set to a small value (added when the command does not give them).
SHORTER = {"train": {"--steps": "2", "--eval-samples": "20"},
           "sample": {"--sampling-steps": "5"},
           "eval": {"--n": "20", "--sampling-steps": "5"}}
SAMPLER_OPTIONS = {"--sampling-steps"}  # replaced where given, never added
# Per demo that the README runs by name: the options that make it quick.
SHORTER_DEMOS = {"gan_1d": ["--steps", "30", "--d-steps-alone", "10", "--panel-c", "10"]}


def readme_commands(text: str) -> list[list[str]]:
    """The argv of every command of every ```bash block, in order, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands.extend(shlex.split(part) for part in line.split("&&") if part.strip())
    return commands


def shortened(argv: list[str]) -> list[str]:
    """argv with the options of SHORTER (and SHORTER_DEMOS) set to their small values."""
    argv = list(argv)
    if argv[1] == "demo" and len(argv) > 2:
        assert argv[2] in SHORTER_DEMOS, f"the README runs demo {argv[2]}: give SHORTER_DEMOS " \
                                         "the options that make it quick"
        return argv + SHORTER_DEMOS[argv[2]]
    for option, value in SHORTER.get(argv[1], {}).items():
        if option in argv:
            argv[argv.index(option) + 1] = value
        elif option not in SAMPLER_OPTIONS:  # a GAN checkpoint has no --sampling-steps
            argv += [option, value]
    return argv


def test_the_readme_has_the_commands_this_test_expects():
    commands = readme_commands(README.read_text())
    assert ["minigen", "train", "ddpm"] in commands and len(commands) >= 10
    assert shortened(["minigen", "train", "gan", "--steps", "9000"]) == [
        "minigen", "train", "gan", "--steps", "2", "--eval-samples", "20"]
    assert shortened(["minigen", "sample", "c.h5", "--sampling-steps", "50"])[-1] == "5"


def test_the_readme_lists_every_file_of_a_run_folder():
    listed = set(re.findall(r"^\| `([a-z]+\.[a-z0-9]+)` \|", README.read_text(), re.M))
    assert listed == set(run.RUN_FILES)


def check_after(argv: list[str], out: str, err: str, folder: Path) -> None:
    """What the README promises of a command, checked once it has run."""
    command = argv[1]
    if argv[:3] == ["minigen", "train", "ddpm"] and len(argv) == 3:
        job = folder / "runs" / "ddpm-digits"
        assert {path.name for path in job.iterdir()} >= set(run.RUN_FILES)
        last = err.strip().splitlines()[-1]
        assert last.startswith("done: ") and "FID " in last and "/10 classes" in last, last
        assert "held out for the measures" in err
    elif command == "sample" and "--trajectory" in argv:
        strip = argv[argv.index("--trajectory") + 1]
        assert (folder / strip).is_file() and f"wrote the denoising trajectory to {strip}" in err
    elif command == "eval":
        measures = json.loads(out)
        assert measures["sampling"]["seed"] == run.MEASURE_SEED
        if "--class" in argv:
            assert measures["class"] == int(argv[argv.index("--class") + 1])
            assert 0 <= measures["read_as_class"] <= 1 and "held-out images of class" in \
                measures["fid_against"]
        else:
            assert measures["fid"] > 0 and measures["fid_floor"] > 0
    elif command == "inspect":
        assert " parameters, " in out and "step: 2" in out and len(out.splitlines()) < 40
    elif command == "demo" and len(argv) == 2:
        assert all(f"{name} (" in out for name in cli.available_demos())


@pytest.mark.slow
def test_every_readme_command_runs_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINIGEN_CACHE", str(tmp_path / "cache"))  # the classifier, once
    ran = []
    for argv in readme_commands(README.read_text()):
        if any(argv[:len(prefix)] == prefix for prefix in SET_UP_ALREADY):
            continue
        assert argv[0] == "minigen", f"a README command this test cannot run: {shlex.join(argv)}"
        argv = shortened(argv)
        code = cli.main(argv[1:])
        captured = capsys.readouterr()
        assert code == 0, f"`{shlex.join(argv)}` exited {code}:\n{captured.err}"
        check_after(argv, captured.out, captured.err, tmp_path)
        ran.append(argv[1])
    assert {"train", "sample", "eval", "inspect", "demo"} <= set(ran)
    # the conditional run has a folder of its own: the main job is still the unconditional one
    main_job = json.loads((tmp_path / "runs" / "ddpm-digits" / "config.json").read_text())
    assert main_job["conditional"] is False
    assert (tmp_path / "runs" / "ddpm-digits-conditional" / "checkpoint.h5").is_file()
