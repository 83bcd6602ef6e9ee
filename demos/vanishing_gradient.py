"""Why the non-saturating loss exists: with a well-trained discriminator, the minimax
generator loss log(1 - D(G(z))) gives G almost no gradient, while -log D(G(z)) still does.

The experiment of Arjovsky and Bottou (2017, Figure 2), on the digits DCGAN: G is trained
briefly and then frozen; D is trained alone against it, and every few D steps we measure the
norm of the generator's gradient under both losses, on the same noise. As D learns to reject
the fakes (D(G(z)) -> 0), the minimax gradient decays with D(G(z)) itself, since
d/dlogit log(1 - sigmoid(logit)) = -sigmoid(logit); the non-saturating one does not.

    python demos/vanishing_gradient.py [--d-steps 400] [--out runs/demos/vanishing_gradient]
"""
from __future__ import annotations

import argparse
import os
import time

import minigen
from minigen.data import Batcher, load_dataset
from minigen.gan import GANLoop, generator_loss, gradient_norm
from minigen.run import default_config
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "about 30 s"



def generator_gradient_norm(loop: GANLoop, z: minigen.Tensor, loss: str) -> float:
    """||d loss / d theta_G|| on the noise z, with nothing updated."""
    loop.generator.zero_grad()
    loop.discriminator.requires_grad_(False)
    generator_loss(loop.discriminator(loop.generator(z)), loss).backward()
    loop.discriminator.requires_grad_(True)
    norm = gradient_norm(loop.generator.parameters())
    loop.generator.zero_grad()
    return norm


def draw(steps, norms: dict, d_fake, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), dpi=80)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for (loss, values), colour in zip(norms.items(), ("tab:red", "tab:blue")):
        label = {"minimax": "minimax: log(1 - D(G(z)))",
                 "nonsaturating": "non-saturating: -log D(G(z))"}[loss]
        left.plot(steps, values, color=colour, linewidth=2, label=label)
    left.set_yscale("log")
    left.set_xlabel("steps of D trained alone (G frozen)")
    left.set_ylabel("norm of G's gradient")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(steps, d_fake, color="k", linewidth=2)
    right.set_yscale("log")
    right.set_xlabel("steps of D trained alone (G frozen)")
    right.set_ylabel("mean D(G(z))")
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "vanishing_gradient")
    parser.add_argument("--gan-steps", type=int, default=200,
                        help="steps of ordinary GAN training before G is frozen")
    parser.add_argument("--d-steps", type=int, default=400, help="steps of D alone")
    parser.add_argument("--measure-every", type=int, default=10,
                        help="D steps between measurements of G's gradient")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the weights, the batches and the noise")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    minigen.manual_seed(args.seed)
    data = load_dataset("digits")
    config = default_config(GANLoop, seed=args.seed)
    config.update(data_kind="images", data_shape=list(data.shape))
    loop = GANLoop(config, "cpu")
    batches = Batcher(data.train, config["batch_size"], seed=args.seed)
    for step in range(args.gan_steps):
        loop.train_step(minigen.tensor(batches.batch(step)), None, step)

    z = loop.noise(256)  # the same noise for every measurement
    steps, d_fake = [], []
    norms = {"minimax": [], "nonsaturating": []}
    for step in range(args.d_steps + 1):
        if step % args.measure_every == 0:
            steps.append(step)
            for loss in norms:
                norms[loss].append(generator_gradient_norm(loop, z, loss))
            with minigen.no_grad():
                d_fake.append(float(loop.discriminator(loop.generator(z)).sigmoid().mean().item()))
        with minigen.no_grad():
            fake = loop.generator(loop.noise(config["batch_size"]))
        loop.discriminator_step(minigen.tensor(batches.batch(args.gan_steps + step)), fake)

    paths = figure_paths(args, "vanishing_gradient")
    for path in paths:
        draw(steps, norms, d_fake, path)
    print(f"wrote {', '.join(paths)} in {time.perf_counter() - started:.0f} s")
    for index in (0, len(steps) // 2, -1):
        print(f"after {steps[index]:4d} D steps: D(G(z)) {d_fake[index]:.2e}   |grad G| minimax "
              f"{norms['minimax'][index]:.2e}   non-saturating {norms['nonsaturating'][index]:.2e}")
    ratio = norms["nonsaturating"][-1] / max(norms["minimax"][-1], 1e-30)
    print(f"with a well-trained D the non-saturating gradient is {ratio:.0f} times the minimax one")


if __name__ == "__main__":
    main()
