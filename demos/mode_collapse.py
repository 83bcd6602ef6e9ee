"""Mode collapse: a vanilla GAN on the ring of 8 Gaussians (the experiment of Unrolled GAN,
VEEGAN and PacGAN).

The data are 8 tight Gaussians (std 0.02) on a circle of radius 2. Nothing in the GAN
objective rewards covering every mode, and the same vanilla GAN is trained twice: with
DCGAN's Adam settings (lr 2e-4, batch 64) G collapses onto a thin sliver that swings from one
part of the ring to another as D learns to reject where it is; with lr 1e-3 and batch 256 it
settles on the modes but leaves some empty. Two more runs keep DCGAN's settings and add a
stabilizer of D (minigen.gan): the zero-centred R1 penalty ("r1=GAMMA") and spectral
normalization ("sn"). Each row of the figure shows G's samples at
several steps over the true modes (red crosses, circles of 3 std) and, below, the samples per
mode against the 0.8% bar. The printout gives the modes covered and the share of high-quality
samples (within 3 std of a centre; a mode counts when it holds at least 0.8% of 2,500 samples,
the VEEGAN rule of minigen.metrics.mode_coverage).

    python demos/mode_collapse.py [--steps 6000] [--loss nonsaturating] [--out DIR]
    python demos/mode_collapse.py --settings 2e-4:64:sn     # one run; rows are kept in --out
    python demos/mode_collapse.py --reuse                   # the figure from the kept rows
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import minigen
from minigen.data import Batcher, load_dataset
from minigen.gan import LOSSES, GANLoop
from minigen.metrics import MODE_MIN_SHARE, mode_coverage
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "about 2 min"

EVAL_SAMPLES = 2500


def draw(rows: list, data, path: str) -> None:
    """Per setting, a row of samples over the modes and a row of samples per mode."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    columns = max(len(snapshots) for _, snapshots in rows)
    figure = Figure(figsize=(2.4 * columns, 3.9 * len(rows)), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 * len(rows), columns, squeeze=False,
                           gridspec_kw=dict(height_ratios=[3, 1] * len(rows)))
    for index, (label, snapshots) in enumerate(rows):
        most = max(max(coverage["samples_per_mode"]) for _, _, coverage in snapshots)
        for top, bottom, (step, samples, coverage) in zip(axes[2 * index], axes[2 * index + 1],
                                                           snapshots):
            top.scatter(samples[:, 0], samples[:, 1], s=3, color="tab:blue", alpha=0.5,
                        linewidths=0)
            top.scatter(data.centres[:, 0], data.centres[:, 1], marker="x", color="tab:red", s=25)
            for centre in data.centres:
                top.add_patch(Circle(tuple(centre), 3 * data.std, fill=False, color="tab:red",
                                     linewidth=0.6))
            top.set_xlim(-2.8, 2.8)
            top.set_ylim(-2.8, 2.8)
            top.set_aspect("equal")
            top.set_xticks([])
            top.set_yticks([])
            top.set_title(f"step {step}: {coverage['modes_covered']}/8 modes, "
                          f"{100 * coverage['high_quality_fraction']:.0f}% HQ", fontsize=9)
            bottom.bar(np.arange(8), coverage["samples_per_mode"], color="tab:blue")
            bottom.axhline(MODE_MIN_SHARE * EVAL_SAMPLES, color="tab:red", linewidth=0.8)
            bottom.set_ylim(0, max(most, 1) * 1.05)
            bottom.set_xticks([])
            bottom.set_yticks([])
        axes[2 * index][0].set_ylabel(label, fontsize=10)
        axes[2 * index + 1][0].set_ylabel("per mode", fontsize=8)
    figure.subplots_adjust(left=0.03, right=0.99, bottom=0.01, top=0.96, wspace=0.05,
                           hspace=0.25)
    figure.savefig(path)


def parse_setting(text: str) -> tuple[float, int, dict, str]:
    """"LR:BATCH[:r1=GAMMA|:sn]" -> (lr, batch size, GANLoop options, label)."""
    parts = text.split(":")
    try:
        lr, batch_size = float(parts[0]), int(parts[1])
        extra, label = {}, f"lr {float(parts[0]):g}, batch {int(parts[1])}"
        for part in parts[2:]:
            if part == "sn":
                extra["spectral_norm"], label = True, label + ", spectral norm"
            elif part.startswith("r1="):
                extra["r1"] = float(part[3:])
                label += f", R1 gamma {extra['r1']:g}"
            else:
                raise ValueError(part)
    except (ValueError, IndexError):
        raise SystemExit(f"--settings {text}: pass LR:BATCH, optionally with :sn or :r1=GAMMA, "
                         "e.g. 2e-4:64:r1=1") from None
    return lr, batch_size, extra, label


def train(data, loss: str, lr: float, batch_size: int, steps: int, snapshots: int,
          seed: int, extra: dict | None = None) -> list:
    """Train a vanilla GAN on the ring; (step, samples, coverage) at `snapshots` even steps.
    extra: more GANLoop options (spectral_norm, r1)."""
    minigen.manual_seed(seed)
    config = dict(loss=loss, d_steps=1, latent_dim=8, width=128, lr=lr, beta1=0.5,
                  beta2=0.999, gp_weight=10.0, data_kind="points", data_shape=[2],
                  **(extra or {}))
    loop = GANLoop(config, "cpu")
    batches = Batcher(data.train, batch_size, seed=seed)
    show_at = set(np.linspace(steps / snapshots, steps, snapshots).astype(int))
    results = []
    for step in range(1, steps + 1):
        loop.train_step(minigen.tensor(batches.batch(step - 1)), None, step - 1)
        if step in show_at:
            state = minigen.get_rng_state()
            samples = loop.sample(EVAL_SAMPLES)
            minigen.set_rng_state(state)
            coverage = mode_coverage(samples, data.centres, data.std)
            results.append((step, samples, coverage))
            print(f"  step {step:5d}: {coverage['modes_covered']}/8 modes covered, "
                  f"{100 * coverage['high_quality_fraction']:5.1f}% high quality, samples per "
                  f"mode {coverage['samples_per_mode']}", flush=True)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "mode_collapse")
    parser.add_argument("--steps", type=int, default=6000, help="training steps of each run")
    parser.add_argument("--snapshots", type=int, default=6, help="panels, evenly spaced")
    parser.add_argument("--loss", choices=LOSSES, default="nonsaturating",
                        help="adversarial objective")
    parser.add_argument("--settings", nargs="+",
                        default=["2e-4:64", "1e-3:256", "2e-4:64:r1=1", "2e-4:64:sn"],
                        metavar="LR:BATCH[:sn|:r1=GAMMA]",
                        help="Adam step size and batch size of each run, and D's stabilizer")
    parser.add_argument("--reuse", action="store_true",
                        help="take a run kept in --out by an earlier call with the same "
                             "settings, steps and seed instead of training it again")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights, the data and the noise")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    data = load_dataset("ring8", seed=args.seed)
    rows, finals = [], []
    for setting in args.settings:
        lr, batch_size, extra, label = parse_setting(setting)
        print(f"{args.loss} GAN, {label}:")
        kept = Path(args.out) / (f"{args.loss}-{setting.replace(':', '_')}-{args.steps}-"
                                 f"{args.snapshots}-{args.seed}.npz")
        if args.reuse and kept.is_file():
            with np.load(kept) as saved:
                snapshots = [(int(step), saved[f"samples{index}"],
                              mode_coverage(saved[f"samples{index}"], data.centres, data.std))
                             for index, step in enumerate(saved["steps"])]
            print(f"  (kept in {kept})")
        else:
            snapshots = train(data, args.loss, lr, batch_size, args.steps, args.snapshots,
                              args.seed, extra)
            np.savez(kept, steps=[step for step, _, _ in snapshots],
                     **{f"samples{index}": samples for index, (_, samples, _) in enumerate(snapshots)})
        rows.append((label, snapshots))
        finals.append((label, snapshots[-1][2]))

    paths = figure_paths(args, "mode_collapse")
    for path in paths:
        draw(rows, data, path)
    print(f"wrote {', '.join(paths)} in {time.perf_counter() - started:.0f} s")
    for label, final in finals:
        print(f"final generator ({args.loss}, {label}): {final['modes_covered']} of 8 modes "
              f"covered, {100 * final['high_quality_fraction']:.1f}% of {EVAL_SAMPLES} samples "
              "high quality")


if __name__ == "__main__":
    main()
