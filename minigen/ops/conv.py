"""Convolution ops: conv2d and conv_transpose2d, on the kernels of minigen.kernels.

Three linear maps do all the work: the convolution C(x, w), its adjoint in the input
(`conv2d_backward_input`, which is also conv_transpose2d) and its adjoint in the weight
(`conv2d_backward_weight`). Each is an op whose backward is built from the other two, so
gradients of any order go through a convolution (gradient penalties need the second). With
fusion on, a convolution with a bias is one op, Conv2dBias, whose kernel adds the bias itself.
"""
from __future__ import annotations

from minigen import kernels
from minigen.fusion import fusion_enabled
from minigen.ops.bias_act import bias_act
from minigen.ops.elementwise import sum_to
from minigen.tensor import Function, Tensor, is_grad_enabled


def pair(value) -> tuple:
    """3 -> (3, 3); (1, 2) stays."""
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value}")
    return value


class _ConvGeometry(Function):
    def __init__(self, stride, padding, dilation, groups):
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def geometry(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups


class Conv2d(_ConvGeometry):
    """y = C(x, w): x (N, C_in, H, W), w (C_out, C_in/groups, kH, kW)."""

    def forward(self, x, weight):
        return kernels.for_array(x).conv2d_forward(x, weight, *self.geometry())

    def backward(self, grad_output):
        x, weight = self.inputs[:2]
        grad_x = Conv2dBackwardInput(*self.geometry(), x.shape)(grad_output, weight) \
            if self.needs_grad[0] else None
        grad_w = Conv2dBackwardWeight(*self.geometry(), weight.shape)(grad_output, x) \
            if self.needs_grad[1] else None
        return grad_x, grad_w


class Conv2dBackwardInput(_ConvGeometry):
    """dx = C_x^T(g, w), the adjoint of the convolution in its input."""

    def __init__(self, stride, padding, dilation, groups, input_shape):
        super().__init__(stride, padding, dilation, groups)
        self.input_shape = tuple(input_shape)

    def forward(self, grad_output, weight):
        return kernels.for_array(grad_output).conv2d_backward_input(
            grad_output, weight, self.input_shape, *self.geometry())

    def backward(self, grad_grad):
        grad_output, weight = self.inputs
        # <gg, C_x^T(g, w)> = <C(gg, w), g>: linear in g, and in w through the weight adjoint.
        d_grad_output = Conv2d(*self.geometry())(grad_grad, weight) if self.needs_grad[0] else None
        d_weight = Conv2dBackwardWeight(*self.geometry(), weight.shape)(grad_output, grad_grad) \
            if self.needs_grad[1] else None
        return d_grad_output, d_weight


class Conv2dBackwardWeight(_ConvGeometry):
    """dw = C_w^T(g, x), the adjoint of the convolution in its weight."""

    def __init__(self, stride, padding, dilation, groups, weight_shape):
        super().__init__(stride, padding, dilation, groups)
        self.weight_shape = tuple(weight_shape)

    def forward(self, grad_output, x):
        return kernels.for_array(grad_output).conv2d_backward_weight(
            grad_output, x, self.weight_shape, *self.geometry())

    def backward(self, grad_grad):
        grad_output, x = self.inputs
        # <ww, C_w^T(g, x)> = <g, C(x, ww)>
        d_grad_output = Conv2d(*self.geometry())(x, grad_grad) if self.needs_grad[0] else None
        d_x = Conv2dBackwardInput(*self.geometry(), x.shape)(grad_output, grad_grad) \
            if self.needs_grad[1] else None
        return d_grad_output, d_x


class Conv2dBias(Conv2d):
    """y = C(x, w) + b, b (C_out,) along the channels: the bias added by the convolution's
    kernel, where a separate add would be one more pass over y. grad_b = g summed over every
    axis but the channels."""

    def forward(self, x, weight, bias):
        return kernels.for_array(x).conv2d_forward(x, weight, *self.geometry(), bias=bias)

    def backward(self, grad_output):
        grad_x, grad_w = super().backward(grad_output)
        if not self.needs_grad[2]:
            return grad_x, grad_w, None
        if not is_grad_enabled():  # no graph to build: the kernel's sum
            return grad_x, grad_w, Tensor(kernels.for_array(grad_output.data)
                                          .conv2d_backward_bias(grad_output.data))
        channels = grad_output.shape[1]
        return grad_x, grad_w, sum_to(grad_output, (1, channels, 1, 1)).reshape(channels)


def _add_bias(out: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return out
    _check_bias(bias, out.shape[1])
    return bias_act(out, bias, dim=1)


def _check_bias(bias: Tensor, channels: int) -> None:
    if bias.shape != (channels,):
        raise ValueError(f"bias has shape {bias.shape} but the output has {channels} channels")


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation, as PyTorch): x (N, C_in, H, W) -> (N, C_out, H', W')."""
    if isinstance(padding, str):
        raise ValueError("conv2d: give padding as numbers, e.g. padding=1 for a 3x3 'same' conv")
    geometry = (pair(stride), pair(padding), pair(dilation), int(groups))
    if bias is not None and fusion_enabled() and bias.dtype == x.dtype:
        _check_bias(bias, weight.shape[0])
        return Conv2dBias(*geometry)(x, weight, bias)
    return _add_bias(Conv2d(*geometry)(x, weight), bias)


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """Transposed convolution, the input-adjoint of conv2d.

    x (N, C_in, H, W), weight (C_in, C_out/groups, kH, kW) -> (N, C_out, H', W') with
    H' = (H - 1) stride - 2 padding + dilation (kH - 1) + output_padding + 1.
    """
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    output_padding = pair(output_padding)
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv_transpose2d wants a 4-d input and weight, got {x.shape} and {weight.shape}")
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"conv_transpose2d: input has {x.shape[1]} channels but weight expects "
                         f"{weight.shape[0]} (weight shape {weight.shape})")
    for axis in (0, 1):
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise ValueError(f"conv_transpose2d: output_padding {output_padding} must be smaller "
                             f"than the stride {stride} or the dilation {dilation}")
    out_hw = tuple((x.shape[2 + a] - 1) * stride[a] - 2 * padding[a]
                   + dilation[a] * (weight.shape[2 + a] - 1) + output_padding[a] + 1 for a in (0, 1))
    output_shape = (x.shape[0], weight.shape[1] * groups) + out_hw
    out = Conv2dBackwardInput(stride, padding, dilation, int(groups), output_shape)(x, weight)
    return _add_bias(out, bias)
