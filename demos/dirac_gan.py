"""Convergence failure: the Dirac GAN of Mescheder et al. (2018, "Which training methods for
GANs do actually converge?"), Figure 1, trained with minigen's autograd and optimizers.

The data are one point, x = 0; the generator is one point too, x = theta; the discriminator is
linear, D(x) = psi x. The only equilibrium is theta = psi = 0, and the GAN game's vector field
circles it: at (theta, psi) D's gradient pushes psi toward theta's side, G's pushes theta
against psi. Plain gradient descent never settles there. With simultaneous steps (both players
step from the same point) the trajectory spirals out; with alternating steps (D, then G
against the new D, as minigen.gan.GANLoop trains) it circles forever. The zero-centred R1
penalty (gamma/2 ||grad_x D(x_real)||^2 = gamma/2 psi^2 here) damps D where the data lie and
the trajectory spirals in; WGAN-GP's penalty, (||grad_x D|| - 1)^2 = (|psi| - 1)^2, keeps
|psi| near 1 instead of 0, and the generator keeps circling without converging.
Each uses minigen.gan's own losses and penalties on D(x) = psi x, and minigen.optim.SGD.
The figure shows each trajectory over the game's vector field; printed last: the distance
to the equilibrium after N steps for each.

    python demos/dirac_gan.py [--steps 1000] [--lr 0.1] [--r1 1.0] [--out DIR]
"""
from __future__ import annotations

import math
import os

import numpy as np

import minigen
from minigen.gan import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from minigen.nn import Parameter
from minigen.optim import SGD
from _demo import demo_parser, figure_paths

RUNTIME = "about 5 s"
START = (1.0, 1.0)  # (theta, psi): Figure 1's starting point
REAL = minigen.tensor(np.zeros((1, 1)))  # the data distribution: a Dirac at 0


def train(steps: int, lr: float, loss: str, simultaneous: bool, r1: float = 0.0,
          gp_weight: float = 0.0) -> np.ndarray:
    """The (theta, psi) trajectory, (steps + 1, 2), of the Dirac GAN under gradient descent on
    minigen.gan's `loss` (minimax: the paper's f(t) = -log(1 + e^-t); wgan-gp: f(t) = t)."""
    theta = Parameter(np.array([[START[0]]]))
    psi = Parameter(np.array([[START[1]]]))
    discriminator = lambda x: x * psi  # noqa: E731  (D(x) = psi x, a logit)
    g_optimizer, d_optimizer = SGD([theta], lr=lr), SGD([psi], lr=lr)

    def d_loss() -> minigen.Tensor:
        fake = theta.detach()
        value = discriminator_loss(discriminator(REAL), discriminator(fake), loss)
        if r1:
            value = value + (r1 / 2) * r1_penalty(discriminator, REAL)
        if gp_weight:
            value = value + gp_weight * gradient_penalty(discriminator, REAL, fake)
        return value

    def g_loss() -> minigen.Tensor:
        return generator_loss(discriminator(theta), loss)

    path = [(theta.item(), psi.item())]
    for _ in range(steps):
        d_optimizer.zero_grad()
        g_optimizer.zero_grad()
        if simultaneous:  # both gradients at the same (theta, psi), then both steps
            d_loss().backward()
            d_gradient, psi.grad = psi.grad, None
            g_loss().backward()          # reaches psi too: D keeps its own gradient only
            psi.grad = d_gradient
            d_optimizer.step()
            g_optimizer.step()
        else:             # D steps first; G then answers the updated D
            d_loss().backward()
            d_optimizer.step()
            g_optimizer.zero_grad()
            g_loss().backward()
            g_optimizer.step()
        path.append((theta.item(), psi.item()))
    return np.array(path)


def vector_field(loss: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(-dL_G/dtheta, -dL_D/dpsi) of the unregularized game on a grid of (theta, psi)."""
    theta, psi = np.meshgrid(grid, grid)
    if loss == "minimax":  # L = f(psi theta), f'(t) = sigmoid(-t): G descends, D ascends
        slope = 1 / (1 + np.exp(psi * theta))
    else:
        slope = np.ones_like(theta)
    return -psi * slope, theta * slope


def draw(runs: list, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.3 * len(runs), 3.6), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(runs))
    grid = np.linspace(-2.2, 2.2, 15)
    for axis, (label, loss, trajectory, _) in zip(axes, runs):
        u, v = vector_field(loss, grid)
        axis.quiver(grid, grid, u, v, color="0.6", width=0.004)
        axis.plot(trajectory[:, 0], trajectory[:, 1], color="tab:blue", linewidth=1.0)
        axis.plot(*trajectory[0], "o", color="tab:green", markersize=5)
        axis.plot(*trajectory[-1], "o", color="tab:red", markersize=5)
        axis.plot(0, 0, "k*", markersize=9)
        axis.set_xlim(-2.2, 2.2)
        axis.set_ylim(-2.2, 2.2)
        axis.set_aspect("equal")
        axis.set_xlabel("theta (generator)")
        axis.set_title(label, fontsize=10)
    axes[0].set_ylabel("psi (discriminator)")
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.9, wspace=0.25)
    figure.savefig(path)


def build_parser():
    parser = demo_parser(__doc__, "dirac_gan")
    parser.add_argument("--steps", type=int, default=1000, help="gradient steps of each run")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD step size of G and D")
    parser.add_argument("--r1", type=float, default=1.0, help="gamma of the R1 run")
    parser.add_argument("--gp-weight", type=float, default=1.0, help="lambda of the WGAN-GP run")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.out, exist_ok=True)
    settings = [("simultaneous GD", "minimax", dict(simultaneous=True)),
                ("alternating GD", "minimax", dict(simultaneous=False)),
                (f"alternating + R1 (gamma {args.r1:g})", "minimax",
                 dict(simultaneous=False, r1=args.r1)),
                (f"WGAN-GP (lambda {args.gp_weight:g}), alternating", "wgan-gp",
                 dict(simultaneous=False, gp_weight=args.gp_weight))]
    runs = []
    for label, loss, options in settings:
        trajectory = train(args.steps, args.lr, loss, **options)
        distances = np.hypot(trajectory[:, 0], trajectory[:, 1])
        runs.append((label, loss, trajectory, distances))
    paths = figure_paths(args, "dirac_gan")
    for path in paths:
        draw(runs, path)
    print(f"wrote {', '.join(paths)}")
    start = math.hypot(*START)
    print(f"distance of (theta, psi) to the equilibrium (0, 0), from {start:.3f} at the start, "
          f"after {args.steps} steps of SGD with lr {args.lr:g}:")
    for label, _, _, distances in runs:
        late = distances[len(distances) // 2:]
        print(f"  {label:>34}: {distances[-1]:8.4f}   (over the second half: "
              f"{late.min():.4f} to {late.max():.4f})")


if __name__ == "__main__":
    main()
