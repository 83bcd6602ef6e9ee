"""Matrix products: batched, broadcasting `matmul` and `linear` (x W^T + b).

d(A B)/dA = G B^T and d(A B)/dB = A^T G, with the batch dims summed back to each input's
shape; vectors are lifted to matrices first, as NumPy and PyTorch do.
"""
from __future__ import annotations

from minigen import kernels
from minigen.ops.bias_act import bias_act
from minigen.ops.elementwise import sum_to
from minigen.tensor import Function, Tensor


def _transpose_last(x: Tensor) -> Tensor:
    from minigen.ops.shape import transpose
    return transpose(x, -1, -2)


class MatMul(Function):
    """A @ B for A (..., n, k) and B (..., k, m)."""

    def forward(self, a, b):
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not line up "
                             f"({a.shape[-1]} != {b.shape[-2]})")
        kernel = kernels.for_array(a)
        if _rows_times_matrix(a, b):
            # One GEMM over all rows: NumPy's stacked matmul of a transposed view (attention's
            # (64, 16, 64) @ (64, 192)) took 1.6x the time of the copy plus one GEMM.
            return kernel.matmul(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1],
                                                                        b.shape[-1])
        return kernel.matmul(a, b)

    def backward(self, grad_output):
        a, b = self.inputs
        grad_a = sum_to(matmul(grad_output, _transpose_last(b)), a.shape) if self.needs_grad[0] else None
        if not self.needs_grad[1]:
            grad_b = None
        elif _rows_times_matrix(a, b):
            # The sum over the batch of A_i^T G_i is one product of the rows stacked: a GEMM
            # whose inner dimension runs over all of them (2.3x faster than a GEMM per entry
            # and a sum, for attention's projections).
            grad_b = matmul(_transpose_last(a.reshape(-1, a.shape[-1])),
                            grad_output.reshape(-1, grad_output.shape[-1]))
        else:
            grad_b = sum_to(matmul(_transpose_last(a), grad_output), b.shape)
        return grad_a, grad_b


def _rows_times_matrix(a, b) -> bool:
    """Whether A (..., n, k) @ B is the rows of A times one matrix B (k, m)."""
    return b.ndim == 2 and a.ndim > 2


def matmul(a: Tensor, b: Tensor) -> Tensor:
    from minigen.ops.shape import squeeze, unsqueeze
    from minigen.tensor import _as_tensor
    a, b = _as_tensor(a), _as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: both operands need at least 1 dim, got {a.shape} and {b.shape}")
    if a.ndim == 1:
        return squeeze(matmul(unsqueeze(a, 0), b), -2)
    if b.ndim == 1:
        return squeeze(matmul(a, unsqueeze(b, -1)), -1)
    return MatMul()(a, b)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., in) @ weight (out, in)^T + bias (out,)."""
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but weight expects "
                         f"{weight.shape[-1]} (input shape {x.shape}, weight shape {weight.shape})")
    out = matmul(x, _transpose_last(weight))
    if bias is None:
        return out
    if out.ndim == 0 or bias.ndim != 1 or bias.shape[0] != out.shape[-1]:
        return out + bias  # a bias that only broadcasts: the plain add, with its own errors
    return bias_act(out, bias, dim=-1)
