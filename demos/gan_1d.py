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

import numpy as np

import minigen
from minigen.data import Batcher, load_dataset
from minigen.gan import GANLoop
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "about 10 s"

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


def ks_distance(samples: np.ndarray, mean: float, std: float) -> float:
    """The Kolmogorov-Smirnov distance sup_x |F_G(x) - F_data(x)| between the samples'
    empirical distribution and N(mean, std^2): 0 when G matches the data, 1 at worst."""
    from scipy.special import ndtr  # the standard normal CDF

    ordered = np.sort(samples)
    data_cdf = ndtr((ordered - mean) / std)
    n = len(ordered)
    above = np.arange(1, n + 1) / n - data_cdf
    below = data_cdf - np.arange(n) / n
    return float(max(above.max(), below.max()))


def ks_noise(n: int) -> float:
    """The typical KS distance of n samples drawn from the data itself (the median of the
    Kolmogorov distribution, 0.83, over sqrt(n)): what a perfect generator scores."""
    return 0.828 / np.sqrt(n)


def draw(panels: list, grid: np.ndarray, data_density: np.ndarray, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 4)
    for ax, title, panel in zip(axes, PANELS, panels):
        curve = density(panel["samples"], grid)
        ax.plot(grid[::6], data_density[::6], "k.", markersize=3, label="data density")
        ax.plot(grid, curve, color="tab:green", linewidth=2, label="generator density")
        ax.plot(grid, panel["d"], color="tab:blue", linestyle="--", linewidth=1.5, label="D(x)")
        ax.axhline(0.5, color="0.8", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        # each panel's own height, so a sharply peaked G early on stays inside its panel and
        # does not flatten the later ones
        ax.set_ylim(0, 1.08 * max(1.0, data_density.max(), curve.max()))
        ax.set_xlabel("x")
    axes[0].legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "gan_1d")
    parser.add_argument("--steps", type=int, default=3000, help="adversarial training steps")
    parser.add_argument("--d-steps-alone", type=int, default=300,
                        help="steps of D alone between panels (a) and (b)")
    parser.add_argument("--panel-c", type=int, default=150, help="the step shown in panel (c)")
    parser.add_argument("--d-steps", type=int, default=1, help="D steps per G step (k)")
    parser.add_argument("--width", type=int, default=32, help="hidden units of G and D")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="samples per step, real and fake")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step size of G and D")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights, the data and the noise")
    return parser


def main() -> None:
    args = build_parser().parse_args()
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

    paths = figure_paths(args, "gan_1d")
    for path in paths:
        draw(panels, grid, data_density, path)
    with minigen.no_grad():
        d_on_data = loop.discriminator(minigen.tensor(data.test)).sigmoid().numpy()[:, 0]
    samples = panels[-1]["samples"]
    print(f"wrote {', '.join(paths)} in {time.perf_counter() - started:.0f} s")
    near_data = np.abs(grid - centre) < 2 * std
    print(f"(b) after D alone: mean D(x) within 2 std of the data mean "
          f"{panels[1]['d'][near_data].mean():.3f}")
    # D near 1/2 alone can mislead (a D that has not learned yet says 1/2 too): the distance
    # of G's samples from the data distribution says whether G matches it.
    distance = ks_distance(samples, centre, std)
    print(f"(d) at the end: G's samples are at a Kolmogorov-Smirnov distance of {distance:.3f} "
          f"from the data (a perfect G: about {ks_noise(len(samples)):.3f} at {len(samples):,} "
          f"samples); G's mean {samples.mean():.3f} and std {samples.std():.3f} against the "
          f"data's {centre:g} and {std:g}; mean |D(x) - 1/2| over the data "
          f"{np.abs(d_on_data - 0.5).mean():.4f}")


if __name__ == "__main__":
    main()
