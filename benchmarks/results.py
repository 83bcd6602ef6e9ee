"""The results table: the GAN and the DDPM trained on digits and on ring8 with the default
settings of `minigen train`, then measured (feature FID and KID beside their real-vs-real
floors, precision and recall, memorization, modes covered and high-quality share, training
time, sampling speed).

Writes docs/results.md (the table, the sample pictures from docs/images/, the command that
made them) and docs/results.json; the runs themselves go to runs/results/LOOP-DATASET.

    python benchmarks/results.py                        # everything with the default steps
    python benchmarks/results.py --steps-scale 0.1      # a tenth of the steps: a quick look
    python benchmarks/results.py --only gan-ring8 ddpm-ring8 --steps ddpm-ring8=1000
    python benchmarks/results.py --untrained            # also each model before training

With the default steps the DDPM on digits takes most of the time (a U-Net step per batch).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from minigen import metrics
from minigen.cli import loop_class
from minigen.run import (UserError, default_config, draw_samples, load_run_data, load_trained,
                         read_checkpoint_config, sample_defaults, train)

LOOPS = ("gan", "ddpm")
DATASETS = ("digits", "ring8")
SAMPLE_SEED = 2024        # the seed of the measured samples (pictures use the harness's own)
COMMAND = "python benchmarks/results.py"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finished_run(out: Path, options: dict) -> dict | None:
    """The training summary of a finished run in `out` with these options, or None."""
    try:
        config, step = read_checkpoint_config(str(out / "checkpoint.h5"))
        summary = json.loads((out / "metrics.json").read_text())["training"]
    except (UserError, OSError, ValueError, KeyError):
        return None
    same = all(config.get(key) == options[key] for key in ("loop", "dataset", "batch_size", "seed")
               if key in options)
    return summary if same and step == options["steps"] else None


def run_one(loop_name: str, dataset_name: str, args, untrained: bool = False) -> dict:
    """Train one model with the default settings (steps scaled; none when `untrained`), then
    sample and measure."""
    loop_cls = loop_class(loop_name)
    out = Path(args.runs) / f"{loop_name}-{dataset_name}{'-untrained' if untrained else ''}"
    options = default_config(loop_cls, dataset=dataset_name, out=str(out), force=True,
                             device=args.device, eval_samples=0)
    name = f"{loop_name}-{dataset_name}"
    if untrained:
        options["steps"] = 0
    elif name in args.steps:
        options["steps"] = args.steps[name]
    else:
        options["steps"] = max(1, round(options["steps"] * args.steps_scale))
    summary = finished_run(out, options) if args.reuse else None
    if summary is None:
        say(f"--- {loop_name} on {dataset_name}: {options['steps']} steps of "
            f"{options['batch_size']}")
        summary = train(loop_cls, options, progress=args.progress, say=say)
    else:
        say(f"--- {loop_name} on {dataset_name}: reusing the {options['steps']}-step run in {out}")

    loop, config, step = load_trained(str(out / "checkpoint.h5"), loop_cls, args.device)
    dataset = load_run_data(config)
    draw_samples(loop, 2, sample_defaults(loop_cls), SAMPLE_SEED)  # compiles kernels: untimed
    started = time.perf_counter()
    samples = draw_samples(loop, args.n, sample_defaults(loop_cls), SAMPLE_SEED)
    sampling_seconds = time.perf_counter() - started
    measures = metrics.evaluate(samples, dataset)
    (out / "results.json").write_text(json.dumps(measures, indent=2) + "\n")
    return {"loop": loop_name, "dataset": dataset_name, "steps": step, "untrained": untrained,
            "batch_size": config["batch_size"], "train_seconds": summary["seconds"],
            "train_images_per_second": summary["images_per_second"],
            "samples_per_second": args.n / sampling_seconds,
            "picture": str(out / "samples.png"), **measures}


# --- the report --------------------------------------------------------------------------
def _model(row: dict) -> str:
    return row["loop"].upper() + (" (untrained)" if row["untrained"] else "")


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | data | steps × batch | training | FID (floor) | KID (floor) | "
             "precision / recall | memorization | classes | modes covered | high-quality share "
             "| samples/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fid = (f"{row['fid']:.1f} ({row['fid_floor']:.1f})" if "fid" in row else "–")
        kid = (f"{row['kid']:.0f} ({row['kid_floor']:.0f})" if "kid" in row else "–")
        recall = (f"{row['precision']:.2f} / {row['recall']:.2f}" if "recall" in row else "–")
        copies = (f"{row['memorization']:.1%}" if "memorization" in row else "–")
        classes = (f"{row['classes_covered']}/{len(row['class_histogram'])}"
                   if "class_histogram" in row else "–")
        modes = (f"{row['modes_covered']}/{row['num_modes']}" if "num_modes" in row else "–")
        quality = (f"{row['high_quality_fraction']:.1%}" if "high_quality_fraction" in row
                   else "–")
        training = "–" if row["untrained"] else f"{row['train_seconds']:.0f} s"
        lines.append(f"| {_model(row)} | {row['dataset']} | {row['steps']} × "
                     f"{row['batch_size']} | {training} | {fid} | {kid} | {recall} | {copies} | "
                     f"{classes} | "
                     f"{modes} | {quality} | {row['samples_per_second']:.0f} |")
    return lines


def write_report(rows: list[dict], args, seconds: float) -> None:
    docs = Path(args.docs)
    images = docs / "images"
    images.mkdir(parents=True, exist_ok=True)
    pictures = []
    for row in rows:
        untrained = "-untrained" if row["untrained"] else ""
        target = images / f"results-{row['loop']}-{row['dataset']}{untrained}.png"
        shutil.copyfile(row.pop("picture"), target)
        pictures.append((row, target.relative_to(docs)))
    digits_row = next((row for row in rows if "classifier_accuracy" in row), None)
    command = " ".join([COMMAND] + sys.argv[1:])
    lines = [
        "# Results", "",
        f"Made by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, device "
        f"{args.device}, {seconds / 60:.1f} minutes in all). Each model is trained by "
        "`minigen train LOOP --dataset DATA` with the default settings"
        + ("" if args.steps_scale == 1 and not args.steps
           else " except the number of steps (see the table; the defaults: "
                + ", ".join(f"{loop.upper()} {loop_class(loop).default_steps:,}"
                            for loop in LOOPS) + ")")
        + f"; then {args.n} samples are drawn with the default sampler and measured by "
          "`minigen.metrics.evaluate` (what `minigen eval` prints). The load average "
          f"of the machine at the end was {os.getloadavg()[0]:.1f}: times measured on a busy "
          "machine are longer than on an idle one.", "",
        *table(rows), "",
        "- **FID (floor)**: the Fréchet distance between Gaussian fits of the penultimate "
        "features of a small CNN classifier (trained with minigen on the same data) for the "
        f"{args.n} samples and for the held-out split; the floor is the same distance for "
        f"{args.n} real training images, what a perfect generator would score with that many "
        "samples (FID is biased upwards at small sample counts, so compare the two, not the "
        "FID with other papers' numbers)."
        + (f" The classifier's held-out accuracy on digits: "
           f"{digits_row['classifier_accuracy']:.1%}." if digits_row else ""),
        "- **KID (floor)**: the kernel inception distance (Binkowski et al. 2018) in the same "
        "feature space, the unbiased estimate of the squared MMD under the kernel (x.y/d + 1)^3, "
        "with the same real-vs-real floor: unbiased, so the floor sits near 0 at any sample "
        "count (its spread at this n is a few hundred, for features this large).",
        "- **precision / recall**: improved precision and recall (Kynkäänniemi et al. 2019, "
        "k = 3) against the held-out split: the share of samples inside the real images' "
        "k-nearest-neighbour balls, and the share of real images inside the samples'.",
        "- **memorization**: the share of samples closer (in pixels) to their nearest training "
        "image than 95% of held-out images are to theirs: about 5% for fresh images, near "
        "100% for copies.",
        "- **classes**: classes that hold at least 0.8% of the samples by the classifier's "
        "reading; a collapsed generator leaves classes empty.",
        "- **modes covered / high-quality share** (VEEGAN's rule): a sample within 3 standard "
        "deviations of a mode centre is high quality; a mode is covered when at least 0.8% of "
        "the samples are high-quality samples of it.",
        "- **training**: wall-clock seconds of the training steps; **samples/s**: drawing the "
        f"{args.n} measured samples (DDPM: the default DDIM sampler; GAN: the EMA of G's "
        "weights, the default).", "",
        "## Samples", ""]
    for row, picture in pictures:
        lines += [f"**{_model(row)} on {row['dataset']}** ({row['steps']} steps)", "",
                  f"![{row['loop']} samples on {row['dataset']}]({picture})", ""]
    (docs / "results.md").write_text("\n".join(lines))
    (docs / "results.json").write_text(json.dumps({"command": command, "rows": rows},
                                                  indent=2) + "\n")
    print("\n".join(table(rows)))
    say(f"wrote {docs / 'results.md'}, {docs / 'results.json'} and {len(pictures)} pictures "
        f"in {images}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="LOOP-DATA",
                        default=[f"{loop}-{data}" for loop in LOOPS for data in DATASETS],
                        help="the runs to make")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply each loop's default number of steps (0.1: a quick look)")
    parser.add_argument("--steps", nargs="+", default=[], metavar="LOOP-DATA=N",
                        help="the number of steps of one run (overrides --steps-scale)")
    parser.add_argument("--untrained", action="store_true",
                        help="also measure each model untrained (0 steps): the other end "
                             "of the scale")
    parser.add_argument("--n", type=int, default=500, help="samples measured per model")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--runs", default="runs/results", help="where the runs go")
    parser.add_argument("--docs", default="docs", help="where results.md and images/ go")
    parser.add_argument("--reuse", action="store_true",
                        help="measure a finished run of the same settings in --runs again "
                             "instead of training it again (after a change to the measures)")
    parser.add_argument("--progress", action="store_true", help="show the training bars")
    args = parser.parse_args(argv)
    steps = {}
    for entry in args.steps:
        name, _, count = entry.partition("=")
        if not count.isdigit():
            parser.error(f"--steps {entry}: pass LOOP-DATA=N, for example ddpm-digits=500")
        steps[name] = int(count)
    args.steps = steps
    started = time.perf_counter()
    rows = []
    for name in args.only:
        loop_name, _, dataset_name = name.partition("-")
        if loop_name not in LOOPS or not dataset_name:
            parser.error(f"--only {name}: pass LOOP-DATA with LOOP in {', '.join(LOOPS)}, "
                         "for example gan-ring8")
        for untrained in (False, True) if args.untrained else (False,):
            rows.append(run_one(loop_name, dataset_name, args, untrained))
            say(json.dumps({key: value for key, value in rows[-1].items() if key != "picture"}))
    write_report(rows, args, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
