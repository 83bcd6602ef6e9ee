"""Data-parallel training on one machine: 1 process x 2 threads against 2 processes x 1 thread
(mpiexec -n 2), on the DDPM main job's step (the default U-Net, global batch 64 of digits).

For each setup: images per second, the share of a step spent in collectives (waiting for the
other rank included), the gradient bytes all-reduced per step and what each rank sends for them
under the ring all-reduce cost model, 2 (N - 1) / N of the gradient bytes, and the time of the
gradient all-reduce alone (the same buffer, ranks in step), so waiting and transfer show apart.

    python benchmarks/bench_dist.py                  # both setups, printed as a table
    python benchmarks/bench_dist.py --steps 40       # more timed steps
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np


def measure(args) -> dict | None:
    """One setup's figures on this process (rank 0 returns them, the others None)."""
    import minigen
    from minigen import distributed
    from minigen.data import Batcher
    from minigen.ddpm import DDPMLoop
    from minigen.run import default_config, load_run_data

    world = distributed.world("cpu")
    distributed.share_cores(world, lambda message: None)
    config = default_config(DDPMLoop, batch_size=args.batch_size)
    dataset = load_run_data(config)
    config.update(loop="ddpm", data_kind=dataset.kind, data_shape=list(dataset.shape),
                  num_classes=dataset.num_classes, world_size=world.size)
    minigen.manual_seed(0)
    loop = DDPMLoop(config, "cpu")
    parallel = distributed.DataParallel(world, loop)
    parallel.start()
    batcher = Batcher(dataset.train, args.batch_size, seed=0, rank=world.rank,
                      world_size=world.size)
    times, comm = [], []
    for step in range(args.warmup + args.steps):
        world.barrier()
        before, started = world.seconds, time.perf_counter()
        batch = minigen.Tensor(batcher.batch(step))
        with parallel.step(batch.shape[0]):
            scalars = loop.train_step(batch, None, step)
        parallel.finish_step(scalars, None)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            comm.append(world.seconds - before)
    bytes_per_step = world.bytes_reduced / (args.warmup + args.steps)
    messages_per_step = world.messages / (args.warmup + args.steps)
    gradient = np.zeros(sum(p.data.size for p in loop.model.parameters()), np.float32)
    alone = []
    for _ in range(args.steps):
        world.barrier()
        started = time.perf_counter()
        world.allreduce_mean_(gradient)
        alone.append(time.perf_counter() - started)
    world.close()
    if world.rank != 0:
        return None
    step_seconds = statistics.median(times)
    return {"processes": world.size, "threads": int(os.environ.get("NUMBA_NUM_THREADS", 0)) or None,
            "images_per_second": args.batch_size / step_seconds,
            "step_ms": 1e3 * step_seconds,
            "communication_share": sum(comm) / sum(times),
            "allreduce_alone_ms": 1e3 * statistics.median(alone) if world.size > 1 else 0.0,
            "gradient_bytes": int(bytes_per_step), "messages": messages_per_step,
            "sent_per_rank_bytes": int(2 * (world.size - 1) / world.size * bytes_per_step)}


def launch(command: list[str], threads: int) -> dict:
    environment = {**os.environ, "NUMBA_NUM_THREADS": str(threads),
                   "OPENBLAS_NUM_THREADS": str(threads), "MPLBACKEND": "Agg"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setup")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        figures = measure(args)
        if figures is not None:
            print(json.dumps(figures), flush=True)
        return
    if shutil.which("mpiexec") is None:
        raise SystemExit("mpiexec is not on PATH: pip install 'minigen[dist]'")
    own = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    rows = [("1 process x 2 threads", launch(own, 2)),
            ("2 processes x 1 thread", launch(["mpiexec", "-n", "2", *own], 1))]
    print(f"DDPM step, default U-Net, global batch {args.batch_size} of 8x8 digits, "
          f"{args.steps} timed steps (median)")
    print(f"{'setup':24s} {'img/s':>7s} {'step ms':>8s} {'comm share':>10s} "
          f"{'all-reduce alone ms':>19s} {'gradient MB':>11s} {'msgs':>5s} {'sent/rank MB':>12s}")
    for name, row in rows:
        print(f"{name:24s} {row['images_per_second']:7.0f} {row['step_ms']:8.1f} "
              f"{row['communication_share']:10.1%} {row['allreduce_alone_ms']:19.2f} "
              f"{row['gradient_bytes'] / 1e6:11.3f} {row['messages']:5.1f} "
              f"{row['sent_per_rank_bytes'] / 1e6:12.3f}")
    ratio = rows[1][1]["images_per_second"] / rows[0][1]["images_per_second"]
    print(f"2 processes x 1 thread / 1 process x 2 threads: {ratio:.2f}x the images per second")


if __name__ == "__main__":
    main()
