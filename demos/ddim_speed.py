"""DDIM: the same trained network, sampled in 10 to 100 steps instead of 1,000.

DDPM's ancestral sampler walks all T = 1000 steps of the reverse chain. DDIM (Song et al.
2021) reuses the network unchanged but jumps along a subsequence of timesteps with a
deterministic update (eta = 0), so sampling is 10-100 times faster at little cost in quality.
This demo draws the same number of digits with ancestral sampling and with DDIM at 100, 50,
20 and 10 steps from one checkpoint, times each, and measures each batch with the feature FID
of minigen.metrics (lower is better; the floor is what real digits score).

    python demos/ddim_speed.py [--checkpoint runs/ddpm-digits/checkpoint.h5] [--n 128]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minigen
from minigen import metrics, viz
from minigen.data import load_dataset

from _trained_ddpm import MAIN_JOB_CHECKPOINT, load_or_train
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "about 5 min; 6 min more to train the main job when runs/ddpm-digits has none"

DDIM_STEPS = (100, 50, 20, 10)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "ddim_speed")
    parser.add_argument("--checkpoint", default=MAIN_JOB_CHECKPOINT,
                        help="a DDPM checkpoint (trained first with the main job's settings "
                             "if missing)")
    parser.add_argument("--n", type=int, default=128, help="samples per sampler")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the sampling noise (the same for every sampler)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)
    loop = load_or_train(args.checkpoint)
    dataset = load_dataset("digits")

    runs = [("ancestral 1000", dict(sampler="ddpm"))] + \
        [(f"DDIM {steps}", dict(sampler="ddim", sampling_steps=steps, eta=0.0)) for steps in DDIM_STEPS]
    rows, results = [], []
    for label, options in runs:
        minigen.manual_seed(args.seed)
        started = time.perf_counter()
        samples = loop.sample(args.n, **options)
        seconds = time.perf_counter() - started
        quality = metrics.evaluate(samples, dataset)
        results.append((label, seconds, quality))
        rows.append(samples[:16])
        viz.save_image_grid(samples[:64], os.path.join(args.out, f"{label.replace(' ', '_')}.png"))
        print(f"{label:>15}: {seconds:7.1f} s ({args.n / seconds:6.1f} images/s), feature FID "
              f"{quality['fid']:.2f} (floor {quality['fid_floor']:.2f}), classes covered "
              f"{quality['classes_covered']}/10", flush=True)

    paths = figure_paths(args, "ddim_speed")  # one row of 16 per sampler
    for path in paths:
        viz.save_image_grid(np.concatenate(rows), path, nrow=16)
    print(f"wrote {', '.join(paths)} (rows: {', '.join(label for label, _, _ in results)})")
    ancestral_seconds = results[0][1]
    print("speed-up over 1000 ancestral steps: " + ", ".join(
        f"{label} {ancestral_seconds / seconds:.0f}x (FID {quality['fid']:.2f})"
        for label, seconds, quality in results[1:]))


if __name__ == "__main__":
    main()
