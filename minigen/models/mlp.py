"""Multi-layer perceptrons for the GANs on toy data: a generator from noise to points and a
discriminator from points to one logit.

Both are plain stacks of Linear layers, small enough to train in seconds on a CPU: the 1D
Gaussian of the original GAN figure and the 2D mixtures of the mode-collapse experiments.
"""
from __future__ import annotations

from minigen import nn
from minigen.tensor import Tensor


def _stack(in_features: int, hidden: int, depth: int, out_features: int, activation) -> list:
    """Linear(in, hidden), act, (Linear(hidden, hidden), act) * (depth - 1), Linear(hidden, out)."""
    if depth < 1 or hidden < 1:
        raise ValueError(f"an MLP needs depth >= 1 and hidden >= 1, got depth={depth}, "
                         f"hidden={hidden}")
    layers, width = [], in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return layers


class MLPGenerator(nn.Module):
    """G: z (N, latent_dim) -> x (N, out_features), ReLU hidden layers, linear output."""

    def __init__(self, latent_dim: int, out_features: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.latent_dim, self.out_features = latent_dim, out_features
        self.net = nn.Sequential(*_stack(latent_dim, hidden, depth, out_features, nn.ReLU))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """D: x (N, in_features) -> logit (N, 1), LeakyReLU(0.2) hidden layers."""

    def __init__(self, in_features: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.in_features = in_features
        self.net = nn.Sequential(*_stack(in_features, hidden, depth, 1,
                                         lambda: nn.LeakyReLU(0.2)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
