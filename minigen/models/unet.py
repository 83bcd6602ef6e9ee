"""The U-Net noise predictor of DDPM (Ho et al. 2020, Appendix B), sized for small images.

eps_theta(x_t, t[, label]): a sinusoidal embedding of t through an MLP (plus an optional
class embedding with a null class, for classifier-free guidance) is added inside every
residual block (GroupNorm, SiLU, 3x3 conv). Resolution halves by strided convs and doubles
by nearest upsampling + conv; skip connections join the two halves; self-attention runs at
the lowest resolution. The same class serves 8x8 digits and 28x28 / 32x32 images.
"""
from __future__ import annotations

import math

import numpy as np

import minigen
from minigen import backend, nn
from minigen import functional as F
from minigen.tensor import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, as in DDPM):
    t (N,) -> (N, dim) = [sin(t f_k), cos(t f_k)], f_k = max_period^(-k / (dim/2)), in float32."""
    if dim % 2:
        raise ValueError(f"timestep_embedding: dim must be even, got {dim}")
    xp = backend.array_module(t.data)
    half = dim // 2
    frequencies = xp.exp(-math.log(max_period) * xp.arange(half, dtype=np.float64) / half)
    angles = t.data.astype(np.float64)[:, None] * frequencies[None, :]
    return Tensor(xp.concatenate([xp.sin(angles), xp.cos(angles)], axis=1).astype(np.float32))


def _groups(channels: int, preferred: int = 8) -> int:
    """The largest group count <= preferred that divides channels (GroupNorm needs one)."""
    return max(g for g in range(1, preferred + 1) if channels % g == 0)


class ResidualBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(SiLU(emb)); h = conv(dropout(SiLU(GN(h)))); out = h + skip(x)."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float = 0.0):
        super().__init__()
        # GroupNorm then SiLU, as one layer: one fused pass over memory when fusion is on.
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels, activation="silu")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed_proj = nn.Linear(embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels, activation="silu")
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels \
            else nn.Identity()

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        """x (N, C_in, H, W), embedding (N, embed_dim) -> (N, C_out, H, W)."""
        h = self.conv1(self.norm1(x))                                        # SiLU(GN(x))
        h = h + self.embed_proj(F.silu(embedding)).reshape(h.shape[0], h.shape[1], 1, 1)
        h = self.conv2(self.dropout(self.norm2(h)))                          # SiLU(GN(h))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C, H, W) -> (N, C, H, W)."""
        N, C, H, W = x.shape
        tokens = self.norm(x).reshape(N, C, H * W).transpose(1, 2)          # (N, HW, C)
        query, key, value = self.qkv(tokens).chunk(3, dim=2)
        weights = F.softmax(query @ key.transpose(1, 2) * (1.0 / math.sqrt(C)), dim=2)
        out = self.proj(weights @ value)                                     # (N, HW, C)
        return x + out.transpose(1, 2).reshape(N, C, H, W)


class Downsample(nn.Module):
    """Halve H and W with a 3x3 conv of stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv (no checkerboard)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2))


class UNet(nn.Module):
    """eps_theta: x_t (N, C, H, W), t int (N,)[, labels int (N,)] -> (N, out_channels, H, W).

    base_channels * channel_mults[i] channels at level i (resolution H / 2^i), num_res_blocks
    residual blocks per level on the way down (one more on the way up, for the extra skip),
    attention at the lowest level. H and W must be divisible by 2^(levels - 1).
    num_classes: None for an unconditional model; otherwise labels 0..num_classes-1 and the
    null class num_classes (what `labels=None` means), for classifier-free guidance.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults=(1, 2),
                 num_res_blocks: int = 1, out_channels: int | None = None,
                 attention: bool = True, dropout: float = 0.0, num_classes: int | None = None):
        super().__init__()
        self.in_channels, self.base_channels = in_channels, base_channels
        self.channel_mults, self.num_res_blocks = tuple(channel_mults), num_res_blocks
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes
        embed_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, embed_dim), nn.SiLU(),
                                      nn.Linear(embed_dim, embed_dim))
        if num_classes is not None:
            self.class_embedding = nn.Embedding(num_classes + 1, embed_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        levels, lowest = len(self.channel_mults), len(self.channel_mults) - 1
        self.down, skip_channels, channels = nn.ModuleList(), [base_channels], base_channels
        for level, mult in enumerate(self.channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(ResidualBlock(channels, base_channels * mult, embed_dim, dropout))
                channels = base_channels * mult
                if attention and level == lowest:
                    self.down.append(SelfAttention(channels))
                skip_channels.append(channels)
            if level < lowest:
                self.down.append(Downsample(channels))
                skip_channels.append(channels)

        self.mid = nn.ModuleList([ResidualBlock(channels, channels, embed_dim, dropout)]
                                 + ([SelfAttention(channels)] if attention else [])
                                 + [ResidualBlock(channels, channels, embed_dim, dropout)])

        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                out = base_channels * self.channel_mults[level]
                self.up.append(ResidualBlock(channels + skip_channels.pop(), out, embed_dim, dropout))
                channels = out
                if attention and level == lowest:
                    self.up.append(SelfAttention(channels))
            if level > 0:
                self.up.append(Upsample(channels))

        self.norm_out = nn.GroupNorm(_groups(channels), channels, activation="silu")
        self.conv_out = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def embed(self, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The (N, 4 * base_channels) vector that conditions every residual block."""
        embedding = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.num_classes is not None:
            if labels is None:
                xp = backend.array_module(t.data)
                labels = Tensor(xp.full(t.shape, self.num_classes, dtype=np.int64))
            embedding = embedding + self.class_embedding(labels)
        elif labels is not None:
            raise ValueError("UNet: labels were given to an unconditional model; build it with "
                             "num_classes=K to condition on classes")
        return embedding

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"UNet: expected input (N, {self.in_channels}, H, W) with H and W "
                             f"divisible by {factor}, got shape {x.shape}")
        embedding = self.embed(t, labels)
        h = self.conv_in(x)
        skips = [h]
        for module in self.down:
            h = module(h, embedding) if isinstance(module, ResidualBlock) else module(h)
            if not isinstance(module, SelfAttention):
                skips.append(h)
            else:
                skips[-1] = h  # the skip leaves after the attention that follows its block
        for module in self.mid:
            h = module(h, embedding) if isinstance(module, ResidualBlock) else module(h)
        for module in self.up:
            if isinstance(module, ResidualBlock):
                h = module(minigen.cat([h, skips.pop()], dim=1), embedding)
            else:
                h = module(h)
        return self.conv_out(self.norm_out(h))                               # SiLU(GN(h))
