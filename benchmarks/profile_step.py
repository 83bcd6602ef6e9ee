"""Where a training step's time goes: each op family's share, forward and backward, and the
Python cost of one op against PyTorch eager.

The step is the loops' own train_step (DDPMLoop: U-Net forward, backward, gradient clipping,
AdamW, EMA; GANLoop: a D step and a G step with Adam) with the default settings of `minigen
train`, on the CPU. Every op's forward (Function.__call__) and backward (Function.backward,
outermost call only, so the ops a backward rule runs are counted in it) is timed and summed
by the file of its class (conv, norm, activations, elementwise, ...); the optimizers, the
clipping and the EMA are timed as calls; what is left ("autograd walk + glue") is the
backward walk's bookkeeping and the Python between the ops. The timers themselves cost a few
microseconds per op, so the table's total runs slightly over the plain step, printed beside it.
On a busy machine wall time mostly measures the other processes; `--clock process` counts this
process's CPU time instead (on one thread, NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1, that is
the work itself; on more, the sum over the threads).

    python benchmarks/profile_step.py                   # all four cases and the op-rate test
    python benchmarks/profile_step.py --only ddpm8 --steps 10
    MINIGEN_FUSION=0 python benchmarks/profile_step.py  # the same with the fused kernels off
    NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/profile_step.py --clock process
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np

# First: the CPU backend sets OpenMP's spin count (kernels/cpu.py) before PyTorch loads the
# libgomp that both sides then share.
import minigen.kernels.cpu  # noqa: F401
import minigen
from minigen.tensor import Function
from minigen.ddpm import DDPMLoop
from minigen.gan import GANLoop
from minigen.run import default_config

# name -> (loop, channels x size x size, batch): the four cases.
CASES = {"ddpm8": (DDPMLoop, 8, 64), "ddpm16": (DDPMLoop, 16, 32),
         "gan8": (GANLoop, 8, 64), "gan28": (GANLoop, 28, 64)}
# Calls timed as a whole, each its own row: (module, class or None, attribute, row name).
# Every optimizer class that defines step or zero_grad is wrapped too.
WHOLE_CALLS = [("minigen.optim.ema", "EMA", "update", "EMA update"),
               ("minigen.nn.utils", None, "clip_grad_norm_", "clip_grad_norm_")]
CLOCK = [time.perf_counter]  # the timer of every measurement; --clock process swaps it
MICRO_OPS = 6  # ops in one micro-benchmark iteration: mul, add, relu, mul, sum + the backward


class Profiler:
    """Wraps Function.__call__, every Function subclass's backward and the WHOLE_CALLS."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.calls = collections.defaultdict(int)
        self.depth = 0  # > 0 while inside a timed region: inner ops are counted in it
        self.undo = []

    def _timed(self, function, row_of):
        profiler = self

        def wrapper(*args, **kwargs):
            if profiler.depth:
                return function(*args, **kwargs)
            profiler.depth += 1
            start = CLOCK[0]()
            try:
                return function(*args, **kwargs)
            finally:
                row = row_of(args)
                profiler.seconds[row] += CLOCK[0]() - start
                profiler.calls[row] += 1
                profiler.depth -= 1
        return wrapper

    def _patch(self, owner, name, wrapper):
        self.undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, wrapper)

    def install(self):
        import importlib
        self._patch(Function, "__call__", self._timed(
            Function.__call__, lambda args: f"{family(type(args[0]))} forward"))
        for cls in all_subclasses(Function):
            if "backward" in cls.__dict__:
                self._patch(cls, "backward", self._timed(
                    cls.__dict__["backward"], lambda args: f"{family(type(args[0]))} backward"))
        from minigen.optim.optimizer import Optimizer
        for cls in [Optimizer] + all_subclasses(Optimizer):
            for attribute in ("step", "zero_grad"):
                if attribute in cls.__dict__:
                    self._patch(cls, attribute, self._timed(
                        cls.__dict__[attribute], lambda args, row=f"optimizer {attribute}": row))
        for module_name, class_name, attribute, row in WHOLE_CALLS:
            module = importlib.import_module(module_name)
            owner = getattr(module, class_name) if class_name else module
            original = owner.__dict__[attribute]
            self._patch(owner, attribute, self._timed(original, lambda args, row=row: row))
        # The loops import clip_grad_norm_ by name, so their module's name is patched too.
        import minigen.ddpm
        self._patch(minigen.ddpm, "clip_grad_norm_", self._timed(
            minigen.ddpm.clip_grad_norm_, lambda args: "clip_grad_norm_"))
        return self

    def remove(self):
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()


def all_subclasses(cls) -> list:
    found, stack = [], [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            found.append(sub)
            stack.append(sub)
    return found


def family(cls) -> str:
    """An op's family: the file its class lives in (minigen.ops.conv -> conv)."""
    return cls.__module__.rsplit(".", 1)[-1]


def make_step(name: str):
    loop_cls, size, batch = CASES[name]
    minigen.manual_seed(0)
    config = default_config(loop_cls, batch_size=batch)
    config.update(data_kind="images", data_shape=[1, size, size])
    loop = loop_cls(config, "cpu")
    rng = np.random.default_rng(0)
    images = minigen.tensor(rng.uniform(-1, 1, (batch, 1, size, size)).astype(np.float32))
    counter = iter(range(10**9))
    return (lambda: loop.train_step(images, None, next(counter))), loop


def profile_case(name: str, steps: int) -> None:
    step, loop = make_step(name)
    for _ in range(2):  # compiles and scratch buffers
        step()
    plain = []
    for _ in range(steps):
        start = CLOCK[0]()
        step()
        plain.append(CLOCK[0]() - start)
    profiler = Profiler().install()
    totals = []
    try:
        for _ in range(steps):
            start = CLOCK[0]()
            step()
            totals.append(CLOCK[0]() - start)
    finally:
        profiler.remove()
    total = sum(totals)
    rows = sorted(profiler.seconds.items(), key=lambda item: -item[1])
    glue = total - sum(profiler.seconds.values())
    _, size, batch = CASES[name]
    kind = "DDPM U-Net" if CASES[name][0] is DDPMLoop else "DCGAN"
    print(f"\n{kind} step, {size}x{size}, batch {batch}: plain {1e3 * statistics.median(plain):.1f} ms "
          f"(median of {steps}), profiled {1e3 * total / steps:.1f} ms per step; fusion "
          f"{'on' if minigen.fusion_enabled() else 'off'}")
    print(f"  {'part':28s} {'ms/step':>8s} {'share':>6s} {'calls/step':>10s}")
    for row, seconds in rows + [("autograd walk + glue", glue)]:
        calls = profiler.calls.get(row, 0) / steps
        print(f"  {row:28s} {1e3 * seconds / steps:8.2f} {100 * seconds / total:5.1f}% "
              f"{calls:10.0f}")


def op_rate(seconds: float) -> None:
    """Ops per second on tiny tensors, where the time is all Python: minigen against PyTorch."""
    import torch
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(4).astype(np.float32) for _ in range(3)]

    def ours_setup():
        x, w, b = (minigen.tensor(a, requires_grad=True) for a in arrays)
        return lambda: (((x * w + b).relu() * w).sum()).backward(), \
            lambda: (((x * w + b).relu() * w).sum())

    def theirs_setup():
        x, w, b = (torch.tensor(a, requires_grad=True) for a in arrays)
        return lambda: (((x * w + b).relu() * w).sum()).backward(), \
            lambda: (((x * w + b).relu() * w).sum())

    def rate(fn) -> float:
        for _ in range(200):
            fn()
        count, start = 0, CLOCK[0]()
        while CLOCK[0]() - start < seconds:
            for _ in range(100):
                fn()
            count += 100
        return count * MICRO_OPS / (CLOCK[0]() - start)

    ours_both, ours_fwd = ours_setup()
    theirs_both, theirs_fwd = theirs_setup()
    with minigen.no_grad(), torch.no_grad():
        no_grad = (rate(ours_fwd), rate(theirs_fwd))
    with_grad = (rate(ours_fwd), rate(theirs_fwd))
    backward = (rate(ours_both), rate(theirs_both))
    print(f"\nPython cost per op (4-element tensors; x*w+b, relu, *w, sum: {MICRO_OPS - 1} ops, "
          f"counted as {MICRO_OPS} with the backward call)")
    print(f"  {'':26s} {'minigen ops/s':>14s} {'pytorch ops/s':>14s} {'ratio':>6s} {'us/op':>6s}")
    for label, (ours, theirs) in (("forward, no_grad", no_grad), ("forward, recording", with_grad),
                                  ("forward + backward", backward)):
        print(f"  {label:26s} {ours:14,.0f} {theirs:14,.0f} {theirs / ours:6.2f} "
              f"{1e6 / ours:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CASES) + ["ops"],
                        default=list(CASES) + ["ops"])
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per case")
    parser.add_argument("--op-seconds", type=float, default=1.0,
                        help="seconds per side of the op-rate test")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall: elapsed time; process: this process's CPU time")
    args = parser.parse_args()
    CLOCK[0] = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"clock: {args.clock}; fusion {'on' if minigen.fusion_enabled() else 'off'}")
    for name in args.only:
        if name == "ops":
            op_rate(args.op_seconds)
        else:
            profile_case(name, args.steps)


if __name__ == "__main__":
    main()
