"""What tests/test_distributed.py runs on each rank under `mpiexec -n 2` (or on one process).

    python tests/distributed_worker.py train LOOP DIR KEY=VALUE ...
        trains LOOP (ddpm or gan) with the options given (no pictures) and, after the last
        step, writes the rank's weights, buffers and random state to DIR/rank{R}.npz
    python tests/distributed_worker.py cli DIR ARGS ...
        writes the rank's process id to DIR/rank{R}.pid, then runs `minigen ARGS`
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np


def rank() -> int:
    return int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def dump(loop, path: str) -> None:
    from minigen import backend
    arrays = {}
    for model_name, model in loop.models().items():
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            arrays[f"{model_name}.{name}"] = backend.to_numpy(tensor.data)
    arrays["rng_state"] = np.array(json.dumps(backend.get_rng_state(), default=int))
    np.savez(path, **arrays)


def dumping(loop_cls, folder: str):
    """loop_cls, dumping the rank's state once the harness has finished the last step (the
    buffers are averaged over the ranks after the loop's own step)."""
    from minigen.distributed import DataParallel
    finish_step = DataParallel.finish_step

    def finish_and_dump(self, scalars, signum):
        result = finish_step(self, scalars, signum)
        if getattr(self.loop, "last_step_done", False):
            dump(self.loop, os.path.join(folder, f"rank{rank()}.npz"))
        return result
    DataParallel.finish_step = finish_and_dump

    class Dumping(loop_cls):
        def train_step(self, batch, labels, step):
            self.last_step_done = step + 1 == self.config["steps"]
            return super().train_step(batch, labels, step)
    Dumping.__name__ = loop_cls.__name__
    return Dumping


def train(loop_name: str, folder: str, assignments: list[str]) -> dict:
    from minigen import run
    from minigen.cli import loop_class
    from minigen.run import default_config, train as run_train
    run._Run.pictures = lambda self: None  # seconds of sampling that these tests do not look at
    loop_cls = loop_class(loop_name)
    options = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        options[key] = json.loads(value)
    config = default_config(loop_cls, **options)
    return run_train(dumping(loop_cls, folder), config, progress=False)


def main(argv: list[str]) -> int:
    if argv[0] == "train":
        train(argv[1], argv[2], argv[3:])
        return 0
    if argv[0] == "cli":
        with open(os.path.join(argv[1], f"rank{rank()}.pid"), "w") as handle:
            handle.write(str(os.getpid()))
        from minigen.cli import main as cli_main
        return cli_main(argv[2:])
    raise SystemExit(f"unknown job {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
