"""The CUDA kernels: CUDA C (the .cu files beside this one) compiled through CuPy, cuBLAS GEMMs.

Convolution is im2col + GEMM (kernels/gemm_conv.py) with im2col.cu's copy kernels and
cupy.matmul (cuBLAS); pooling (pool.cu) and upsampling (upsample.cu) run one thread per
element, and random.cu draws the default generator's numbers (Philox, counter-based). The
fused kernels of fused.cu (bias + activation, the optimizer, EMA and clipping updates) have
their glue in fused.py; the fused group norm, batch norm and softmax (fused_norm.cu, glue in
fused_norm.py) run one block per normalised slice; both are exported from here. Each .cu file is
compiled on first use (CuPy caches the binary on disk); _KERNELS lists every .cu file and its
kernels, which the tests compile with NVRTC and run on CPU threads (tests/cuda_on_cpu/). This
module imports CuPy, so the dispatch in kernels/__init__.py imports it only when it meets a
CuPy array.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cupy
import numpy as np

from .. import gemm_conv
from ..geometry import (Pair, as_pairs, check_grad_output_4d, check_pool2d, check_upsample,
                        check_upsample_grad, conv2d_forward_args)

THREADS_PER_BLOCK = 256
# The kernels loop with a grid stride, so capping the grid loses nothing; this cap is several
# full waves of blocks on any current GPU.
MAX_BLOCKS = 8192
# Columns of a chunk of samples take at most this many bytes of GPU memory.
COLUMNS_BUDGET_BYTES = 256 * 2**20

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_KERNELS = {
    "im2col.cu": ("im2col", "col2im"),
    "pool.cu": ("max_pool_forward", "max_pool_backward", "avg_pool_forward",
                "avg_pool_backward"),
    "upsample.cu": ("upsample_nearest_forward", "upsample_nearest_backward"),
    "random.cu": ("random_uniform", "random_normal"),
    "fused.cu": ("bias_act_forward", "bias_act_backward_input", "bias_grad", "sgd_update",
                 "adam_update", "ema_update", "norm_partials", "scale_into"),
    "fused_norm.cu": ("group_norm_forward", "group_norm_backward", "group_norm_param_grads",
                      "batch_norm_forward", "batch_norm_backward", "softmax_forward",
                      "softmax_backward"),
}


# Options for NVRTC; CuPy adds -ftz=true, the architecture and --device-as-default-execution-space.
COMPILE_OPTIONS = ("--std=c++14",)


def _source(filename: str) -> str:
    return (Path(__file__).parent / filename).read_text()


def _name_expressions(filename: str) -> list[str]:
    """The kernels of one .cu file, each instantiated for float and double (a name that already
    has its template arguments, `kernel<float, 4>`, is taken as it is)."""
    return [kernel if "<" in kernel else f"{kernel}<{c_type}>" for kernel in _KERNELS[filename]
            for c_type in (_C_TYPES.values() if "<" not in kernel else [None])]


@functools.lru_cache(maxsize=None)
def _module(filename: str) -> cupy.RawModule:
    """One .cu file compiled with every kernel instantiated for float and double."""
    return cupy.RawModule(code=_source(filename), options=COMPILE_OPTIONS,
                          name_expressions=_name_expressions(filename))


def _check_dtype(function: str, *arrays) -> None:
    """One rule for every kernel: float32 or float64, the types the .cu files are built for."""
    for array in arrays:
        if np.dtype(array.dtype) not in _C_TYPES:
            raise TypeError(f"CUDA kernel {function}: dtype {np.dtype(array.dtype)} is not "
                            f"supported; use float32 or float64")


def _c_type(kernel: str, dtype) -> str:
    """The C type of `kernel<T>` for `dtype`: float or double, else a TypeError."""
    c_type = _C_TYPES.get(np.dtype(dtype))
    if c_type is None:
        raise TypeError(f"CUDA kernel {kernel}: dtype {np.dtype(dtype)} is not supported; use "
                        f"float32 or float64")
    return c_type


def _kernel(filename: str, kernel: str, dtype):
    """`kernel<T>` of `filename` for `dtype` (compiling the file on first use)."""
    return _module(filename).get_function(f"{kernel}<{_c_type(kernel, dtype)}>")


def _launch(filename: str, kernel: str, dtype, total: int, *args) -> None:
    """Run `kernel<T>` from `filename` over `total` elements; ints are passed as long long."""
    _c_type(kernel, dtype)  # a wrong dtype is refused even when there is nothing to do
    if total == 0:
        return
    function = _kernel(filename, kernel, dtype)
    blocks = min(MAX_BLOCKS, -(-total // THREADS_PER_BLOCK))
    function((blocks,), (THREADS_PER_BLOCK,),
             tuple(np.int64(arg) if isinstance(arg, (int, np.integer)) else arg for arg in args))


# ---------------------------------------------------------------------------------------
# Convolution: im2col + GEMM (gemm_conv.py)
# ---------------------------------------------------------------------------------------
def _im2col(x, n_start, cols, kernel, stride, padding, dilation, out_hw):
    """Fill cols (C*kH*kW, B*H_out*W_out) from samples n_start.. of x (contiguous NCHW)."""
    _, channels, height, width = x.shape
    batch = cols.shape[1] // (out_hw[0] * out_hw[1])
    _launch("im2col.cu", "im2col", x.dtype, cols.size, x, cols, n_start, channels, height,
            width, *kernel, *stride, *padding, *dilation, *out_hw, batch)
    return cols


def _col2im(cols, grad_x, n_start, kernel, stride, padding, dilation, out_hw):
    """Add cols (C*kH*kW, B*H_out*W_out) back into samples n_start.. of grad_x."""
    _, channels, height, width = grad_x.shape
    batch = cols.shape[1] // (out_hw[0] * out_hw[1])
    _launch("im2col.cu", "col2im", grad_x.dtype, batch * channels * height * width, cols,
            grad_x, n_start, channels, height, width, *kernel, *stride, *padding, *dilation,
            *out_hw, batch)
    return grad_x


def _backend() -> gemm_conv.Im2col:
    return gemm_conv.Im2col(cupy, _im2col, _col2im, COLUMNS_BUDGET_BYTES)


def conv2d_forward(x, weight, stride: Pair, padding: Pair, dilation: Pair, groups: int,
                   bias=None):
    """Cross-correlation as PyTorch's conv2d, plus bias[c] on output channel c when given.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW), bias: (C_out,) or None
    -> (N, C_out, H_out, W_out).
    """
    _check_dtype("conv2d_forward", x, weight)
    conv2d_forward_args(x, weight, stride, padding, dilation, groups, bias)
    y = gemm_conv.conv2d_forward(_backend(), x, weight, stride, padding, dilation, groups)
    return y if bias is None else bias_act_forward(y, bias, 1, "linear", 0.0)


def conv2d_backward_bias(grad_output):
    """grad_output (N, C, H, W) summed over all but the channels: (C,) of its dtype."""
    check_grad_output_4d("conv2d_backward_bias", grad_output)
    return grad_output.sum(axis=(0, 2, 3), dtype=cupy.float64).astype(grad_output.dtype)


def conv2d_backward_input(grad_output, weight, input_shape, stride: Pair, padding: Pair,
                          dilation: Pair, groups: int):
    """Gradient of conv2d with respect to its input; also conv_transpose2d's forward.

    grad_output: (N, C_out, H_out, W_out) -> grad_x: input_shape (N, C_in, H, W).
    """
    _check_dtype("conv2d_backward_input", grad_output, weight)
    return gemm_conv.conv2d_backward_input(_backend(), grad_output, weight, input_shape,
                                           stride, padding, dilation, groups)


def conv2d_backward_weight(grad_output, x, weight_shape, stride: Pair, padding: Pair,
                           dilation: Pair, groups: int):
    """Gradient of conv2d with respect to its weight.

    grad_output: (N, C_out, H_out, W_out), x: (N, C_in, H, W) -> (C_out, C_in/groups, kH, kW).
    """
    _check_dtype("conv2d_backward_weight", grad_output, x)
    return gemm_conv.conv2d_backward_weight(_backend(), grad_output, x, weight_shape, stride,
                                            padding, dilation, groups)


# ---------------------------------------------------------------------------------------
# Pooling and upsampling
# ---------------------------------------------------------------------------------------
def max_pool2d_forward(x, kernel_size: Pair, stride: Pair, padding: Pair):
    """Max pooling with -inf padding. x: (N, C, H, W) -> y, indices: (N, C, H_out, W_out);
    indices (int64) are flat positions h * W + w inside each (n, c) plane, as in PyTorch."""
    _check_dtype("max_pool2d_forward", x)
    kernel_size, stride, padding = as_pairs(kernel_size, stride, padding)
    out_hw = check_pool2d(x.shape, kernel_size, stride, padding)
    x = cupy.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = cupy.empty((n, c, *out_hw), dtype=x.dtype)
    indices = cupy.empty(y.shape, dtype=cupy.int64)
    _launch("pool.cu", "max_pool_forward", x.dtype, y.size, x, y, indices, n * c, h, w,
            *out_hw, *kernel_size, *stride, *padding)
    return y, indices


def max_pool2d_backward(grad_output, indices, input_shape):
    """Scatter-add grad_output (N, C, H_out, W_out) to the recorded maxima -> input_shape."""
    _check_dtype("max_pool2d_backward", grad_output)
    _check_max_pool_indices(grad_output, indices, input_shape)
    n, c, h, w = input_shape
    grad_output = cupy.ascontiguousarray(grad_output)
    indices = cupy.ascontiguousarray(indices, dtype=cupy.int64)
    grad_x = cupy.zeros(tuple(input_shape), dtype=grad_output.dtype)
    _launch("pool.cu", "max_pool_backward", grad_output.dtype, grad_output.size, grad_output,
            indices, grad_x, n * c, h * w, grad_output.shape[2] * grad_output.shape[3])
    return grad_x


def _check_max_pool_indices(grad_output, indices, input_shape) -> None:
    """The kernel adds at grad_x[plane, indices[...]] with no bounds check of its own: a wrong
    shape or index would be a silent out-of-bounds write on the GPU."""
    input_shape = tuple(int(size) for size in input_shape)
    if len(input_shape) != 4 or grad_output.ndim != 4:
        raise ValueError(f"max_pool2d_backward: grad_output {tuple(grad_output.shape)} and "
                         f"input_shape {input_shape} must both be (N, C, H, W)")
    if tuple(indices.shape) != tuple(grad_output.shape):
        raise ValueError(f"max_pool2d_backward: indices {tuple(indices.shape)} must have the "
                         f"shape of grad_output {tuple(grad_output.shape)}; pass the indices "
                         f"max_pool2d_forward returned with it")
    if tuple(grad_output.shape[:2]) != input_shape[:2]:
        raise ValueError(f"max_pool2d_backward: grad_output {tuple(grad_output.shape)} and "
                         f"input_shape {input_shape} differ in N or C")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"max_pool2d_backward: indices must be integers, not {indices.dtype}")
    plane_size = input_shape[2] * input_shape[3]
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= plane_size:
            raise ValueError(f"max_pool2d_backward: indices run from {low} to {high}, outside "
                             f"the {input_shape[2]}x{input_shape[3]} plane [0, {plane_size}); "
                             f"pass the indices max_pool2d_forward returned for this input")


def avg_pool2d_forward(x, kernel_size: Pair, stride: Pair, padding: Pair):
    """Average pooling, count_include_pad=True. x: (N, C, H, W) -> (N, C, H_out, W_out)."""
    _check_dtype("avg_pool2d_forward", x)
    kernel_size, stride, padding = as_pairs(kernel_size, stride, padding)
    out_hw = check_pool2d(x.shape, kernel_size, stride, padding)
    x = cupy.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = cupy.empty((n, c, *out_hw), dtype=x.dtype)
    _launch("pool.cu", "avg_pool_forward", x.dtype, y.size, x, y, n * c, h, w, *out_hw,
            *kernel_size, *stride, *padding)
    return y


def avg_pool2d_backward(grad_output, input_shape, kernel_size: Pair, stride: Pair,
                        padding: Pair):
    """Gradient of avg_pool2d_forward: (N, C, H_out, W_out) -> input_shape (N, C, H, W)."""
    _check_dtype("avg_pool2d_backward", grad_output)
    kernel_size, stride, padding = as_pairs(kernel_size, stride, padding)
    out_hw = check_pool2d(input_shape, kernel_size, stride, padding)
    grad_output = cupy.ascontiguousarray(grad_output)
    n, c, h, w = input_shape
    grad_x = cupy.empty(tuple(input_shape), dtype=grad_output.dtype)
    _launch("pool.cu", "avg_pool_backward", grad_output.dtype, grad_x.size, grad_output, grad_x,
            n * c, h, w, *out_hw, *kernel_size, *stride, *padding)
    return grad_x


def upsample_nearest2d_forward(x, scale: Pair):
    """Nearest-neighbour upsampling by integer factors: (N, C, H, W) -> (N, C, sH*H, sW*W)."""
    _check_dtype("upsample_nearest2d_forward", x)
    (scale,) = as_pairs(scale)
    check_upsample(x.shape, scale)
    x = cupy.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = cupy.empty((n, c, h * scale[0], w * scale[1]), dtype=x.dtype)
    _launch("upsample.cu", "upsample_nearest_forward", x.dtype, y.size, x, y, n * c, h, w,
            *scale)
    return y


def upsample_nearest2d_backward(grad_output, scale: Pair):
    """Gradient of upsample_nearest2d_forward: (N, C, sH*H, sW*W) -> (N, C, H, W)."""
    _check_dtype("upsample_nearest2d_backward", grad_output)
    (scale,) = as_pairs(scale)
    check_upsample_grad(grad_output.shape, scale)
    grad_output = cupy.ascontiguousarray(grad_output)
    n, c, h_out, w_out = grad_output.shape
    grad_x = cupy.empty((n, c, h_out // scale[0], w_out // scale[1]), dtype=grad_output.dtype)
    _launch("upsample.cu", "upsample_nearest_backward", grad_output.dtype, grad_x.size,
            grad_output, grad_x, n * c, h_out // scale[0], w_out // scale[1], *scale)
    return grad_x


# ---------------------------------------------------------------------------------------
# Random numbers for the default generator (minigen/backend.py): element i of a draw depends
# on (seed, offset + i) only, so the generator's state is those two integers.
# ---------------------------------------------------------------------------------------
def _random(kernel: str, shape, dtype, seed: int, offset: int):
    dtype = np.dtype(dtype)
    draw_dtype = dtype if dtype in _C_TYPES else np.dtype(np.float64)
    out = cupy.empty(shape, dtype=draw_dtype)
    _launch("random.cu", kernel, draw_dtype, out.size, out, out.size, _as_signed_64(seed),
            _as_signed_64(offset))
    return out if draw_dtype == dtype else out.astype(dtype)


def _as_signed_64(value: int) -> int:
    """The 64-bit pattern of `value` as a long long (the kernel reads it back as unsigned)."""
    return ((int(value) % 2**64) ^ 2**63) - 2**63


def random_uniform(shape, dtype, seed: int, offset: int):
    """Uniform numbers in [0, 1) of `shape`; uses the counters offset .. offset + size - 1."""
    return _random("random_uniform", shape, dtype, seed, offset)


def random_normal(shape, dtype, seed: int, offset: int):
    """Standard normal numbers of `shape` (Box-Muller); the same counters as random_uniform."""
    return _random("random_normal", shape, dtype, seed, offset)


def random_integers(low: int, high: int, shape, seed: int, offset: int):
    """Integers in [low, high) (int64) of `shape`, from the uniforms of the same counters."""
    span = int(high) - int(low)
    if span <= 0:
        raise ValueError(f"random integers: high ({high}) must be greater than low ({low})")
    uniform = random_uniform(shape, np.float64, seed, offset)
    return cupy.minimum(cupy.floor(uniform * span).astype(np.int64), span - 1) + int(low)


def add(a, b):
    """a + b, CuPy's broadcasting add (one elementwise kernel)."""
    return a + b


def matmul(a, b):
    """a @ b (cuBLAS through cupy.matmul): (..., n, k) @ (..., k, m) -> (..., n, m)."""
    return cupy.matmul(a, b)


# The fused kernels' glue uses _launch, _module and _C_TYPES above, so it is imported last.
from .fused import (adam_update, bias_act_backward, bias_act_forward,  # noqa: E402,F401
                    ema_update, grad_norm, scale_grads, sgd_update)
from .fused_norm import (batch_norm_backward, batch_norm_forward,  # noqa: E402
                         group_norm_backward, group_norm_forward, softmax_backward,
                         softmax_forward)
