"""An MLP noise predictor for toy data (1D and 2D points), the U-Net's little sibling.

eps_theta(x_t, t): the sinusoidal timestep embedding (shared with the U-Net) goes through a
small MLP and is added to every hidden layer, so each layer knows how noisy its input is.
Small enough to train DDPM on the ring of 8 Gaussians in a minute on a CPU.
"""
from __future__ import annotations

from minigen import nn
from minigen import functional as F
from minigen.models.unet import timestep_embedding
from minigen.tensor import Tensor


class MLPDenoiser(nn.Module):
    """x_t (N, features), t int (N,) -> (N, features); `depth` SiLU layers of width `hidden`."""

    def __init__(self, features: int = 2, hidden: int = 128, depth: int = 3,
                 time_dim: int = 32, num_classes: int | None = None):
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPDenoiser needs depth >= 1, got {depth}")
        self.features, self.time_dim, self.num_classes = features, time_dim, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        if num_classes is not None:
            self.class_embedding = nn.Embedding(num_classes + 1, hidden)
        self.input = nn.Linear(features, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.output = nn.Linear(hidden, features)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"MLPDenoiser: expected points (N, {self.features}), got {x.shape}")
        embedding = self.time_mlp(timestep_embedding(t, self.time_dim))
        if self.num_classes is not None:
            if labels is None:
                labels = t * 0 + self.num_classes
            embedding = embedding + self.class_embedding(labels)
        elif labels is not None:
            raise ValueError("MLPDenoiser: labels were given to an unconditional model; build it "
                             "with num_classes=K to condition on classes")
        h = self.input(x)
        for layer in self.hidden:
            h = layer(F.silu(h + embedding))
        return self.output(F.silu(h))
