"""The demos as a student meets them: every option explained with its default in --help, the
figure written into the demo's own run folder (the README's copy in docs/images only when
asked), and gan_1d's last line saying whether the generator matches the data.

The demos are scripts, not a package: each is imported from its file, as `python demos/X.py`
would run it, with demos/ on sys.path for their shared helpers.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from minigen import cli

DEMOS = Path(__file__).resolve().parent.parent / "demos"
NAMES = cli.available_demos()


def load_demo(name: str):
    if str(DEMOS) not in sys.path:
        sys.path.insert(0, str(DEMOS))
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_demos_to_check():
    assert {"gan_1d", "mode_collapse", "ddpm_2d", "editing"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_option_of_a_demo_is_explained_with_its_default(name):
    parser = load_demo(name).build_parser()
    for action in parser._actions:
        assert action.help, f"{name}: {action.option_strings} has no help text"
    help_text = "".join(parser.format_help().split())  # argparse wraps lines anywhere
    for action in parser._actions:
        if action.default not in (None, False, "==SUPPRESS=="):
            shown = "".join(f"(default: {action.default})".split())
            assert shown in help_text, f"{name}: {action.option_strings} shows no default"
    assert parser.description.startswith(load_demo(name).__doc__.split("\n")[0])


@pytest.mark.parametrize("name", NAMES)
def test_a_demo_writes_into_its_run_folder_unless_asked_for_the_readme_figure(name):
    module = load_demo(name)
    args = module.build_parser().parse_args([])
    assert args.out == f"runs/demos/{name}" and args.readme_figure is False
    for value in vars(args).values():
        assert "docs" not in str(value), f"{name}: a default points into docs/: {value}"


def test_the_readme_figure_is_refreshed_only_when_asked(tmp_path):
    demo = load_demo("gan_1d")
    args = demo.build_parser().parse_args(["--out", str(tmp_path / "run")])
    assert demo.figure_paths(args, "gan_1d") == [str(tmp_path / "run" / "gan_1d.png")]
    args = demo.build_parser().parse_args(["--out", str(tmp_path / "run"), "--readme-figure"])
    assert demo.figure_paths(args, "gan_1d")[1] == str(DEMOS.parent / "docs" / "images" /
                                                        "gan_1d.png")


def test_gan_1d_runs_into_its_folder_and_says_whether_g_matches_the_data(tmp_path):
    figure = DEMOS.parent / "docs" / "images" / "gan_1d.png"
    before = figure.read_bytes()
    result = subprocess.run([sys.executable, str(DEMOS / "gan_1d.py"), "--steps", "30",
                             "--d-steps-alone", "10", "--panel-c", "10"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "demos" / "gan_1d" / "gan_1d.png").is_file()
    assert figure.read_bytes() == before  # the README's figure is left alone
    last = result.stdout.strip().splitlines()[-1]
    assert "Kolmogorov-Smirnov distance of" in last and "mean |D(x) - 1/2|" in last


def test_the_ks_distance_tells_a_matching_generator_from_a_narrow_one():
    import numpy as np
    demo = load_demo("gan_1d")
    rng = np.random.default_rng(0)
    matching = rng.normal(4.0, 0.5, 20_000)
    assert demo.ks_distance(matching, 4.0, 0.5) < 3 * demo.ks_noise(20_000)
    assert demo.ks_distance(rng.normal(4.0, 0.25, 20_000), 4.0, 0.5) > 0.1
    assert demo.ks_distance(np.full(100, 10.0), 4.0, 0.5) == pytest.approx(1.0)
