"""NumPy's OpenBLAS GEMM, callable from Numba code without the GIL, so that the chunks of a
convolution can run whole (copies, transforms and GEMMs) on Numba's OpenMP threads.

`gemm(sgemm, m, n, k, a, b, out)` computes out = a @ b for row-major float32 matrices at the
addresses a, b, out (`array.ctypes.data` in Numba code) through `sgemm`, the CBLAS sgemm of the
OpenBLAS that NumPy loaded, found by its symbol (`available` says whether it was). Called
from a parallel loop it scaled 2x on two threads (16 GEMMs of 64x64x256: 247 against 121 us),
where SciPy's BLAS behind Numba's np.dot did not (248 against 480 us), and the Python thread
pool cpu_conv.py uses costs about 80 us a call on these virtual cores.
"""
from __future__ import annotations

import ctypes
import functools

import numba
import numpy as np

from . import numba_cache  # noqa: F401  (first: where the kernels below are cached)

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type) in the order tried: NumPy 2's wheels prefix and suffix OpenBLAS's names.
_SYMBOLS = (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
            ("cblas_sgemm", ctypes.c_int))


def _numpy_sgemm():
    """NumPy's CBLAS sgemm as a ctypes function, or None where it cannot be found."""
    try:
        from threadpoolctl import threadpool_info
        np.ones((2, 2)) @ np.ones((2, 2))  # NumPy loads its BLAS on first use
        paths = [info["filepath"] for info in threadpool_info()
                 if info.get("internal_api") == "openblas" and "numpy" in info["filepath"]]
    except Exception:  # threadpoolctl missing or unable to read the process: no fast path
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name, integer in _SYMBOLS:
            function = getattr(library, name, None)
            if function is None:
                continue
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer,
                                 integer, ctypes.c_float, ctypes.c_void_p, integer,
                                 ctypes.c_void_p, integer, ctypes.c_float, ctypes.c_void_p,
                                 integer]
            function.restype = None
            return function
    return None


sgemm = _numpy_sgemm()
available = sgemm is not None


@numba.njit(nogil=True, cache=True)
def gemm_strided(function, transpose_a, transpose_b, m, n, k, a, lda, b, ldb, beta, out, ldo):
    """out = op(a) @ op(b) + beta * out for float32 row-major matrices at these addresses, with
    rows lda, ldb and ldo elements apart: op(a) (m, k), op(b) (k, n), out (m, n), op the
    transpose where asked (a then holds (k, m), b (n, k))."""
    function(_ROW_MAJOR, _TRANS if transpose_a else _NO_TRANS,
             _TRANS if transpose_b else _NO_TRANS, m, n, k, 1.0, a, lda, b, ldb, beta, out, ldo)


@numba.njit(nogil=True, cache=True)
def gemm(function, m, n, k, a, b, out):
    """out = a @ b for float32 row-major matrices at these addresses, rows back to back:
    a (m, k), b (k, n), out (m, n); function is `sgemm`, passed in so that the compiled code
    does not hold this process's address of it and Numba can cache it."""
    function(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, m, n, k, 1.0, a, k, b, n, 0.0, out, n)


@functools.lru_cache(maxsize=1)
def hold_to_one_thread() -> None:
    """OpenBLAS on one thread, process-wide, once: the callers of gemm (and the convolutions'
    pool) run it on threads of their own, and OpenBLAS's threads inside each call would fight
    them (a 1024x64x192 product on two threads of Numba's took 6.5 ms with OpenBLAS's two
    threads each, 0.1 ms without). Its idle threads also spin for a while after each call and
    take a core from the chunks: holding BLAS to one thread only around each convolution left
    forward times of 2.7-9.9 ms (median 4.7) for N=32, C=64, 16x16, against 2.6-2.9 ms with no
    BLAS threads at all. minigen's other GEMMs (linear layers, attention on small images) gain
    little from BLAS threads."""
    from threadpoolctl import ThreadpoolController
    ThreadpoolController().limit(limits=1, user_api="blas")
