"""The named cases of the fused normalisation and softmax kernel tests, shared by the CPU tests
(tests/test_fused_norm.py) and the CUDA ones (tests/test_kernels_cuda_fused_norm.py), so that a
failure reads the same on either backend: odd sizes, batch 1, one channel per group, no
spatial dims, a mean far from zero, every weight / bias combination.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helpers import random_array


@dataclass(frozen=True)
class GroupNormCase:
    name: str
    shape: tuple
    groups: int
    silu: bool = False
    affine: str = "weight_and_bias"  # or "weight", "none"
    offset: float = 0.0  # added to x: a mean far from zero must not cancel the variance

    def arrays(self, rng: np.random.Generator, dtype):
        """x, weight, bias (None where the case has none) and a gradient for the output."""
        channels = self.shape[1]
        x = (random_array(rng, self.shape) * 2 + self.offset).astype(dtype)
        weight = random_array(rng, (channels,), dtype) if self.affine != "none" else None
        bias = random_array(rng, (channels,), dtype) if self.affine == "weight_and_bias" else None
        return x, weight, bias, random_array(rng, self.shape, dtype)


GROUP_NORM_CASES = [
    GroupNormCase("unet_block", (3, 8, 4, 4), 4, silu=True),
    GroupNormCase("odd_sizes", (2, 6, 3, 5), 3),
    GroupNormCase("odd_sizes_silu", (2, 6, 3, 5), 3, silu=True),
    GroupNormCase("batch_1_one_channel_per_group", (1, 5, 7, 3), 5, silu=True),
    GroupNormCase("one_group", (2, 3, 2, 9), 1),
    GroupNormCase("no_spatial_dims", (4, 6), 2, silu=True),
    GroupNormCase("three_dims", (2, 4, 11), 2),
    GroupNormCase("one_pixel", (3, 4, 1, 1), 2, silu=True),
    GroupNormCase("weight_only", (2, 4, 3, 3), 2, silu=True, affine="weight"),
    GroupNormCase("no_affine", (2, 4, 3, 3), 2, affine="none"),
    GroupNormCase("mean_far_from_zero", (2, 4, 5, 5), 2, silu=True, offset=1000.0),
]


@dataclass(frozen=True)
class BatchNormCase:
    name: str
    shape: tuple
    training: bool = True
    affine: bool = True
    running: bool = True  # running statistics tracked
    offset: float = 0.0
    momentum: float = 0.1

    def arrays(self, rng: np.random.Generator, dtype):
        """x, weight, bias, running_mean, running_var (None where absent), a gradient."""
        channels = self.shape[1]
        x = (random_array(rng, self.shape) * 2 + self.offset).astype(dtype)
        weight, bias = ((random_array(rng, (channels,), dtype) for _ in range(2))
                        if self.affine else (None, None))
        running_mean, running_var = (None, None)
        if self.running:
            running_mean = random_array(rng, (channels,), dtype)
            running_var = (np.abs(random_array(rng, (channels,))) + 0.5).astype(dtype)
        return x, weight, bias, running_mean, running_var, random_array(rng, self.shape, dtype)


BATCH_NORM_CASES = [
    BatchNormCase("dcgan_layer", (8, 16, 4, 4)),
    BatchNormCase("odd_sizes", (3, 5, 3, 7), momentum=0.3),
    BatchNormCase("batch_1", (1, 3, 5, 5)),
    BatchNormCase("one_channel", (4, 1, 3, 3)),
    BatchNormCase("no_spatial_dims", (6, 4)),
    BatchNormCase("three_dims", (3, 2, 7)),
    BatchNormCase("untracked", (4, 3, 2, 2), running=False),
    BatchNormCase("no_affine", (4, 3, 2, 2), affine=False),
    BatchNormCase("mean_far_from_zero", (4, 3, 5, 5), offset=1000.0),
    BatchNormCase("eval", (4, 3, 5, 5), training=False),
    BatchNormCase("eval_batch_1", (1, 3, 2, 3), training=False, affine=False),
]

# Softmax over the last axis: rows of 1, odd lengths, attention's (N, HW, HW), huge logits.
SOFTMAX_CASES = {
    "attention_4x4": ((3, 16, 16), 1.0),
    "odd_rows": ((5, 7), 1.0),
    "row_of_one": ((4, 1), 1.0),
    "one_row": ((1, 33), 1.0),
    "four_dims": ((2, 3, 2, 5), 1.0),
    "huge_logits": ((3, 9), 500.0),
}
