"""The reverse process: pure noise turned into digits, one small Gaussian step at a time.

Sampling runs the forward process backwards (DDPM Algorithm 2): from x_T ~ N(0, I), the
trained network predicts the noise in x_t, and x_{t-1} is drawn from the Gaussian
q(x_{t-1} | x_t, x0_hat). Each row of the strip is one sample, from pure noise (left) to the
digit (right); the ink gathers back into strokes. The printout follows the pixels' spread and
the network's guess x0_hat along the way: early guesses are blurry averages of digits, late
ones are sharp.

    python demos/reverse_process.py [--checkpoint runs/ddpm-digits/checkpoint.h5] [--rows 8]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minigen
from minigen import diffusion, viz

from _trained_ddpm import MAIN_JOB_CHECKPOINT, load_or_train
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "about 20 s; 6 min more to train the main job when runs/ddpm-digits has none"


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "reverse_process")
    parser.add_argument("--checkpoint", default=MAIN_JOB_CHECKPOINT,
                        help="a DDPM checkpoint (trained first with the main job's settings "
                             "if missing)")
    parser.add_argument("--rows", type=int, default=8, help="samples, one per row")
    parser.add_argument("--columns", type=int, default=11, help="states shown per sample")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the starting noise and every step's noise")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)
    loop = load_or_train(args.checkpoint)
    schedule, model = loop.schedule, loop.model

    # Wrap the network to record its x0 guesses along the way (same numbers as the sampler).
    guesses = {}

    def denoiser(x_t, t):
        output = model(x_t, t)
        step = int(t.numpy()[0])
        # at t = T-1 the guess is mostly amplified noise; from 0.9 T on it has a shape
        if step % (schedule.num_timesteps // 4) == 0 or step == 9 * schedule.num_timesteps // 10:
            x0_hat, _ = diffusion.x0_and_eps(schedule, loop.prediction, output, x_t, t)
            guesses[step] = x0_hat.numpy().clip(-1, 1)
        return output

    started = time.perf_counter()
    minigen.manual_seed(args.seed)
    model.eval()
    with loop.ema.average_parameters(model):
        samples, path = diffusion.ddpm_sample(
            denoiser, schedule, (args.rows, *loop.data_shape), prediction=loop.prediction,
            return_trajectory=True, trajectory_length=args.columns)
    seconds = time.perf_counter() - started

    states = np.stack([state for _, state in path], axis=1)  # (rows, columns, C, H, W)
    grid = np.clip(states.reshape(-1, *states.shape[2:]), -1, 1)
    paths = figure_paths(args, "reverse_process")
    for file in paths:
        viz.save_image_grid(grid, file, nrow=states.shape[1])
    viz.save_image_grid(np.concatenate([guesses[t] for t in sorted(guesses, reverse=True)]),
                        os.path.join(args.out, "x0_guesses.png"), nrow=args.rows)

    print(f"{schedule.num_timesteps} ancestral steps for {args.rows} samples in {seconds:.1f} s")
    print(f"{'t':>5} {'pixel std of x_t':>17}")
    for t, state in path:
        print(f"{t:5d} {state.std():17.3f}")
    print("x0 guesses (rows: t = " + ", ".join(str(t) for t in sorted(guesses, reverse=True))
          + f") in {os.path.join(args.out, 'x0_guesses.png')}")
    print(f"wrote {', '.join(paths)}: noise (std {path[0][1].std():.2f}) becomes digits "
          f"(std {samples.numpy().std():.2f}; real digits {loop_data_std():.2f})")


def loop_data_std() -> float:
    from minigen.data import load_dataset
    return float(load_dataset("digits").train.std())


if __name__ == "__main__":
    main()
