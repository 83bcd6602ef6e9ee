"""The options of `minigen train` and the run folder they name.

What a run folder holds, the harness's common options and their defaults, which options a
resumed run takes from the command line, the default folder of a run, and the check that a
folder holds the same run before it is trained again. minigen.run (the harness) and minigen.cli
use these; the loops add their own options through TrainingLoop.add_arguments.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from minigen import backend
from minigen.checkpoint import CheckpointError, load_checkpoint
from minigen.data import KNOWN_DATASETS
from minigen.divergence import NONFINITE_MODES
from minigen.evallog import EVAL_FILES
from minigen.loop import TrainingLoop, UserError

# What a run folder holds.
CHECKPOINT, SAMPLES, LOSS, METRICS, CONFIG, LOG = (
    "checkpoint.h5", "samples.png", "loss.png", "metrics.json", "config.json", "log.csv")
RUN_FILES = (CHECKPOINT, SAMPLES, LOSS, METRICS, CONFIG, LOG)

PICTURE_COUNT = 64        # samples drawn for samples.png
PICTURE_SEED = 12345      # pictures use their own seed, so every refresh shows the same noise
MEASURE_SEED = PICTURE_SEED + 1  # the seed of train's final measures, and eval's default
EVAL_SAMPLES = 500        # samples drawn for the quality measures of images (train's end, eval)
POINT_EVAL_SAMPLES = 2500  # ... and of toy points: the mode-coverage papers' count

# Options a resumed run takes from the command line; every other option comes from the
# checkpoint (the run keeps the settings it was trained with).
RESUMABLE_OPTIONS = ("steps", "out", "device", "resume", "force", "data_dir",
                     "checkpoint_every", "sample_every", "eval_samples", "on_nonfinite",
                     "eval_every")
# What the harness adds to the options from the dataset and the loop.
DATA_KEYS = ("loop", "data_kind", "data_shape", "num_classes", "world_size")
# Options that do not change the trained weights: ignored when deciding whether an output
# folder holds the same run.
NOT_IDENTITY = ("out", "resume", "force", "data_dir", "checkpoint_every", "sample_every",
                "eval_samples", "on_nonfinite", "eval_every") + DATA_KEYS


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------
def add_common_arguments(parser, loop_cls: type[TrainingLoop]) -> None:
    """The harness's `train` options, with the loop's defaults."""
    parser.add_argument("--dataset", default=loop_cls.default_dataset,
                        help="digits, mnist, fashion-mnist, gauss1d, ring8, grid25, swissroll, "
                             "or a .npy / .npz file, or a folder of PNG images")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder with the MNIST / Fashion-MNIST IDX files (default: the "
                             "cache folder, downloading when online)")
    parser.add_argument("--steps", type=int, default=loop_cls.default_steps,
                        help="total number of training steps to reach (a resumed run "
                             "continues up to it)")
    parser.add_argument("--batch-size", type=int, default=loop_cls.default_batch_size,
                        help="samples per training step")
    lr_default = f" (default: {loop_cls.default_lr_help})" if loop_cls.default_lr is None \
        and loop_cls.default_lr_help else ""
    parser.add_argument("--lr", type=float, default=loop_cls.default_lr,
                        help=f"learning rate{lr_default}")
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu",
                        help="where to train (cuda needs CuPy and an NVIDIA GPU)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights, the noise and the batch order")
    flags = _parser_defaults(loop_cls.add_arguments)
    suffix = "".join(f"[-{key.replace('_', '-')}]" if isinstance(flags.get(key), bool)
                     else f"[-{key.upper()}]" for key in loop_cls.run_name_options)
    if suffix:
        suffix += " (the bracketed parts when those options are not at their defaults)"
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"output folder (default: runs/{loop_cls.name}-DATASET{suffix}; "
                             "with --resume, the checkpoint's folder). A folder holding a run "
                             "with other settings is refused unless --force; one holding a run "
                             "with the same settings is trained again (same seed, same result)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue the run saved in CKPT up to --steps, with its settings")
    parser.add_argument("--force", action="store_true",
                        help="overwrite the run that --out holds")
    parser.add_argument("--checkpoint-every", type=int, default=loop_cls.default_checkpoint_every,
                        metavar="K", help="save checkpoint.h5 and loss.png every K steps "
                                          "(and at the end)")
    parser.add_argument("--sample-every", type=int, default=None, metavar="K",
                        help="refresh samples.png every K steps (default: at each checkpoint; "
                             "0: only at the end)")
    parser.add_argument("--eval-samples", type=int, default=None, metavar="N",
                        help="samples drawn at the end for metrics.json's quality measures "
                             f"(default: {EVAL_SAMPLES} for images, {POINT_EVAL_SAMPLES} for "
                             "points; 0: none)")
    parser.add_argument("--on-nonfinite", choices=NONFINITE_MODES, default="stop",
                        help="a step whose loss or gradient norm is NaN or infinite: stop the "
                             "run (the last checkpoint kept as it was), or skip the step without "
                             "applying its update, counted in log.csv's 'skipped' column")
    parser.add_argument("--eval-every", type=int, default=0, metavar="K",
                        help="also measure --eval-samples samples (EMA weights) every K steps "
                             "into eval.csv and eval.png (0: only at the end)")


def _parser_defaults(add) -> dict:
    """The defaults of the options that `add(parser)` defines."""
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return vars(parser.parse_args([]))


def default_config(loop_cls: type[TrainingLoop], **overrides) -> dict:
    """The options of `minigen train NAME` with no arguments, then `overrides`."""
    options = _parser_defaults(lambda parser: (add_common_arguments(parser, loop_cls),
                                               loop_cls.add_arguments(parser)))
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise ValueError(f"default_config: {loop_cls.__name__} has no option {unknown[0]!r}; "
                         f"its options are {', '.join(sorted(options))}")
    options.update(overrides)
    return options


def sample_defaults(loop_cls: type[TrainingLoop]) -> dict:
    """The defaults of the loop's `minigen sample` options, as sample() receives them."""
    return _parser_defaults(loop_cls.add_sample_arguments)


def _check_options(options: dict) -> None:
    rules = [("steps", 0, "the total number of steps to reach"),
             ("batch_size", 1, "the number of samples per step"),
             ("checkpoint_every", 1, "the number of steps between checkpoints"),
             ("seed", 0, "a seed for the random generators"),
             ("eval_samples", 0, "the number of samples for the quality measures"),
             ("eval_every", 0, "the number of steps between measurements (0: none)")]
    for key, low, what in rules:
        value = options.get(key)
        if value is not None and value < low:
            raise UserError(f"--{key.replace('_', '-')} is {value}; pass {what}, {low} or more")
    if options.get("eval_every") and options.get("eval_samples") == 0:
        raise UserError("--eval-every measures --eval-samples samples, and that is 0; pass "
                        "--eval-samples N with N > 0 or drop --eval-every")
    if options.get("sample_every") is not None and options["sample_every"] < 0:
        raise UserError(f"--sample-every is {options['sample_every']}; pass 0 or more")
    try:
        backend.check_device(options["device"])
    except (ValueError, RuntimeError) as error:
        raise UserError(str(error)) from None


def _json_equal(a, b) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def read_checkpoint_config(path: str) -> tuple[dict, int]:
    """(config, step) of a checkpoint, without building anything; UserError if unreadable."""
    try:
        state = load_checkpoint(path, restore_rng=False)
    except CheckpointError as error:
        raise UserError(str(error)) from None
    return state["config"], state["step"]


def resumed_options(loop_cls: type[TrainingLoop], options: dict, explicit: set | None) -> dict:
    """The options of a resumed run: the checkpoint's, except RESUMABLE_OPTIONS given now.

    explicit: the options given on the command line (None: all of them). An explicit option
    that contradicts the checkpoint is refused rather than silently ignored.
    """
    path = options["resume"]
    saved, _ = read_checkpoint_config(path)
    if not saved.get("loop"):
        raise UserError(f"{path} records no training loop in its config, so it cannot be "
                        "resumed; pass a checkpoint written by `minigen train`")
    if saved["loop"] != loop_cls.name:
        raise UserError(f"{path} was written by the {saved.get('loop')!r} loop, not "
                        f"{loop_cls.name!r}; resume it with `minigen train {saved.get('loop')} "
                        f"--resume {path}`")
    explicit = set(options) if explicit is None else set(explicit)
    merged = dict(saved)
    for key, value in options.items():
        if key in RESUMABLE_OPTIONS:
            if key in explicit or key in ("resume", "force") or key not in saved:
                merged[key] = value
        elif key in explicit and key in saved and not _json_equal(saved[key], value):
            raise UserError(f"--{key.replace('_', '-')} {value} differs from the {saved[key]} "
                            f"that {path} was trained with; a resumed run keeps its settings: "
                            "drop the option, or start a new run with another --out")
        elif key not in saved:  # an option that did not exist when the checkpoint was written
            merged[key] = value
    if "out" not in explicit:
        merged["out"] = os.path.dirname(os.path.abspath(path))
    return merged


def default_out(loop_cls: type[TrainingLoop], config: dict) -> str:
    """runs/LOOP-DATASET, then each of the loop's run_name_options that differs from its
    default: a flag by its name (runs/ddpm-digits-conditional), another option by its value
    (runs/gan-ring8-wgan-gp)."""
    dataset = config["dataset"]
    parts = [loop_cls.name, Path(dataset).stem if dataset not in KNOWN_DATASETS else dataset]
    defaults = default_config(loop_cls)
    for key in loop_cls.run_name_options:
        value = config.get(key, defaults.get(key))
        if _json_equal(value, defaults.get(key)):
            continue
        flag = key.replace("_", "-")
        parts.append(flag if value is True else f"no-{flag}" if value is False else str(value))
    return os.path.join("runs", "-".join(parts))


def _saved_run_config(out: Path) -> dict | None:
    """The config of the run in `out` (config.json, else the checkpoint's), None if none."""
    if (out / CONFIG).is_file():
        try:
            return json.loads((out / CONFIG).read_text())
        except (OSError, ValueError):
            return {"config.json": "unreadable"}
    if (out / CHECKPOINT).exists():
        try:
            return read_checkpoint_config(str(out / CHECKPOINT))[0]
        except UserError:
            return {"checkpoint.h5": "unreadable"}
    return None


def _resuming_gives(saved: dict, config: dict, differing: list[str]) -> bool:
    """Whether resuming the saved run would give the run `config` asks for: only options a
    resumed run takes from the command line differ, and --steps does not go back."""
    if not set(differing) <= set(RESUMABLE_OPTIONS):
        return False
    try:
        return int(config["steps"]) >= int(saved.get("steps", 0))
    except (TypeError, ValueError):
        return False


def prepare_out_dir(out: Path, config: dict, say) -> None:
    """Create `out`, or check what it holds: a run with other settings is refused unless
    --force, or unless this run resumes from the checkpoint inside `out`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the run's outputs")
    resume, force = config.get("resume"), config.get("force")
    continues_here = bool(resume) and os.path.dirname(os.path.abspath(resume)) == str(out.resolve())
    saved = _saved_run_config(out) if out.is_dir() else None
    if saved is not None and not continues_here:
        if force:
            for name in RUN_FILES + EVAL_FILES:
                (out / name).unlink(missing_ok=True)
        else:
            keys = sorted((set(saved) | set(config)) - set(NOT_IDENTITY))
            differing = [key for key in keys if not _json_equal(saved.get(key), config.get(key))]
            if differing:
                shown = ", ".join(f"{key} {saved.get(key)!r} -> {config.get(key)!r}"
                                  for key in differing[:3])
                if _resuming_gives(saved, config, differing):
                    raise UserError(f"{out} holds another run ({shown}); pass --resume "
                                    f"{out / CHECKPOINT} to continue it, --force to overwrite "
                                    "it, or --out to choose another folder")
                raise UserError(f"{out} holds another run ({shown}), which --resume would "
                                "continue with its own settings; pass --out DIR to train this "
                                "one beside it, or --force to overwrite it")
            say(f"{out} holds a run with the same settings: training it again from step 0 "
                f"(use --resume {out / CHECKPOINT} to continue it instead)")
    out.mkdir(parents=True, exist_ok=True)
