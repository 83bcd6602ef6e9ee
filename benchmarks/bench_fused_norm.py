"""Time the fused normalisations against the composed ops and PyTorch, forward + backward.

GroupNorm -> SiLU at the U-Net's shapes (8x8 batch 64, 16x16 batch 32; 8 groups), BatchNorm2d
in training at the DCGAN's (8x8 and 28x28, batch 64) and the attention softmax, each as
minigen fused, minigen composed (fusion off) and torch.nn.functional, on the same thread
count, calls alternating so a busy machine slows all three alike. Prints the best ms (the
least disturbed call) and the ratios to PyTorch; with --unet, also a whole U-Net forward +
backward (the bench_ddpm shapes) with fusion on and off, alternating.

    python benchmarks/bench_fused_norm.py                         # 1 and 2 threads, wall time
    python benchmarks/bench_fused_norm.py --threads 1 --clock process --unet   # busy machine

On a busy machine wall time on two threads mostly measures waiting at the parallel loops'
barriers; one thread and --clock process (CPU time) is the steadier comparison.
"""
from __future__ import annotations

import argparse
import time

# First: the CPU backend sets OpenMP's spin count (kernels/cpu.py) before PyTorch loads the
# libgomp that both sides then share.
import minigen.kernels.cpu  # noqa: F401
import numba
import numpy as np
import torch

import minigen
import minigen.functional as F

# (label, op, input shape): op "group" = GroupNorm(8) -> SiLU, "batch" = BatchNorm in
# training, "softmax" = softmax over the last axis.
CASES = [
    ("unet 8x8 level 0", "group", (64, 32, 8, 8)),
    ("unet 8x8 level 1", "group", (64, 64, 4, 4)),
    ("unet 8x8 up, concat", "group", (64, 96, 8, 8)),
    ("unet 16x16 level 0", "group", (32, 32, 16, 16)),
    ("unet 16x16 level 1", "group", (32, 64, 8, 8)),
    ("dcgan 8x8 G", "batch", (64, 64, 2, 2)),
    ("dcgan 8x8 G/D", "batch", (64, 32, 4, 4)),
    ("dcgan 28x28 G/D", "batch", (64, 64, 7, 7)),
    ("dcgan 28x28 G", "batch", (64, 32, 14, 14)),
    ("attention 8x8 (4x4)", "softmax", (64, 16, 16)),
    ("attention 16x16 (8x8)", "softmax", (32, 64, 64)),
]
GROUPS = 8


def minigen_step(op: str, arrays):
    """forward + backward of the op in minigen, under whatever fusion setting is current."""
    x, weight, bias, grad = (minigen.Tensor(a, requires_grad=i < 3) for i, a in enumerate(arrays))

    def step():
        for t in (x, weight, bias):
            t.grad = None
        if op == "group":
            out = F.group_norm(x, GROUPS, weight, bias, activation="silu")
        elif op == "batch":
            out = F.batch_norm(x, None, None, weight, bias, training=True)
        else:
            out = F.softmax(x, dim=-1)
        out.backward(grad)
    return step


def torch_step(op: str, arrays):
    x, weight, bias, grad = (torch.tensor(a, requires_grad=i < 3) for i, a in enumerate(arrays))
    tf = torch.nn.functional

    def step():
        for t in (x, weight, bias):
            t.grad = None
        if op == "group":
            out = tf.silu(tf.group_norm(x, GROUPS, weight, bias))
        elif op == "batch":
            out = tf.batch_norm(x, None, None, weight, bias, training=True)
        else:
            out = tf.softmax(x, dim=-1)
        out.backward(grad)
    return step


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def with_fusion(enabled: bool, step):
    """step, run with the fused kernels on or off."""
    def run():
        with minigen.fusion(enabled):
            step()
    return run


def best_ms(steps, repeats: int, clock=time.perf_counter) -> list[float]:
    """The fastest ms per call of each step, the steps alternating, after two warm-up rounds:
    on a shared machine the minimum is the call that other work disturbed least."""
    for _ in range(2):
        for step in steps:
            step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            start = clock()
            step()
            record.append(clock() - start)
    return [1e3 * min(record) for record in times]


def unet_step(size: int, batch: int):
    """forward + backward of the bench_ddpm U-Net (base 32, mults (1, 2)) on one batch."""
    from minigen.models.unet import UNet
    minigen.manual_seed(0)
    model = UNet(1, 32, (1, 2), 1)
    rng = np.random.default_rng(1)
    x = minigen.Tensor(rng.standard_normal((batch, 1, size, size)).astype(np.float32))
    t = minigen.tensor(rng.integers(0, 1000, batch))

    def step():
        model.zero_grad()
        out = model(x, t)
        (out * out).mean().backward()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--unet", action="store_true", help="also time whole U-Net steps")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        print(f"\n{threads} thread(s), float32, forward + backward, best of {args.repeats}, "
              f"ms of {args.clock} time; PyTorch {torch.__version__}")
        header = (f"{'case':24} {'shape':18} {'fused ms':>9} {'composed':>9} {'torch':>8} "
                  f"{'fused/torch':>11} {'composed/torch':>14}")
        print(header)
        print("-" * len(header))
        for label, op, shape in CASES:
            channels = shape[1]
            arrays = [rng.standard_normal(s).astype(np.float32)
                      for s in (shape, (channels,), (channels,), shape)]
            fused, composed = minigen_step(op, arrays), minigen_step(op, arrays)
            ours, unfused, theirs = best_ms([with_fusion(True, fused),
                                             with_fusion(False, composed),
                                             torch_step(op, arrays)],
                                            args.repeats, CLOCKS[args.clock])
            print(f"{label:24} {str(shape):18} {ours:9.3f} {unfused:9.3f} {theirs:8.3f} "
                  f"{ours / theirs:11.2f} {unfused / theirs:14.2f}")
        for size, batch in ((8, 64), (16, 32)) if args.unet else ():
            step = unet_step(size, batch)
            fused_ms, composed_ms = best_ms([with_fusion(True, step), with_fusion(False, step)],
                                            max(args.repeats // 5, 3), CLOCKS[args.clock])
            print(f"U-Net {size}x{size} batch {batch}, forward + backward: fused "
                  f"{fused_ms:.1f} ms, composed {composed_ms:.1f} ms, fused/composed "
                  f"{fused_ms / composed_ms:.2f}")


if __name__ == "__main__":
    main()
