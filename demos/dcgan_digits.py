"""DCGAN on the embedded 8x8 handwritten digits: sample grids over training.

The same GANLoop that `minigen train gan` runs (DCGAN G and D, non-saturating loss, Adam
lr 2e-4, betas (0.5, 0.999)), driven here directly so that the generator's samples for one
fixed batch of noise can be shown at several points of training: from grey noise, through
blobs, to strokes that read as digits. The printout tracks the losses and mean D(x), D(G(z)).

    python demos/dcgan_digits.py [--steps 2000] [--out runs/demos/dcgan_digits]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minigen
from minigen.data import Batcher, load_dataset
from minigen.gan import GANLoop
from minigen.run import default_config
from minigen.viz import make_grid
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "about 2 min"

SHOWN = 16  # samples per grid


def fixed_noise_samples(loop: GANLoop, z: minigen.Tensor) -> np.ndarray:
    """G(z) in eval mode (BatchNorm's running statistics), as GANLoop.sample draws."""
    loop.generator.eval()
    with minigen.no_grad():
        images = loop.generator(z).numpy()
    loop.generator.train()
    return images


def draw(grids: list, real: np.ndarray, path: str) -> None:
    """One 4x4 grid per snapshot, side by side, the real digits last."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = grids + [("real digits", real)]
    figure = Figure(figsize=(1.9 * len(panels), 2.2), dpi=80)
    FigureCanvasAgg(figure)
    for index, (label, images) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), index + 1)
        ax.imshow(make_grid(images, nrow=4, padding=1), cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=10)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.88, wspace=0.06)
    figure.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "dcgan_digits")
    parser.add_argument("--steps", type=int, default=2000,
                        help="training steps (one D and one G step each)")
    parser.add_argument("--show-at", type=int, nargs="+", default=[0, 100, 300, 700, 1200],
                        help="steps whose samples get a row (the last step always does)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights, the batches and the shown noise")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    minigen.manual_seed(args.seed)
    data = load_dataset("digits")
    config = default_config(GANLoop, seed=args.seed, steps=args.steps)
    config.update(loop=GANLoop.name, data_kind="images", data_shape=list(data.shape),
                  num_classes=data.num_classes)  # as the harness writes it, for minigen sample
    loop = GANLoop(config, "cpu")
    batches = Batcher(data.train, config["batch_size"], seed=args.seed)
    z = loop.noise(SHOWN)
    show_at = {step for step in args.show_at if step < args.steps} | {args.steps}

    grids = [("step 0", fixed_noise_samples(loop, z))] if 0 in show_at else []
    for step in range(1, args.steps + 1):
        scalars = loop.train_step(minigen.tensor(batches.batch(step - 1)), None, step - 1)
        if step in show_at:
            grids.append((f"step {step}", fixed_noise_samples(loop, z)))
        if step % 250 == 0 or step == args.steps:
            print(f"step {step:5d}: loss_d {scalars['loss_d']:.3f}  loss_g {scalars['loss_g']:.3f}"
                  f"  D(x) {scalars['d_real']:.3f}  D(G(z)) {scalars['d_fake']:.3f}  "
                  f"{(time.perf_counter() - started) / step:.3f} s/step", flush=True)

    paths = figure_paths(args, "dcgan_digits")
    for path in paths:
        draw(grids, data.test[:SHOWN], path)
    minigen.save_checkpoint(os.path.join(args.out, "checkpoint.h5"), models=loop.models(),
                            optimizers=loop.optimizers(), step=args.steps, config=config)
    seconds = time.perf_counter() - started
    print(f"wrote {', '.join(paths)} and {args.out}/checkpoint.h5 in {seconds:.0f} s "
          f"({seconds / args.steps:.3f} s per step)")


if __name__ == "__main__":
    main()
