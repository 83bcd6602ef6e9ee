"""The reference kernels: plain NumPy, written to be obviously right, not fast.

Every convolution here is a loop over the kH * kW kernel offsets; at each offset the input
window is one strided slice of the padded input, and the channels are contracted with
np.einsum. The fast backends (cpu.py, cuda/) are tested against these functions, and these
are tested against torch.nn.functional and against each other (backward = adjoint of forward).
"""
from __future__ import annotations

import numpy as np

from .geometry import (Pair, check_conv2d, check_conv2d_grad_output, check_grad_output_4d,
                       check_pool2d, check_same_dtype, check_upsample, check_upsample_grad,
                       conv2d_forward_args)


def _window(padded: np.ndarray, offset: Pair, stride: Pair, out_hw: Pair) -> np.ndarray:
    """The (..., H_out, W_out) slice of `padded` that kernel offset `offset` (already
    multiplied by the dilation) sees: padded[..., offset + stride * output_index]."""
    (oh, ow), (sh, sw), (ho, wo) = offset, stride, out_hw
    return padded[..., oh:oh + sh * (ho - 1) + 1:sh, ow:ow + sw * (wo - 1) + 1:sw]


def _pad(x: np.ndarray, padding: Pair, value: float = 0.0) -> np.ndarray:
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, stride: Pair, padding: Pair,
                   dilation: Pair, groups: int, bias: np.ndarray | None = None) -> np.ndarray:
    """y[n, o] = sum_{c, i, j} weight[o, c, i, j] * x_padded[n, c, s*h + d*i, s*w + d*j]
    (+ bias[o]).

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW), bias: (C_out,) or None
    -> y: (N, C_out, H_out, W_out).
    """
    stride, padding, dilation, out_hw = conv2d_forward_args(x, weight, stride, padding,
                                                            dilation, groups, bias)
    n, c_in, _, _ = x.shape
    c_out, c_group, k_h, k_w = weight.shape
    x_padded = _pad(x, padding)
    x_groups = x_padded.reshape(n, groups, c_group, *x_padded.shape[2:])
    w_groups = weight.reshape(groups, c_out // groups, c_group, k_h, k_w)
    y = np.zeros((n, groups, c_out // groups, *out_hw), dtype=x.dtype)
    for i in range(k_h):
        for j in range(k_w):
            window = _window(x_groups, (i * dilation[0], j * dilation[1]), stride, out_hw)
            y += np.einsum("ngchw,goc->ngohw", window, w_groups[..., i, j], optimize=True)
    y = y.reshape(n, c_out, *out_hw)
    return y if bias is None else y + bias.reshape(1, c_out, 1, 1)


def conv2d_backward_bias(grad_output: np.ndarray) -> np.ndarray:
    """The gradient of conv2d_forward's bias: grad_output (N, C_out, H_out, W_out) summed over
    every axis but the channels, in float64 -> (C_out,) of grad_output's dtype."""
    check_grad_output_4d("conv2d_backward_bias", grad_output)
    return grad_output.sum(axis=(0, 2, 3), dtype=np.float64).astype(grad_output.dtype)


def conv2d_backward_input(grad_output: np.ndarray, weight: np.ndarray, input_shape,
                          stride: Pair, padding: Pair, dilation: Pair,
                          groups: int) -> np.ndarray:
    """Gradient of conv2d_forward with respect to x (also conv_transpose2d's forward).

    grad_output: (N, C_out, H_out, W_out) -> grad_x of `input_shape` (N, C_in, H, W). Each
    kernel offset scatters its share back to the input window it read in the forward.
    """
    check_same_dtype("conv2d_backward_input", grad_output, weight)
    out_hw = check_conv2d_grad_output(grad_output.shape, input_shape, weight.shape, stride,
                                      padding, dilation, groups)
    n, c_in, h, w = input_shape
    c_out, c_group, k_h, k_w = weight.shape
    (ph, pw) = padding
    grad_padded = np.zeros((n, groups, c_group, h + 2 * ph, w + 2 * pw), dtype=grad_output.dtype)
    grad_groups = grad_output.reshape(n, groups, c_out // groups, *out_hw)
    w_groups = weight.reshape(groups, c_out // groups, c_group, k_h, k_w)
    for i in range(k_h):
        for j in range(k_w):
            window = _window(grad_padded, (i * dilation[0], j * dilation[1]), stride, out_hw)
            window += np.einsum("ngohw,goc->ngchw", grad_groups, w_groups[..., i, j],
                                optimize=True)
    return grad_padded[..., ph:ph + h, pw:pw + w].reshape(input_shape).copy()


def conv2d_backward_weight(grad_output: np.ndarray, x: np.ndarray, weight_shape,
                           stride: Pair, padding: Pair, dilation: Pair,
                           groups: int) -> np.ndarray:
    """Gradient of conv2d_forward with respect to the weight.

    grad_output: (N, C_out, H_out, W_out), x: (N, C_in, H, W) -> (C_out, C_in/groups, kH, kW).
    """
    check_same_dtype("conv2d_backward_weight", grad_output, x)
    out_hw = check_conv2d_grad_output(grad_output.shape, x.shape, weight_shape, stride,
                                      padding, dilation, groups)
    n = x.shape[0]
    c_out, c_group, k_h, k_w = weight_shape
    x_padded = _pad(x, padding)
    x_groups = x_padded.reshape(n, groups, c_group, *x_padded.shape[2:])
    grad_groups = grad_output.reshape(n, groups, c_out // groups, *out_hw)
    grad_weight = np.zeros((groups, c_out // groups, c_group, k_h, k_w), dtype=x.dtype)
    for i in range(k_h):
        for j in range(k_w):
            window = _window(x_groups, (i * dilation[0], j * dilation[1]), stride, out_hw)
            grad_weight[..., i, j] = np.einsum("ngohw,ngchw->goc", grad_groups, window,
                                               optimize=True)
    return grad_weight.reshape(weight_shape)


def max_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair,
                       padding: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Max over each window of the -inf padded input, and where it was.

    x: (N, C, H, W) -> y: (N, C, H_out, W_out) and indices (int64, same shape): the flat
    position h * W + w of the maximum inside its (n, c) plane. Ties keep the first position in
    row-major window order and a NaN counts as the maximum, as in PyTorch.
    """
    out_hw = check_pool2d(x.shape, kernel_size, stride, padding)
    h, w = x.shape[2:]
    x_padded = _pad(x, padding, value=-np.inf)
    # The flat in-plane position of every padded pixel (padding gets positions that are
    # never chosen, since a window always holds at least one real pixel).
    rows = np.arange(-padding[0], h + padding[0])[:, None]
    cols = np.arange(-padding[1], w + padding[1])[None, :]
    positions = rows * w + cols
    # Start from each window's first real pixel (its top-left one inside the image), not from
    # -inf at index 0: a window that holds only -inf reports that pixel, as PyTorch does.
    first_h = np.maximum(np.arange(out_hw[0]) * stride[0] - padding[0], 0)
    first_w = np.maximum(np.arange(out_hw[1]) * stride[1] - padding[1], 0)
    y = x[:, :, first_h[:, None], first_w[None, :]]
    indices = np.broadcast_to(first_h[:, None] * w + first_w[None, :], y.shape).astype(np.int64)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            window = _window(x_padded, (i, j), stride, out_hw)
            better = (window > y) | np.isnan(window)
            y = np.where(better, window, y)
            indices = np.where(better, _window(positions, (i, j), stride, out_hw), indices)
    return y, indices


def max_pool2d_backward(grad_output: np.ndarray, indices: np.ndarray,
                        input_shape) -> np.ndarray:
    """Scatter-add each output gradient to the input position its maximum came from.

    grad_output, indices: (N, C, H_out, W_out) -> grad_x: `input_shape` (N, C, H, W).
    """
    n, c, h, w = input_shape
    grad_planes = np.zeros((n * c, h * w), dtype=grad_output.dtype)
    plane = np.arange(n * c)[:, None]
    np.add.at(grad_planes, (plane, indices.reshape(n * c, -1)), grad_output.reshape(n * c, -1))
    return grad_planes.reshape(input_shape)


def avg_pool2d_forward(x: np.ndarray, kernel_size: Pair, stride: Pair,
                       padding: Pair) -> np.ndarray:
    """Mean over each window of the zero-padded input, padding counted (count_include_pad).

    x: (N, C, H, W) -> y: (N, C, H_out, W_out).
    """
    out_hw = check_pool2d(x.shape, kernel_size, stride, padding)
    x_padded = _pad(x, padding)
    y = np.zeros((*x.shape[:2], *out_hw), dtype=x.dtype)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            y += _window(x_padded, (i, j), stride, out_hw)
    return y / (kernel_size[0] * kernel_size[1])


def avg_pool2d_backward(grad_output: np.ndarray, input_shape, kernel_size: Pair,
                        stride: Pair, padding: Pair) -> np.ndarray:
    """Spread each output gradient evenly over its window; the padding's share is dropped.

    grad_output: (N, C, H_out, W_out) -> grad_x: `input_shape` (N, C, H, W).
    """
    out_hw = check_pool2d(input_shape, kernel_size, stride, padding)
    n, c, h, w = input_shape
    ph, pw = padding
    grad_padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad_output.dtype)
    share = grad_output / (kernel_size[0] * kernel_size[1])
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            _window(grad_padded, (i, j), stride, out_hw)[...] += share
    return grad_padded[..., ph:ph + h, pw:pw + w].copy()


def upsample_nearest2d_forward(x: np.ndarray, scale: Pair) -> np.ndarray:
    """Repeat every pixel scale[0] times down and scale[1] times across.

    x: (N, C, H, W) -> (N, C, H * scale[0], W * scale[1]).
    """
    check_upsample(x.shape, scale)
    return x.repeat(scale[0], axis=2).repeat(scale[1], axis=3)


def upsample_nearest2d_backward(grad_output: np.ndarray, scale: Pair) -> np.ndarray:
    """Sum each scale[0] x scale[1] block of the output gradient into its source pixel.

    grad_output: (N, C, H * scale[0], W * scale[1]) -> (N, C, H, W).
    """
    n, c, h_out, w_out = grad_output.shape
    check_upsample_grad(grad_output.shape, scale)
    blocks = grad_output.reshape(n, c, h_out // scale[0], scale[0], w_out // scale[1], scale[1])
    return blocks.sum(axis=(3, 5))


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b, NumPy's broadcasting add."""
    return a + b


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b, NumPy's matmul: (..., n, k) @ (..., k, m) -> (..., n, m), stacks broadcast."""
    return np.matmul(a, b)


# ---------------------------------------------------------------------------------------
# Fused element-wise ops and parameter updates
# ---------------------------------------------------------------------------------------
# Activations of bias_act by name; alpha is leaky_relu's negative slope.
ACTIVATIONS = ("linear", "relu", "leaky_relu", "silu")


def check_activation(act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: act must be one of {', '.join(ACTIVATIONS)}, not {act!r}")


def _bias_view(bias: np.ndarray, ndim: int, dim: int) -> np.ndarray:
    """bias (C,) shaped to broadcast along axis `dim` of an ndim-d array."""
    shape = [1] * ndim
    shape[dim] = bias.shape[0]
    return bias.reshape(shape)


def bias_act_forward(x: np.ndarray, bias: np.ndarray | None, dim: int, act: str,
                     alpha: float) -> np.ndarray:
    """y = act(x + bias) with bias (C,) along axis `dim` of x (None: no bias).

    act: linear (identity), relu, leaky_relu (slope alpha below 0) or silu
    (z sigmoid(z), with sigmoid(z) = (1 + tanh(z / 2)) / 2, which never overflows).
    """
    check_activation(act)
    z = x if bias is None else x + _bias_view(bias, x.ndim, dim)
    if act == "relu":
        return np.maximum(z, 0)
    if act == "leaky_relu":
        return np.where(z > 0, z, z * alpha)
    if act == "silu":
        return z * ((np.tanh(z * 0.5) + 1) * 0.5)
    return z.copy() if bias is None else z


def bias_act_backward(grad_output: np.ndarray, x: np.ndarray, bias: np.ndarray | None,
                      dim: int, act: str, alpha: float):
    """Gradients of bias_act_forward: (grad_x like x, grad_bias (C,) or None without a bias).

    With z = x + bias: grad_z = grad_output * act'(z) (relu: z > 0; leaky_relu: 1 or alpha;
    silu: s (1 + z (1 - s)), s = sigmoid(z)); grad_x = grad_z; grad_bias = grad_z summed over
    every axis but `dim`.
    """
    check_activation(act)
    z = x if bias is None else x + _bias_view(bias, x.ndim, dim)
    if act == "relu":
        grad_z = np.where(z > 0, grad_output, 0).astype(grad_output.dtype)
    elif act == "leaky_relu":
        grad_z = np.where(z > 0, grad_output, grad_output * alpha).astype(grad_output.dtype)
    elif act == "silu":
        s = (np.tanh(z * 0.5) + 1) * 0.5
        grad_z = grad_output * s * (1 + z * (1 - s))
    else:
        grad_z = grad_output.copy()
    if bias is None:
        return grad_z, None
    axes = tuple(axis for axis in range(x.ndim) if axis != dim)
    return grad_z, grad_z.sum(axis=axes, dtype=np.float64).astype(bias.dtype)


def sgd_update(params: list, grads: list, momentum_buffers: list, first_steps: list,
               lr: float, momentum: float, dampening: float, weight_decay: float,
               nesterov: bool, maximize: bool) -> None:
    """One SGD step over every (param, grad) pair, in place, as torch.optim.SGD:

    g = grad + weight_decay p;  buf = g on a first step, else momentum buf + (1 - dampening) g;
    g = g + momentum buf (nesterov) or buf;  p = p - lr g.
    momentum_buffers: one array per param (ignored when momentum is 0); first_steps: one bool each.
    """
    for index, (param, grad) in enumerate(zip(params, grads)):
        grad = -grad if maximize else grad
        if weight_decay:
            grad = grad + weight_decay * param
        if momentum:
            buffer = momentum_buffers[index]
            if first_steps[index]:
                buffer[...] = grad
            else:
                buffer *= momentum
                buffer += (1 - dampening) * grad
            grad = grad + momentum * buffer if nesterov else buffer
        param -= lr * grad


def adam_update(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                max_exp_avg_sqs: list | None, steps: list, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, decoupled: bool, amsgrad: bool,
                maximize: bool) -> None:
    """One Adam (decoupled: AdamW) step over every parameter, in place, as torch.optim.Adam:

    p = p (1 - lr wd) (AdamW) or g = g + wd p (Adam);  m = m + (1 - beta1)(g - m);
    v = beta2 v + (1 - beta2) g^2;  (amsgrad: v_max = max(v_max, v), used for v)
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
    steps: each parameter's step count t, this step included.
    """
    for index, (param, grad) in enumerate(zip(params, grads)):
        grad = -grad if maximize else grad
        if weight_decay and decoupled:
            param *= 1 - lr * weight_decay
        elif weight_decay:
            grad = grad + weight_decay * param
        exp_avg, exp_avg_sq = exp_avgs[index], exp_avg_sqs[index]
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        second_moment = exp_avg_sq
        if amsgrad:
            np.maximum(max_exp_avg_sqs[index], exp_avg_sq, out=max_exp_avg_sqs[index])
            second_moment = max_exp_avg_sqs[index]
        step = steps[index]
        step_size = lr / (1 - beta1 ** step)
        denominator = np.sqrt(second_moment) / ((1 - beta2 ** step) ** 0.5) + eps
        param -= step_size * (exp_avg / denominator)


def ema_update(shadows: list, params: list, decay: float) -> None:
    """shadow = decay shadow + (1 - decay) param, written shadow -= (1 - decay)(shadow - param),
    in place for every pair."""
    for shadow, param in zip(shadows, params):
        shadow -= (1 - decay) * (shadow - param)


def grad_norm(grads: list, norm_type: float) -> np.ndarray:
    """The norm_type-norm of all gradients taken together, a 0-d float64 array
    (inf: the largest absolute value; 0 for an empty list)."""
    if not grads:
        return np.zeros((), dtype=np.float64)
    if np.isinf(norm_type):
        return np.max([np.abs(grad).max() if grad.size else 0.0 for grad in grads]
                      ).astype(np.float64)
    total = sum((np.abs(grad.astype(np.float64)) ** norm_type).sum() for grad in grads)
    return np.asarray(total ** (1.0 / norm_type), dtype=np.float64)


def scale_grads(grads: list, coefficient) -> list:
    """grad * coefficient for each gradient, as new arrays (a gradient array may be shared);
    the coefficient (a number or 0-d array) is cast to each gradient's dtype first."""
    return [grad * np.asarray(coefficient).astype(grad.dtype) for grad in grads]


# Fused normalisation and softmax: group norm (+ affine, + optional SiLU), batch norm and
# the last-axis softmax, each forward and backward. Inputs are (N, C, *) and are read as
# (N, C, S) with S the product of the trailing dims. Statistics are float64; outputs take the
# input's dtype. The fast backends (cpu_fused_norm.py, cuda/fused_norm.cu) must match these.
# ---------------------------------------------------------------------------------------
def _silu_derivative(z: np.ndarray) -> np.ndarray:
    """d/dz z * sigmoid(z) = s (1 + z (1 - s)), s = sigmoid(z)."""
    s = 1 / (1 + np.exp(-z))
    return s * (1 + z * (1 - s))


def _per_channel(vector, channels: int, fill: float) -> np.ndarray:
    """A (1, C, 1) float64 view of a per-channel vector, or of `fill` where it is None."""
    values = np.full(channels, fill) if vector is None else np.asarray(vector, np.float64)
    return values.reshape(1, channels, 1)


def group_norm_forward(x: np.ndarray, num_groups: int, weight, bias, eps: float,
                       silu: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = act(x_hat * weight + bias), x_hat normalised over each (sample, group), act = SiLU
    or the identity. x: (N, C, *); weight, bias: (C,) or None (ones, zeros).

    Returns y (the shape and dtype of x), mean and rstd = 1 / sqrt(var + eps): (N, G) float64.
    """
    n, c = x.shape[:2]
    grouped = x.reshape(n, num_groups, -1).astype(np.float64)
    mean = grouped.mean(axis=2)
    rstd = 1 / np.sqrt(grouped.var(axis=2) + eps)
    x_hat = ((grouped - mean[..., None]) * rstd[..., None]).reshape(n, c, -1)
    z = x_hat * _per_channel(weight, c, 1.0) + _per_channel(bias, c, 0.0)
    y = z / (1 + np.exp(-z)) if silu else z
    return y.reshape(x.shape).astype(x.dtype), mean, rstd


def group_norm_backward(grad_output: np.ndarray, x: np.ndarray, mean: np.ndarray,
                        rstd: np.ndarray, num_groups: int, weight, bias,
                        silu: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of group_norm_forward given its mean and rstd (N, G).

    With g the gradient at z = x_hat * weight + bias and g_hat = g * weight:
    grad_x = rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)), means per group;
    grad_weight = sum g * x_hat and grad_bias = sum g over (N, *), (C,) in the dtype of x (also
    where weight or bias is None: then they are the gradients of a weight of ones, a bias of zeros).
    """
    n, c = x.shape[:2]
    grouped = x.reshape(n, num_groups, -1).astype(np.float64)
    x_hat = ((grouped - mean[..., None]) * rstd[..., None]).reshape(n, c, -1)
    w = _per_channel(weight, c, 1.0)
    grad = grad_output.reshape(n, c, -1).astype(np.float64)
    if silu:
        grad = grad * _silu_derivative(x_hat * w + _per_channel(bias, c, 0.0))
    grad_weight, grad_bias = (grad * x_hat).sum(axis=(0, 2)), grad.sum(axis=(0, 2))
    grad_hat = (grad * w).reshape(n, num_groups, -1)
    x_hat = x_hat.reshape(n, num_groups, -1)
    grad_x = rstd[..., None] * (grad_hat - grad_hat.mean(axis=2, keepdims=True)
                                - x_hat * (grad_hat * x_hat).mean(axis=2, keepdims=True))
    return (grad_x.reshape(x.shape).astype(x.dtype), grad_weight.astype(x.dtype),
            grad_bias.astype(x.dtype))


def batch_norm_forward(x: np.ndarray, weight, bias, running_mean, running_var, training: bool,
                       momentum: float, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = x_hat * weight + bias with x_hat normalised per channel over (N, *).

    Training: the batch's mean and biased variance normalise, and running_mean / running_var
    (when not None) are updated in place as PyTorch does, with the unbiased variance:
    running = (1 - momentum) * running + momentum * batch. Otherwise the running statistics
    normalise. Returns y (shape and dtype of x), mean and rstd: (C,) float64.
    """
    n, c = x.shape[:2]
    planes = x.reshape(n, c, -1).astype(np.float64)
    if training:
        count = planes.shape[0] * planes.shape[2]
        mean, var = planes.mean(axis=(0, 2)), planes.var(axis=(0, 2))
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * count / (count - 1)
    else:
        mean, var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    rstd = 1 / np.sqrt(var + eps)
    x_hat = (planes - mean.reshape(1, c, 1)) * rstd.reshape(1, c, 1)
    y = x_hat * _per_channel(weight, c, 1.0) + _per_channel(bias, c, 0.0)
    return y.reshape(x.shape).astype(x.dtype), mean, rstd


def batch_norm_backward(grad_output: np.ndarray, x: np.ndarray, mean: np.ndarray,
                        rstd: np.ndarray, weight, training: bool
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of batch_norm_forward given its mean and rstd (C,).

    Training (batch statistics depend on x): grad_x = weight * rstd * (g - mean(g) - x_hat *
    mean(g * x_hat)), means per channel over (N, *); otherwise grad_x = g * weight * rstd.
    grad_weight = sum g * x_hat, grad_bias = sum g over (N, *), in the dtype of x.
    """
    n, c = x.shape[:2]
    planes = x.reshape(n, c, -1).astype(np.float64)
    x_hat = (planes - mean.reshape(1, c, 1)) * rstd.reshape(1, c, 1)
    grad = grad_output.reshape(n, c, -1).astype(np.float64)
    grad_weight, grad_bias = (grad * x_hat).sum(axis=(0, 2)), grad.sum(axis=(0, 2))
    scale = _per_channel(weight, c, 1.0) * rstd.reshape(1, c, 1)
    if training:
        count = planes.shape[0] * planes.shape[2]
        grad = grad - (grad_bias / count).reshape(1, c, 1) \
            - x_hat * (grad_weight / count).reshape(1, c, 1)
    grad_x = grad * scale
    return (grad_x.reshape(x.shape).astype(x.dtype), grad_weight.astype(x.dtype),
            grad_bias.astype(x.dtype))


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """y = exp(x - max) / sum exp(x - max) along the last axis; the shape and dtype of x."""
    shifted = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(x.dtype)


def softmax_backward(grad_output: np.ndarray, y: np.ndarray) -> np.ndarray:
    """grad_x = y * (g - sum(g * y)) along the last axis, y the softmax's output."""
    grad, out = grad_output.astype(np.float64), y.astype(np.float64)
    return (out * (grad - (grad * out).sum(axis=-1, keepdims=True))).astype(y.dtype)
