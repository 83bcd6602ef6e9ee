"""minigen.functional (import as F): every differentiable op under PyTorch's name.

This file only gathers; each op lives in the file of its family under minigen/ops.
"""
from minigen.ops.activations import (dropout, gelu, leaky_relu, log_softmax, relu, sigmoid, silu,
                                     softmax, softplus, tanh)
from minigen.ops.elementwise import (abs, clamp, cos, erf, exp, log, maximum, minimum, pow, sin,
                                     sqrt, where)
from minigen.ops.losses import binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss
from minigen.ops.matmul import linear, matmul
from minigen.ops.reduce import logsumexp, max, mean, min, std, sum, var
from minigen.ops.shape import (cat, chunk, expand, flatten, pad, permute, reshape, split, squeeze,
                               stack, transpose, unsqueeze)
from minigen.ops.bias_act import bias_act
from minigen.ops.conv import conv2d, conv_transpose2d
from minigen.ops.pool import avg_pool2d, interpolate, max_pool2d
from minigen.ops.norm import batch_norm, group_norm, layer_norm
