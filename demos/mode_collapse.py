"""Mode collapse: a vanilla GAN on the ring of 8 Gaussians (the experiment of Unrolled GAN,
VEEGAN and PacGAN).

The data are 8 tight Gaussians (std 0.02) on a circle of radius 2. Nothing in the GAN
objective rewards covering every mode: G gathers its mass on some of them, modes come and go
as D learns to reject where G currently is, and some stay empty. The figure shows G's
samples at several steps over the true modes (red crosses, circles of 3 std); the printout
gives, for each, the modes covered, the share of high-quality samples (within 3 std of a
centre; a mode counts when it holds at least 0.8% of 2,500 samples, the VEEGAN rule of
minigen.metrics.mode_coverage) and the samples per mode, whose unevenness is the collapse.

    python demos/mode_collapse.py [--steps 6000] [--loss nonsaturating]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minigen
from minigen.data import Batcher, load_dataset
from minigen.gan import LOSSES, GANLoop
from minigen.metrics import MODE_MIN_SHARE, mode_coverage

EVAL_SAMPLES = 2500


def draw(snapshots: list, data, path: str) -> None:
    """Top row: samples over the modes; bottom row: samples per mode against the 0.8% bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    figure = Figure(figsize=(2.4 * len(snapshots), 3.9), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(snapshots), gridspec_kw=dict(height_ratios=[3, 1]))
    most = max(max(coverage["samples_per_mode"]) for _, _, coverage in snapshots)
    for top, bottom, (step, samples, coverage) in zip(axes[0], axes[1], snapshots):
        top.scatter(samples[:, 0], samples[:, 1], s=3, color="tab:blue", alpha=0.5, linewidths=0)
        top.scatter(data.centres[:, 0], data.centres[:, 1], marker="x", color="tab:red", s=25)
        for centre in data.centres:
            top.add_patch(Circle(tuple(centre), 3 * data.std, fill=False, color="tab:red",
                                 linewidth=0.6))
        top.set_xlim(-2.8, 2.8)
        top.set_ylim(-2.8, 2.8)
        top.set_aspect("equal")
        top.set_xticks([])
        top.set_yticks([])
        top.set_title(f"step {step}: {coverage['modes_covered']}/8 modes\n"
                      f"{100 * coverage['high_quality_fraction']:.0f}% high quality", fontsize=9)
        bottom.bar(np.arange(8), coverage["samples_per_mode"], color="tab:blue")
        bottom.axhline(MODE_MIN_SHARE * EVAL_SAMPLES, color="tab:red", linewidth=0.8)
        bottom.set_ylim(0, most * 1.05)
        bottom.set_xticks([])
        bottom.set_yticks([])
    axes[1][0].set_ylabel("per mode", fontsize=8)
    figure.subplots_adjust(left=0.02, right=0.99, bottom=0.02, top=0.88, wspace=0.05, hspace=0.08)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--snapshots", type=int, default=6, help="panels, evenly spaced")
    parser.add_argument("--loss", choices=LOSSES, default="nonsaturating")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demos/mode_collapse")
    parser.add_argument("--figure", default="docs/images/mode_collapse.png",
                        help="also write the figure here ('' to skip)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    minigen.manual_seed(args.seed)
    data = load_dataset("ring8", seed=args.seed)
    config = dict(loss=args.loss, d_steps=1, latent_dim=8, width=128, lr=args.lr, beta1=0.5,
                  beta2=0.999, gp_weight=10.0, data_kind="points", data_shape=[2])
    loop = GANLoop(config, "cpu")
    batches = Batcher(data.train, args.batch_size, seed=args.seed)
    show_at = set(np.linspace(args.steps / args.snapshots, args.steps, args.snapshots).astype(int))

    snapshots = []
    for step in range(1, args.steps + 1):
        loop.train_step(minigen.tensor(batches.batch(step - 1)), None, step - 1)
        if step in show_at:
            state = minigen.get_rng_state()
            samples = loop.sample(EVAL_SAMPLES)
            minigen.set_rng_state(state)
            coverage = mode_coverage(samples, data.centres, data.std)
            snapshots.append((step, samples, coverage))
            print(f"step {step:5d}: {coverage['modes_covered']}/8 modes covered, "
                  f"{100 * coverage['high_quality_fraction']:.1f}% high quality, samples per "
                  f"mode {coverage['samples_per_mode']}")

    paths = [os.path.join(args.out, "mode_collapse.png")] + ([args.figure] if args.figure else [])
    for path in paths:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        draw(snapshots, data, path)
    final = snapshots[-1][2]
    print(f"wrote {', '.join(paths)} in {time.perf_counter() - started:.0f} s")
    print(f"final generator ({args.loss}): {final['modes_covered']} of 8 modes covered, "
          f"{100 * final['high_quality_fraction']:.1f}% of {EVAL_SAMPLES} samples high quality")


if __name__ == "__main__":
    main()
