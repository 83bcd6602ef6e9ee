"""Why the CPU conv2d is im2col + GEMM: a direct Numba loop nest against it, on the shapes of
bench_conv.py (3x3, stride 1, padding 1, float32, one thread, CPU time of the process).

The direct loop does the same multiply-adds with no column matrix, so it moves less memory,
but LLVM's vectorized inner loop is far from OpenBLAS's blocked SGEMM kernels.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_conv_direct.py
"""
from __future__ import annotations

import time

import numba
import numpy as np

from minigen.kernels import cpu, cpu_conv


@numba.njit(parallel=True, cache=True)
def direct_conv2d(x_padded, weight, y):
    """y[n, o] = sum_{c,i,j} weight[o, c, i, j] * x_padded[n, c, h + i, w + j] (stride 1)."""
    batch, channels = x_padded.shape[:2]
    out_channels, _, k_h, k_w = weight.shape
    out_h, out_w = y.shape[2:]
    for task in numba.prange(batch * out_channels):
        n, o = task // out_channels, task % out_channels
        total = np.zeros((out_h, out_w), dtype=y.dtype)
        for c in range(channels):
            for i in range(k_h):
                for j in range(k_w):
                    weight_value = weight[o, c, i, j]
                    for h in range(out_h):
                        for w in range(out_w):
                            total[h, w] += weight_value * x_padded[n, c, h + i, w + j]
        y[n, o] = total
    return y


def best_ms(step, repeats: int = 5) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return 1e3 * min(times)


def im2col_forward(x, weight):
    """cpu.conv2d_forward with Winograd switched off: im2col + GEMM for every shape."""
    threshold, cpu_conv.WINOGRAD_MIN_CHANNELS = cpu_conv.WINOGRAD_MIN_CHANNELS, 10**9
    try:
        return cpu.conv2d_forward(x, weight, (1, 1), (1, 1), (1, 1), 1)
    finally:
        cpu_conv.WINOGRAD_MIN_CHANNELS = threshold


def main() -> None:
    print(f"{'shape':24} {'direct ms':>10} {'im2col+GEMM ms':>15} {'direct/GEMM':>12} "
          f"{'Winograd ms':>12}")
    rng = np.random.default_rng(0)
    for batch, channels, size in [(32, 64, 16), (64, 32, 32), (64, 128, 8)]:
        x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
        weight = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32)
        x_padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        y = np.empty_like(x)
        direct = best_ms(lambda: direct_conv2d(x_padded, weight, y))
        gemm = best_ms(lambda: im2col_forward(x, weight))
        winograd = best_ms(lambda: cpu.conv2d_forward(x, weight, (1, 1), (1, 1), (1, 1), 1))
        np.testing.assert_allclose(y, im2col_forward(x, weight), rtol=1e-3, atol=1e-3)
        name = f"N{batch} C{channels} {size}x{size}"
        print(f"{name:24} {direct:10.2f} {gemm:15.2f} {direct / gemm:12.2f} {winograd:12.2f}")


if __name__ == "__main__":
    main()
