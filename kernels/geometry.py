"""Shape arithmetic and argument checks shared by every kernel backend.

The output-size formulas are PyTorch's (floor mode). Each backend calls these checks first,
so a wrong shape fails with the same message whichever backend runs.
"""
from __future__ import annotations

Pair = tuple[int, int]


def as_pairs(*pairs) -> tuple:
    """Each argument as a pair of Python ints (so Numba compiles one signature for all)."""
    return tuple((int(pair[0]), int(pair[1])) for pair in pairs)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Length of a conv or pool output along one axis: floor((L + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_hw(input_hw: Pair, kernel: Pair, stride: Pair, padding: Pair,
              dilation: Pair = (1, 1)) -> Pair:
    """(H_out, W_out) of a conv or pool; fails when the window does not fit."""
    sizes = tuple(output_size(input_hw[a], kernel[a], stride[a], padding[a], dilation[a])
                  for a in (0, 1))
    if min(sizes) < 1:
        raise ValueError(f"input of size {tuple(input_hw)} is too small for kernel {kernel} "
                         f"with stride {stride}, padding {padding}, dilation {dilation}: "
                         f"the output would be {sizes}; pad the input or use a smaller kernel")
    return sizes


def _check_positive(name: str, pair: Pair, minimum: int) -> None:
    if len(pair) != 2 or min(pair) < minimum:
        raise ValueError(f"{name} must be a pair of ints >= {minimum}, got {pair}")


def check_conv2d(input_shape, weight_shape, stride: Pair, padding: Pair, dilation: Pair,
                 groups: int) -> Pair:
    """Validate a conv2d call (NCHW input, weight (C_out, C_in/groups, kH, kW));
    return (H_out, W_out)."""
    _check_positive("stride", stride, 1)
    _check_positive("dilation", dilation, 1)
    _check_positive("padding", padding, 0)
    if len(input_shape) != 4 or len(weight_shape) != 4:
        raise ValueError(f"conv2d wants a 4-d NCHW input and a 4-d weight, got input shape "
                         f"{tuple(input_shape)} and weight shape {tuple(weight_shape)}")
    channels, out_channels = input_shape[1], weight_shape[0]
    if groups < 1 or channels % groups or out_channels % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the input channels "
                         f"({channels}) and the output channels ({out_channels})")
    if weight_shape[1] * groups != channels:
        raise ValueError(f"conv2d: input has {channels} channels but weight expects "
                         f"{weight_shape[1] * groups} (weight shape {tuple(weight_shape)}, "
                         f"groups={groups})")
    return output_hw(input_shape[2:], weight_shape[2:], stride, padding, dilation)


def check_conv2d_grad_output(grad_output_shape, input_shape, weight_shape, stride: Pair,
                             padding: Pair, dilation: Pair, groups: int) -> Pair:
    """Validate a conv2d backward call: grad_output must have the forward's output shape."""
    out_hw = check_conv2d(input_shape, weight_shape, stride, padding, dilation, groups)
    expected = (input_shape[0], weight_shape[0], *out_hw)
    if tuple(grad_output_shape) != expected:
        raise ValueError(f"conv2d backward: grad_output has shape {tuple(grad_output_shape)} but "
                         f"an input of shape {tuple(input_shape)} with weight "
                         f"{tuple(weight_shape)} gives outputs of shape {expected}; for "
                         f"conv_transpose2d, output_padding must be smaller than the stride")
    return out_hw


def conv2d_forward_args(x, weight, stride, padding, dilation, groups: int, bias=None):
    """Check a backend's conv2d_forward call; return (stride, padding, dilation, out_hw) as
    pairs. bias: None or (C_out,) of the input's dtype."""
    check_same_dtype("conv2d", x, weight)
    if bias is not None:
        check_same_dtype("conv2d", x, bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"conv2d: bias has shape {tuple(bias.shape)} but the weight "
                             f"{tuple(weight.shape)} gives {weight.shape[0]} output channels")
    stride, padding, dilation = as_pairs(stride, padding, dilation)
    out_hw = check_conv2d(x.shape, weight.shape, stride, padding, dilation, groups)
    return stride, padding, dilation, out_hw


def _conv2d_backward_args(name: str, grad_output, other, input_shape, weight_shape, stride,
                          padding, dilation, groups: int):
    check_same_dtype(name, grad_output, other)
    stride, padding, dilation = as_pairs(stride, padding, dilation)
    out_hw = check_conv2d_grad_output(grad_output.shape, input_shape, weight_shape, stride,
                                      padding, dilation, groups)
    return stride, padding, dilation, out_hw


def conv2d_backward_input_args(grad_output, weight, input_shape, stride, padding, dilation,
                               groups: int):
    """Check a conv2d_backward_input call; return (stride, padding, dilation, input_shape,
    out_hw), the shape as a tuple of ints."""
    input_shape = tuple(int(size) for size in input_shape)
    stride, padding, dilation, out_hw = _conv2d_backward_args(
        "conv2d_backward_input", grad_output, weight, input_shape, weight.shape, stride,
        padding, dilation, groups)
    return stride, padding, dilation, input_shape, out_hw


def conv2d_backward_weight_args(grad_output, x, weight_shape, stride, padding, dilation,
                                groups: int):
    """Check a conv2d_backward_weight call; return (stride, padding, dilation, weight_shape,
    out_hw), the shape as a tuple of ints."""
    weight_shape = tuple(int(size) for size in weight_shape)
    stride, padding, dilation, out_hw = _conv2d_backward_args(
        "conv2d_backward_weight", grad_output, x, x.shape, weight_shape, stride, padding,
        dilation, groups)
    return stride, padding, dilation, weight_shape, out_hw


def check_pool2d(input_shape, kernel_size: Pair, stride: Pair, padding: Pair) -> Pair:
    """Validate a pooling call (PyTorch: padding at most half the kernel); return (H_out, W_out)."""
    _check_positive("kernel_size", kernel_size, 1)
    _check_positive("stride", stride, 1)
    _check_positive("padding", padding, 0)
    if len(input_shape) != 4:
        raise ValueError(f"pool2d wants a 4-d NCHW input, got shape {tuple(input_shape)}")
    if any(2 * padding[a] > kernel_size[a] for a in (0, 1)):
        raise ValueError(f"pool2d: padding {padding} must be at most half of kernel_size "
                         f"{kernel_size}")
    return output_hw(input_shape[2:], kernel_size, stride, padding)


def check_upsample(input_shape, scale: Pair) -> None:
    """Nearest upsampling wants a 4-d NCHW input and a pair of positive integer factors."""
    _check_positive("scale", scale, 1)
    if len(input_shape) != 4:
        raise ValueError(f"upsample_nearest2d wants a 4-d NCHW input, got shape "
                         f"{tuple(input_shape)}")


def check_upsample_grad(grad_output_shape, scale: Pair) -> None:
    """An upsampled gradient's height and width must be whole multiples of the scale."""
    check_upsample(grad_output_shape, scale)
    if grad_output_shape[2] % scale[0] or grad_output_shape[3] % scale[1]:
        raise ValueError(f"upsample_nearest2d backward: grad_output shape "
                         f"{tuple(grad_output_shape)} is not a whole multiple of scale {scale}")


def check_grad_output_4d(name: str, grad_output) -> None:
    if grad_output.ndim != 4:
        raise ValueError(f"{name}: grad_output must be (N, C, H, W), got shape "
                         f"{tuple(grad_output.shape)}")


def check_same_dtype(name: str, *arrays) -> None:
    dtypes = {array.dtype for array in arrays}
    if len(dtypes) > 1:
        raise TypeError(f"{name}: arrays have different dtypes {sorted(map(str, dtypes))}; "
                        f"cast them to one dtype first")
