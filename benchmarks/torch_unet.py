"""A PyTorch twin of minigen.models.unet.UNet: the same layers under the same names, so that a
minigen state dict loads into it by name. The benchmark times the two side by side and the
tests check that both compute the same function."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    angles = t.to(torch.float64)[:, None] * frequencies.to(t.device)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(torch.float32)


def _groups(channels: int, preferred: int = 8) -> int:
    return max(g for g in range(1, preferred + 1) if channels % g == 0)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels, embed_dim, dropout=0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embed_proj = nn.Linear(embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels \
            else nn.Identity()

    def forward(self, x, embedding):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embed_proj(F.silu(embedding))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        N, C, H, W = x.shape
        tokens = self.norm(x).reshape(N, C, H * W).transpose(1, 2)
        query, key, value = self.qkv(tokens).chunk(3, dim=2)
        weights = torch.softmax(query @ key.transpose(1, 2) * (1.0 / math.sqrt(C)), dim=2)
        out = self.proj(weights @ value)
        return x + out.transpose(1, 2).reshape(N, C, H, W)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """Constructor and forward as minigen.models.unet.UNet."""

    def __init__(self, in_channels=1, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                 out_channels=None, attention=True, dropout=0.0, num_classes=None):
        super().__init__()
        self.base_channels, self.channel_mults = base_channels, tuple(channel_mults)
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
        self.norm_out = nn.GroupNorm(_groups(channels), channels)
        self.conv_out = nn.Conv2d(channels, out_channels or in_channels, 3, padding=1)

    def forward(self, x, t, labels=None):
        embedding = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.num_classes is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes)
            embedding = embedding + self.class_embedding(labels)
        h = self.conv_in(x)
        skips = [h]
        for module in self.down:
            h = module(h, embedding) if isinstance(module, ResidualBlock) else module(h)
            if isinstance(module, SelfAttention):
                skips[-1] = h
            else:
                skips.append(h)
        for module in self.mid:
            h = module(h, embedding) if isinstance(module, ResidualBlock) else module(h)
        for module in self.up:
            if isinstance(module, ResidualBlock):
                h = module(torch.cat([h, skips.pop()], dim=1), embedding)
            else:
                h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def from_minigen(model) -> UNet:
    """A twin of a minigen UNet with the same architecture and a copy of its weights."""
    twin = UNet(model.in_channels, model.base_channels, model.channel_mults, model.num_res_blocks,
                model.out_channels, any(type(m).__name__ == "SelfAttention" for m in model.modules()),
                0.0, model.num_classes)
    state = {name: torch.from_numpy(tensor.numpy().copy()) for name, tensor in model.state_dict().items()}
    twin.load_state_dict(state)
    return twin
