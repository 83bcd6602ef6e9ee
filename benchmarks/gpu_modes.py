"""TF32 on the GPU, for the benchmarks that compare minigen with PyTorch on --device cuda.

A float32 matmul or convolution in TF32 keeps 10 mantissa bits, so a comparison is fair (and a
ratio means something) only with the same mode on both sides. CuPy leaves TF32 off unless
CUPY_TF32=1; PyTorch's cuDNN convolutions default to on. `tf32_off(torch)` turns PyTorch's off
and returns the line each benchmark prints, saying the mode each side ran in.
"""
from __future__ import annotations

import os


def tf32_off(torch) -> str:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return describe(torch)


def describe(torch) -> str:
    cupy_tf32 = os.environ.get("CUPY_TF32", "0") not in ("", "0")
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return (f"TF32: minigen (CuPy) {'on' if cupy_tf32 else 'off'}; PyTorch matmul "
            f"{'on' if matmul else 'off'}, cuDNN {'on' if cudnn else 'off'}")
