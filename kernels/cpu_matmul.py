"""Matrix products on the CPU (cpu.py's matmul): float32 products of matrices or of stacks of
them, cut into row blocks that Numba's OpenMP threads multiply at once, each block one call
of NumPy's OpenBLAS sgemm (cpu_blas). OpenBLAS is held to one thread (cpu_blas.
hold_to_one_thread), so np.matmul would use one core; attention's products
(the U-Net 16x16 step's 28 of them took 14 ms on two threads) use both this way.

Operands reach the GEMMs as they are laid out when BLAS can read them (a transposed view is a
transpose flag, a slice's rows a leading dimension), and are copied only otherwise. Anything
else (other dtypes, broadcasting stacks, small products) is np.matmul's.
"""
from __future__ import annotations

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)
from . import cpu_blas
from .cpu_blas import gemm_strided

# Products of fewer multiply-adds per thread run as one np.matmul on the calling thread.
MACS_PER_THREAD = 2**19
# Each thread gets about this many blocks of the products' rows (or columns, where they have
# more columns than rows), so that uneven blocks even out.
BLOCKS_PER_THREAD = 2


@numba.njit(parallel=True, nogil=True, cache=True)
def _blocks(sgemm, batch, m, n, k, a, a_batch, a_trans, lda, b, b_batch, b_trans, ldb, out,
            blocks, by_columns, workers, itemsize):
    """out[i] = op(a[i]) @ op(b[i]) for every stack entry i, one row block (or with by_columns
    one column block) of out per task; addresses in bytes, strides and leading dimensions in
    elements; out C-contiguous."""
    tasks = batch * blocks
    side = n if by_columns else m
    for w in numba.prange(workers):
        for task in range(w, tasks, workers):
            i, block = task // blocks, task % blocks
            first, last = block * side // blocks, (block + 1) * side // blocks
            if last == first:
                continue
            a_at, b_at, out_at = i * a_batch, i * b_batch, i * m * n
            if by_columns:  # columns first..last of op(b) and of out
                b_at += first * ldb if b_trans else first
                out_at += first
                rows, columns = m, last - first
            else:  # rows first..last of op(a) and of out
                a_at += first if a_trans else first * lda
                out_at += first * n
                rows, columns = last - first, n
            gemm_strided(sgemm, a_trans, b_trans, rows, columns, k, a + a_at * itemsize, lda,
                         b + b_at * itemsize, ldb, 0.0, out + out_at * itemsize, n)
    return out


def _blas_layout(matrices: np.ndarray):
    """(array, transposed, leading dimension) with which BLAS reads the last two axes of
    `matrices` (copied to C order when neither axis has unit stride)."""
    size = matrices.itemsize
    rows, columns = matrices.shape[-2:]
    row_stride, column_stride = matrices.strides[-2:]
    if rows > 1 and columns > 1:
        if column_stride == size and row_stride % size == 0 and row_stride >= columns * size:
            return matrices, False, row_stride // size
        if row_stride == size and column_stride % size == 0 and column_stride >= rows * size:
            return matrices, True, column_stride // size
    matrices = np.ascontiguousarray(matrices)
    return matrices, False, columns


def _batch_stride(matrices: np.ndarray) -> int:
    """The elements between stack entries (0 for a single matrix); -1 if not a whole number."""
    if matrices.ndim == 2 or matrices.shape[0] == 1:
        return 0
    stride = matrices.strides[0]
    return stride // matrices.itemsize if stride % matrices.itemsize == 0 else -1


def _threads_for(macs: int) -> int:
    """Threads for a product of `macs` multiply-adds (see MACS_PER_THREAD)."""
    return max(1, min(numba.get_num_threads(), macs // max(1, MACS_PER_THREAD)))


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b as np.matmul: a (n, k) or (B, n, k), b (k, m) or (B, k, m) -> (n, m) or (B, n, m)."""
    if not (cpu_blas.available and a.dtype == np.float32 and b.dtype == np.float32
            and 2 <= a.ndim <= 3 and 2 <= b.ndim <= 3 and a.shape[-1] == b.shape[-2]
            and (a.ndim == b.ndim == 2 or (a.ndim == b.ndim == 3 and a.shape[0] == b.shape[0]))
            and min(a.shape) > 0 and min(b.shape) > 0):
        return np.matmul(a, b)
    batch = a.shape[0] if a.ndim == 3 else 1
    m, k = a.shape[-2:]
    n = b.shape[-1]
    threads = _threads_for(batch * m * n * k)
    if threads == 1:
        return np.matmul(a, b)
    cpu_blas.hold_to_one_thread()
    a, a_trans, lda = _blas_layout(a)
    b, b_trans, ldb = _blas_layout(b)
    a_batch, b_batch = _batch_stride(a), _batch_stride(b)
    if a_batch < 0 or b_batch < 0:
        return np.matmul(a, b)
    out = np.empty((batch, m, n) if a.ndim == 3 else (m, n), dtype=np.float32)
    by_columns = n > m  # cut the longer side of each product (a weight gradient: few rows)
    blocks = max(1, min(n if by_columns else m, -(-threads * BLOCKS_PER_THREAD // batch)))
    _blocks(cpu_blas.sgemm, batch, m, n, k, a.ctypes.data, a_batch, a_trans, lda,
            b.ctypes.data, b_batch, b_trans, ldb, out.ctypes.data, blocks, by_columns,
            min(threads, batch * blocks), a.itemsize)
    return out
