"""minigen: a generative-modelling engine from scratch (autograd, conv kernels, GAN, DDPM).

The public surface follows PyTorch's names: `minigen.Tensor`, creation functions,
`minigen.functional` (import as F), `minigen.nn`, `minigen.optim`, checkpoints.
"""
__version__ = "0.1.0"

from minigen.backend import cuda_available, get_rng_state, manual_seed, set_rng_state
from minigen.tensor import Function, Tensor, enable_grad, grad, is_grad_enabled, no_grad, set_grad_enabled
from minigen.creation import (arange, bool_, float32, float64, full, int32, int64, ones, ones_like,
                              rand, rand_like, randint, randn, randn_like, tensor, zeros, zeros_like)
from minigen.ops.elementwise import where
from minigen.ops.shape import cat, stack
from minigen.gradcheck import GradcheckError, gradcheck, gradgradcheck
from minigen.fusion import fusion, fusion_enabled, set_fusion
from minigen import functional
from minigen.checkpoint import CheckpointError, inspect_checkpoint, load_checkpoint, save_checkpoint
from minigen import nn, optim
