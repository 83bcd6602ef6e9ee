"""Time minigen's conv2d against PyTorch's on named shapes: forward, and forward + backward
(the input and the weight gradients), with the ratio minigen / PyTorch measured in one run.

`--impl kernels` times the array kernels (minigen.kernels.cpu or .cuda) directly;
`--impl functional` times minigen.functional.conv2d on Tensors, autograd included; `auto`
(the default) takes functional when it is importable. `--compile-time` measures Numba's
first-call cost in fresh processes: with an empty cache, then with the cache it left.
On a busy machine wall time says little; `--clock process` counts CPU seconds instead, which
other programs do not inflate, and is fair when every library runs one thread (see below).

    python benchmarks/bench_conv.py                     # CPU, 2 threads, float32
    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        python benchmarks/bench_conv.py --threads 1 --clock process
    python benchmarks/bench_conv.py --device cuda --impl kernels
    python benchmarks/bench_conv.py --compile-time
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# First: the CPU backend sets OpenMP's spin count (kernels/cpu.py) before PyTorch loads the
# libgomp that both sides then share.
import minigen.kernels.cpu  # noqa: F401
import numpy as np


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1

    @property
    def output_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1


SHAPES = [
    Shape("N32 C64->64 16x16", 32, 64, 64, 16),
    Shape("N64 C32->32 32x32", 64, 32, 32, 32),
    Shape("N64 C128->128 8x8", 64, 128, 128, 8),
    Shape("N64 C64->128 16x16 4x4 s2 (DCGAN)", 64, 64, 128, 16, kernel=4, stride=2),
    Shape("N64 C128->64 16x16 1x1", 64, 128, 64, 16, kernel=1, padding=0),
]


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def best_time(step, synchronize, repeats: int, clock=time.perf_counter) -> float:
    """The fastest of `repeats` timed calls, in ms: the least disturbed by other work on the
    machine. Two untimed calls first warm caches and compile."""
    step(), step()
    synchronize()
    times = []
    for _ in range(repeats):
        start = clock()
        step()
        synchronize()
        times.append(clock() - start)
    return 1e3 * min(times)


# ---------------------------------------------------------------------------------------
# The two sides: each returns (forward, forward_backward) closures for one shape.
# ---------------------------------------------------------------------------------------
def minigen_steps(shape: Shape, arrays, impl: str):
    x, weight, grad_output = arrays
    geometry = ((shape.stride,) * 2, (shape.padding,) * 2, (1, 1), 1)
    if impl == "kernels":
        from minigen import kernels
        backend = kernels.for_array(x)

        def forward():
            return backend.conv2d_forward(x, weight, *geometry)

        def forward_backward():
            forward()
            backend.conv2d_backward_input(grad_output, weight, x.shape, *geometry)
            backend.conv2d_backward_weight(grad_output, x, weight.shape, *geometry)
        return forward, forward_backward

    import minigen
    import minigen.functional as F
    grad = minigen.Tensor(grad_output)

    def forward():
        with minigen.no_grad():
            return F.conv2d(minigen.Tensor(x), minigen.Tensor(weight), None, shape.stride,
                            shape.padding)

    def forward_backward():
        x_t = minigen.Tensor(x, requires_grad=True)
        weight_t = minigen.Tensor(weight, requires_grad=True)
        F.conv2d(x_t, weight_t, None, shape.stride, shape.padding).backward(grad)
    return forward, forward_backward


def torch_steps(shape: Shape, arrays, device: str):
    import torch
    import torch.nn.functional as F
    x, weight, grad_output = (torch.as_tensor(np.asarray(_to_numpy(a)), device=device)
                              for a in arrays)
    x_grad, weight_grad = x.clone().requires_grad_(), weight.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            return F.conv2d(x, weight, stride=shape.stride, padding=shape.padding)

    def forward_backward():
        y = F.conv2d(x_grad, weight_grad, stride=shape.stride, padding=shape.padding)
        torch.autograd.grad(y, (x_grad, weight_grad), grad_output)
    return forward, forward_backward


def _to_numpy(array):
    return array.get() if hasattr(array, "get") else array


def run_table(args) -> None:
    impl = args.impl
    if impl == "auto":
        try:
            import minigen.functional as F
            impl = "functional" if hasattr(F, "conv2d") else "kernels"
        except ImportError:
            impl = "kernels"
    xp, synchronize = np, (lambda: None)
    if args.device == "cuda":
        import cupy
        xp, synchronize = cupy, cupy.cuda.Device().synchronize
    try:
        import torch
        torch.set_num_threads(args.threads)
        torch_device_ok = args.device == "cpu" or torch.cuda.is_available()
    except ImportError:
        torch, torch_device_ok = None, False

    def torch_sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    dtype = np.dtype(args.dtype)
    clock = CLOCKS[args.clock]
    print(f"conv2d, minigen ({impl}) vs PyTorch {torch.__version__ if torch else '(absent)'}, "
          f"device {args.device}, {dtype}, {args.threads} threads; best of {args.repeats} "
          f"calls, ms of {args.clock} time")
    if args.device == "cuda" and torch is not None:
        from gpu_modes import tf32_off
        print(tf32_off(torch))
    header = (f"{'shape':36} {'minigen fwd':>11} {'torch fwd':>10} {'ratio':>6} "
              f"{'minigen f+b':>11} {'torch f+b':>10} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        arrays = [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in (
            (shape.batch, shape.in_channels, shape.size, shape.size),
            (shape.out_channels, shape.in_channels, shape.kernel, shape.kernel),
            (shape.batch, shape.out_channels, shape.output_size, shape.output_size))]
        ours = [best_time(step, synchronize, args.repeats, clock)
                for step in minigen_steps(shape, arrays, impl)]
        if torch_device_ok:
            theirs = [best_time(step, torch_sync, args.repeats, clock)
                      for step in torch_steps(shape, arrays, args.device)]
            ratios = [f"{a / b:6.2f}" for a, b in zip(ours, theirs)]
            theirs = [f"{t:10.2f}" for t in theirs]
        else:
            theirs, ratios = ["n/a".rjust(10)] * 2, ["n/a".rjust(6)] * 2
        print(f"{shape.name:36} {ours[0]:11.2f} {theirs[0]} {ratios[0]} "
              f"{ours[1]:11.2f} {theirs[1]} {ratios[1]}")


# ---------------------------------------------------------------------------------------
# Numba's compile cost
# ---------------------------------------------------------------------------------------
_FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
from minigen.kernels import cpu
imported = time.perf_counter()
geometry = ((1, 1), (1, 1), (1, 1), 1)
def step():
    # 3 and 32 channels: the im2col and the Winograd paths; then the strided col2im.
    for channels in (3, 32):
        x = np.ones((2, channels, 8, 8), np.float32)
        weight = np.ones((channels, channels, 3, 3), np.float32)
        y = cpu.conv2d_forward(x, weight, *geometry)
        cpu.conv2d_backward_input(y, weight, x.shape, *geometry)
        cpu.conv2d_backward_weight(y, x, weight.shape, *geometry)
    cpu.conv2d_backward_input(y[:, :, ::2, ::2].copy(), weight, x.shape, (2, 2), (1, 1), (1, 1), 1)
step()
first = time.perf_counter()
step()
second = time.perf_counter()
print(imported - start, first - imported, second - first)
"""


def run_compile_time() -> None:
    """Run the conv paths (im2col and Winograd, forward and both gradients, the strided
    col2im) in fresh processes."""
    with tempfile.TemporaryDirectory() as cache:
        environment = dict(os.environ, NUMBA_CACHE_DIR=cache)
        print("Numba compile cost of the float32 conv path (fresh process each), seconds:")
        print(f"{'cache':8} {'import':>8} {'first call':>11} {'next call':>10}")
        for label in ("empty", "warm"):
            output = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=environment,
                                    check=True, capture_output=True, text=True).stdout
            imported, first, second = map(float, output.split())
            print(f"{label:8} {imported:8.2f} {first:11.2f} {second:10.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--impl", choices=["auto", "kernels", "functional"], default="auto")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls of each step")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or CPU time of the whole process")
    parser.add_argument("--compile-time", action="store_true",
                        help="measure Numba's first-call compile time instead")
    args = parser.parse_args()
    if args.compile_time:
        run_compile_time()
    else:
        run_table(args)


if __name__ == "__main__":
    main()
