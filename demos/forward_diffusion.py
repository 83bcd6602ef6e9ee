"""The forward process: a digit dissolving into noise, like drops of ink spreading through a
bottle of water.

One 8x8 digit is pushed through the Markov chain of DDPM one step at a time,
x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, and drawn at t = 0, 50, 100, ..., 1000,
under the linear schedule (top row) and the cosine one (bottom row). Each step adds a drop
of noise; after a few hundred the strokes are gone and only Gaussian noise is left. The second
figure plots the signal-to-noise ratio alpha_bar / (1 - alpha_bar) of both schedules against
t: the cosine schedule keeps the signal longer and destroys it more gently at the end.

    python demos/forward_diffusion.py [--digit 3] [--every 50] [--out runs/demos/forward_diffusion]
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np

import minigen
from minigen import viz
from minigen.data import load_dataset
from minigen.diffusion import SCHEDULES, NoiseSchedule
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "about 10 s"


def diffuse_step_by_step(x0: np.ndarray, schedule: NoiseSchedule, every: int, seed: int) -> list:
    """x_0 and then x_t after every `every` steps of q(x_t | x_{t-1}) (DDPM Eq. 2)."""
    minigen.manual_seed(seed)
    x, frames = minigen.tensor(x0), [x0]
    for t in range(1, schedule.num_timesteps + 1):
        beta = float(schedule.betas[t - 1])
        x = x * math.sqrt(1 - beta) + minigen.randn(*x.shape) * math.sqrt(beta)
        if t % every == 0:
            frames.append(x.numpy())
    return frames


def plot_snr(schedules: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.6), dpi=90)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for name, schedule in schedules.items():
        steps = np.arange(1, schedule.num_timesteps + 1)
        ax.plot(steps, 10 * np.log10(schedule.snr()), label=name)
    ax.axhline(0, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("t")
    ax.set_ylabel("SNR = alpha_bar / (1 - alpha_bar)  [dB]")
    ax.set_title("signal-to-noise ratio of the forward process")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "forward_diffusion")
    parser.add_argument("--digit", type=int, default=3, help="which class to show (0-9)")
    parser.add_argument("--every", type=int, default=50, help="steps between frames")
    parser.add_argument("--seed", type=int, default=0, help="seeds the added noise")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)

    data = load_dataset("digits")
    x0 = data.train[np.flatnonzero(data.train_labels == args.digit)[0]][None]  # (1, 1, 8, 8)
    schedules = {name: NoiseSchedule(name) for name in SCHEDULES}
    rows = [diffuse_step_by_step(x0, schedule, args.every, args.seed)
            for schedule in schedules.values()]
    frames = np.concatenate([np.concatenate(row) for row in rows])
    paths = figure_paths(args, "forward_diffusion")
    for path in paths:
        viz.save_image_grid(np.clip(frames, -1, 1), path, nrow=len(rows[0]))
    plot_snr(schedules, os.path.join(args.out, "snr.png"))

    print(f"digit {args.digit}, one row per schedule ({', '.join(schedules)}), frames at "
          f"t = 0, {args.every}, ..., {schedules['linear'].num_timesteps}")
    print(f"{'t':>5} " + " ".join(f"{name + ' alpha_bar':>17} {name + ' SNR dB':>14}"
                                  for name in schedules))
    for t in range(args.every, schedules["linear"].num_timesteps + 1, args.every * 2):
        cells = [f"{s.alpha_bar[t - 1]:17.4f} {10 * math.log10(s.snr()[t - 1]):14.1f}"
                 for s in schedules.values()]
        print(f"{t:5d} " + " ".join(cells))
    print(f"wrote {', '.join(paths)} and {os.path.join(args.out, 'snr.png')}")
    halves = {name: int(np.argmax(s.snr() < 1)) + 1 for name, s in schedules.items()}
    print("signal and noise are equal (SNR = 1) at " + ", ".join(
        f"t = {t} ({name})" for name, t in halves.items()) + "; by t = 1000 the digit is gone")


if __name__ == "__main__":
    main()
