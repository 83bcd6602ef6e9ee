"""The figure of the original GAN paper (Goodfellow et al., 2014, Figure 1), trained for real.

A generator G maps z ~ N(0, 1) to one number; the data are N(4, 0.5^2). Four panels show the
data density (black dots), the generator's density (green line) and the discriminator's
D(x) (blue dashes): (a) at the start; (b) after training D alone, when D(x) approaches
p_data / (p_data + p_g); (c) during training, G's mass moving toward the data along D's
gradient; (d) at the end, p_g close to p_data and D(x) close to 1/2, unable to tell them apart.

    python demos/gan_1d.py [--steps 3000] [--out runs/demos/gan_1d]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import minigen
from minigen.data import Batcher, load_dataset
from minigen.gan import GANLoop

DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
PANELS = ("(a) start", "(b) D trained alone", "(c) during training", "(d) end")


def snapshot(loop: GANLoop, grid: np.ndarray, n: int = 20_000) -> dict:
    """G's samples (for its density) and D(x) on the grid, without disturbing training."""
    state = minigen.get_rng_state()
    samples = loop.sample(n)[:, 0]
    minigen.set_rng_state(state)
    with minigen.no_grad():
        d_of_x = loop.discriminator(minigen.tensor(grid[:, None].astype(np.float32))).sigmoid()
    return {"samples": samples, "d": d_of_x.numpy()[:, 0]}


def density(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A Gaussian kernel density estimate of the samples on the grid (Silverman's bandwidth)."""
    subset = samples[:: max(1, len(samples) // 4000)]
    bandwidth = 1.06 * max(subset.std(), 1e-3) * len(subset) ** -0.2
    z = (grid[:, None] - subset[None, :]) / bandwidth
    return np.exp(-0.5 * z * z).sum(axis=1) / (len(subset) * bandwidth * np.sqrt(2 * np.pi))


def draw(panels: list, grid: np.ndarray, data_density: np.ndarray, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 4, sharey=True)
    for ax, title, panel in zip(axes, PANELS, panels):
        ax.plot(grid[::6], data_density[::6], "k.", markersize=3, label="data density")
        ax.plot(grid, density(panel["samples"], grid), color="tab:green", linewidth=2,
                label="generator density")
        ax.plot(grid, panel["d"], color="tab:blue", linestyle="--", linewidth=1.5, label="D(x)")
        ax.axhline(0.5, color="0.8", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("x")
    axes[0].legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="adversarial training steps")
    parser.add_argument("--d-steps-alone", type=int, default=300,
                        help="steps of D alone between panels (a) and (b)")
    parser.add_argument("--panel-c", type=int, default=150, help="the step shown in panel (c)")
    parser.add_argument("--d-steps", type=int, default=1, help="D steps per G step (k)")
    parser.add_argument("--width", type=int, default=32, help="hidden units of G and D")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demos/gan_1d")
    parser.add_argument("--figure", default=str(DOCS_IMAGES / "gan_1d.png"),
                        help="also write the figure here ('' to skip)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    minigen.manual_seed(args.seed)
    data = load_dataset("gauss1d", seed=args.seed)
    config = dict(loss="nonsaturating", d_steps=args.d_steps, latent_dim=1, width=args.width,
                  lr=args.lr, beta1=0.5, beta2=0.999, data_kind="points", data_shape=[1])
    loop = GANLoop(config, "cpu")
    batches = Batcher(data.train, args.batch_size, seed=args.seed)
    grid = np.linspace(-2.0, 7.0, 400)
    centre, std = float(data.centres[0, 0]), float(data.std)
    data_density = np.exp(-0.5 * ((grid - centre) / std) ** 2) / (std * np.sqrt(2 * np.pi))

    panels = [snapshot(loop, grid)]
    for step in range(args.d_steps_alone):
        with minigen.no_grad():
            fake = loop.generator(loop.noise(args.batch_size))
        loop.discriminator_step(minigen.tensor(batches.batch(step)), fake)
    panels.append(snapshot(loop, grid))
    for step in range(args.steps):
        real = minigen.tensor(batches.batch(args.d_steps_alone + step))
        scalars = loop.train_step(real, None, step)
        if step + 1 == args.panel_c:
            panels.append(snapshot(loop, grid))
        if (step + 1) % 1000 == 0:
            print(f"step {step + 1}: D(real) {scalars['d_real']:.3f}  D(fake) "
                  f"{scalars['d_fake']:.3f}  loss_d {scalars['loss_d']:.3f}  loss_g "
                  f"{scalars['loss_g']:.3f}")
    panels.append(snapshot(loop, grid))

    paths = [os.path.join(args.out, "gan_1d.png")] + ([args.figure] if args.figure else [])
    for path in paths:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        draw(panels, grid, data_density, path)
    with minigen.no_grad():
        d_on_data = loop.discriminator(minigen.tensor(data.test)).sigmoid().numpy()[:, 0]
    samples = panels[-1]["samples"]
    print(f"wrote {', '.join(paths)} in {time.perf_counter() - started:.0f} s")
    print(f"generator: mean {samples.mean():.3f}, std {samples.std():.3f} (data: {centre}, {std})")
    near_data = np.abs(grid - centre) < 2 * std
    print(f"(b) after D alone: mean D(x) within 2 std of the data mean "
          f"{panels[1]['d'][near_data].mean():.3f}")
    print(f"(d) mean |D(x) - 1/2| over the data at the end: {np.abs(d_on_data - 0.5).mean():.4f}")


if __name__ == "__main__":
    main()
