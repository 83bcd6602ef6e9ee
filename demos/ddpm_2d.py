"""DDPM on the ring of 8 Gaussians: the diffusion model's answer to mode collapse.

The data and the measure are those of demos/mode_collapse.py (8 Gaussians of std 0.02 on a
circle of radius 2; a sample is high quality within 3 std of a centre, a mode is covered when
it holds at least 0.8% of the samples; minigen.metrics.mode_coverage), so the two printouts
can be set side by side. A DDPM has no adversary to chase: its loss is a plain regression on
the noise, and every mode keeps its share of the samples from early on; training longer only
sharpens the modes. An MLP denoiser, DDIM sampling with 50 steps (ancestral 1,000 at the end).

    python demos/ddpm_2d.py [--steps 3000] [--out runs/demos/ddpm_2d]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minigen
from minigen import run
from minigen.data import Batcher, load_dataset
from minigen.ddpm import DDPMLoop
from minigen.metrics import mode_coverage
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "1 to 3 min"

EVAL_SAMPLES = 2500


def draw(snapshots: list, data, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    figure = Figure(figsize=(2.6 * len(snapshots), 3.3), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(snapshots))
    for ax, (label, samples, coverage) in zip(axes, snapshots):
        ax.scatter(samples[:, 0], samples[:, 1], s=2, color="tab:blue", alpha=0.4, linewidths=0)
        ax.scatter(data.centres[:, 0], data.centres[:, 1], marker="x", color="tab:red", s=25)
        for centre in data.centres:
            ax.add_patch(Circle(tuple(centre), 3 * data.std, fill=False, color="tab:red",
                                linewidth=0.6))
        ax.set_xlim(-2.8, 2.8)
        ax.set_ylim(-2.8, 2.8)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{label}: {coverage['modes_covered']}/8 modes\n"
                     f"{100 * coverage['high_quality_fraction']:.0f}% high quality", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def measured(loop: DDPMLoop, data, **options) -> tuple[np.ndarray, dict]:
    """EVAL_SAMPLES samples and their mode coverage, without touching the training noise."""
    state = minigen.get_rng_state()
    minigen.manual_seed(1)
    samples = loop.sample(EVAL_SAMPLES, **options)
    minigen.set_rng_state(state)
    return samples, mode_coverage(samples, data.centres, data.std)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "ddpm_2d")
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--snapshots", type=int, default=5, help="panels during training")
    parser.add_argument("--batch-size", type=int, default=256, help="points per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW step size")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights, the data and the noise")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    minigen.manual_seed(args.seed)
    data = load_dataset("ring8", seed=args.seed)
    config = run.default_config(DDPMLoop, dataset="ring8", steps=args.steps, lr=args.lr,
                                batch_size=args.batch_size, seed=args.seed)
    config.update(loop="ddpm", data_kind="points", data_shape=[2], num_classes=8)
    loop = DDPMLoop(config, "cpu")
    batches = Batcher(data.train, args.batch_size, seed=args.seed)
    show_at = set(np.linspace(args.steps / args.snapshots, args.steps, args.snapshots).astype(int))

    snapshots = []
    for step in range(1, args.steps + 1):
        scalars = loop.train_step(minigen.tensor(batches.batch(step - 1)), None, step - 1)
        if step in show_at:
            samples, coverage = measured(loop, data, sampler="ddim", sampling_steps=50)
            snapshots.append((f"step {step}", samples, coverage))
            print(f"step {step:5d}: loss {scalars['loss']:.3f}, {coverage['modes_covered']}/8 "
                  f"modes covered, {100 * coverage['high_quality_fraction']:.1f}% high quality, "
                  f"samples per mode {coverage['samples_per_mode']}")
    samples, ancestral = measured(loop, data, sampler="ddpm")
    snapshots.append(("ancestral", samples, ancestral))
    print(f"ancestral (1000 steps): {ancestral['modes_covered']}/8 modes covered, "
          f"{100 * ancestral['high_quality_fraction']:.1f}% high quality, samples per mode "
          f"{ancestral['samples_per_mode']}")

    paths = figure_paths(args, "ddpm_2d")
    for path in paths:
        draw(snapshots, data, path)
    final = snapshots[-2][2]
    print(f"wrote {', '.join(paths)} in {time.perf_counter() - started:.0f} s")
    print(f"final DDPM (DDIM 50 steps): {final['modes_covered']} of 8 modes covered, "
          f"{100 * final['high_quality_fraction']:.1f}% of {EVAL_SAMPLES} samples high quality "
          "(compare demos/mode_collapse.py)")


if __name__ == "__main__":
    main()
