"""The run harness: what `minigen train` does around a training loop.

A loop (DDPM, GAN, or any subclass of `TrainingLoop`) knows its models and one training step;
the harness does the rest: options, seeding, data and mini-batches, the output folder
(checkpoint.h5, samples.png, loss.png, metrics.json, config.json, log.csv), the progress bar,
exact resumption, and saving on Ctrl-C / SIGTERM. The loop protocol is in minigen.loop, the
options and the run folder's rules in minigen.options, the step log in minigen.steplog. `train(loop_cls, options)` is the entry point;
minigen.cli is a thin command line over it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import minigen
from minigen import backend, distributed
from minigen.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minigen.data import Batcher, Dataset, load_dataset
from minigen.divergence import (NONFINITE_MODES, NonFiniteGuard, TrainingDiverged,  # noqa: F401
                                nonfinite_weight)
from minigen.files import write_atomically
from minigen.evallog import EVAL_FILES, EvalLog
from minigen.options import (  # noqa: F401 (re-exported: cli, tests and demos import them from here)
    CHECKPOINT, CONFIG, DATA_KEYS, EVAL_SAMPLES, LOG, LOSS, MEASURE_SEED, METRICS, NOT_IDENTITY,
    PICTURE_COUNT, PICTURE_SEED, POINT_EVAL_SAMPLES, RESUMABLE_OPTIONS, RUN_FILES, SAMPLES,
    add_common_arguments, default_config, default_out, prepare_out_dir, read_checkpoint_config,
    resumed_options, sample_defaults, _check_options)
from minigen.loop import TrainingInterrupted, TrainingLoop, UserError  # noqa: F401 (re-exported)
from minigen.signals import stop_on_signals
from minigen.steplog import (BAR_FORMAT, FINAL_WINDOW, StepLog, bar_postfix,  # noqa: F401
                             terminal_columns)
from minigen import viz
from minigen.viz import write_samples  # noqa: F401 (re-exported for minigen.cli)

def load_run_data(config: dict) -> Dataset:
    """The dataset a run config names (dataset, data_dir, seed); UserError if it cannot load."""
    name, data_dir = config["dataset"], config.get("data_dir")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {data_dir} is not a folder; pass the folder that holds "
                        "the dataset's files")
    looks_like_path = os.sep in name or name.endswith((".npy", ".npz"))
    if looks_like_path and not os.path.exists(name):
        raise UserError(f"--dataset {name}: no such file or folder; pass a .npy / .npz file, a "
                        "folder of PNG images, or a dataset name")
    try:
        return load_dataset(name, data_dir=data_dir, seed=config["seed"])
    except (ValueError, OSError) as error:  # unknown names, missing files, bad contents
        raise UserError(str(error)) from None


# ---------------------------------------------------------------------------------------
# Samples, pictures, the step log
# ---------------------------------------------------------------------------------------
def draw_samples(loop: TrainingLoop, n: int, options: dict, seed: int) -> np.ndarray:
    """n samples from `loop`, with the generators seeded to `seed` and then put back as they
    were, so pictures and measures taken during training never change the training itself."""
    state = backend.get_rng_state()
    minigen.manual_seed(seed)
    try:
        samples = loop.sample(n, **options)
    finally:
        backend.set_rng_state(state)
    if isinstance(samples, minigen.Tensor):
        samples = samples.detach().data
    samples = backend.to_numpy(samples)
    expected = (n, *loop.config["data_shape"])
    if samples.shape != expected:
        raise RuntimeError(f"{type(loop).__name__}.sample({n}) returned shape {samples.shape}; "
                           f"the data has shape {expected}")
    return samples


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build_loop(loop_cls: type[TrainingLoop], config: dict, device: str) -> TrainingLoop:
    try:
        return loop_cls(config, device)
    except ValueError as error:  # a bad loop option, as the base class asks loops to report
        raise UserError(f"{loop_cls.name}: {error}") from None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def default_eval_samples(dataset: Dataset) -> int:
    return POINT_EVAL_SAMPLES if dataset.kind == "points" else EVAL_SAMPLES


def quality_measures(loop: TrainingLoop, dataset: Dataset, n: int | None, options: dict,
                     seed: int) -> dict | None:
    """minigen.metrics.evaluate on n samples (None: the dataset kind's default), or None
    when n is 0; with a class_label in the sampling options, minigen.metrics.class_measures
    (the share read as that class, FID against the held-out images of that class). The
    result records how the samples were drawn (see sampling_record)."""
    from minigen import metrics
    if n is None:
        n = default_eval_samples(dataset)
    if n <= 0:
        return None
    samples = draw_samples(loop, n, options, seed)
    if options.get("class_label") is not None:  # samples of one class: measured against it
        measures = metrics.class_measures(samples, dataset, int(options["class_label"]))
    else:
        measures = metrics.evaluate(samples, dataset)
    return {**measures, "sampling": sampling_record(options, seed)}


def sampling_record(options: dict, seed: int) -> dict:
    """How measured samples were drawn (the seed and the sampler's options), so two measures
    of one checkpoint can be told apart: metrics.json and `minigen eval` both record it."""
    return {"seed": seed, **{key: value for key, value in options.items()
                             if value is not None and key != "trajectory"}}


def train(loop_cls: type[TrainingLoop], options: dict, explicit: set | None = None,
          progress: bool | None = None, say=_say) -> dict:
    """Run `minigen train` in-process; returns the training summary written to metrics.json.

    options: every train option (see default_config). explicit: the options the user gave
    (for --resume; None: all). progress: show the tqdm bar (None: only on a terminal).
    Raises UserError for bad input and TrainingInterrupted after saving on SIGINT / SIGTERM.
    Under `mpiexec -n N` every rank runs this (minigen.distributed); rank 0 says and writes.
    """
    with distributed.ranks_together(options.get("device", "cpu")) as world:
        return _train(world, loop_cls, options, explicit, progress,
                      say if world.rank == 0 else lambda message: None)


def _train(world, loop_cls: type[TrainingLoop], options: dict, explicit: set | None,
           progress: bool | None, say) -> dict:
    options = dict(options)
    if options.get("resume"):
        options = resumed_options(loop_cls, options, explicit)
    _check_options(options)
    config = dict(options, loop=loop_cls.name)
    config["out"] = config.get("out") or default_out(loop_cls, config)
    out = Path(config["out"])
    dataset = load_run_data(config)
    if config["batch_size"] > len(dataset.train):
        raise UserError(f"--batch-size {config['batch_size']} is more than the "
                        f"{len(dataset.train)} training samples of {dataset.name}; pass a "
                        "smaller batch size")
    distributed.check_batch_size(world, config["batch_size"])
    config.update(data_kind=dataset.kind, data_shape=list(dataset.shape),
                  num_classes=dataset.num_classes, world_size=world.size)
    if world.rank == 0:
        prepare_out_dir(out, config, say)
        write_atomically(out / CONFIG, json.dumps(config, indent=2) + "\n")
    distributed.share_cores(world, say)

    device = backend.check_device(config["device"])
    minigen.manual_seed(config["seed"])
    loop = _build_loop(loop_cls, config, device)
    start_step, seconds_before, skipped = 0, 0.0, 0
    if config.get("resume"):
        try:
            state = load_checkpoint(config["resume"], models=loop.models(),
                                    optimizers=loop.optimizers(), ema=loop.emas())
        except CheckpointError as error:
            raise UserError(str(error)) from None
        start_step, seconds_before = state["step"], float(state["extra"].get("seconds", 0.0))
        skipped = int(state["extra"].get("skipped_steps", 0))
        if state["note"]:
            say(state["note"])
        if start_step > config["steps"]:
            raise UserError(f"{config['resume']} is at step {start_step}, beyond --steps "
                            f"{config['steps']}; --steps is the total to reach, pass more")
    world.check_all(None, setup_done=True)
    return _Run(loop, config, dataset, out, start_step, seconds_before, progress, say,
                skipped, world).run()


class _Run:
    """One training run from `start_step` to config["steps"], writing into `out`."""

    def __init__(self, loop: TrainingLoop, config: dict, dataset: Dataset, out: Path,
                 start_step: int, seconds_before: float, progress: bool | None, say,
                 skipped: int = 0, world=None):
        self.loop, self.config, self.dataset, self.out = loop, config, dataset, out
        self.start_step, self.seconds_before, self.say = start_step, seconds_before, say
        self.progress = progress
        on_device = dataset.to(loop.device)
        arrays = on_device.train if dataset.train_labels is None else (on_device.train,
                                                                       on_device.train_labels)
        self.parallel = distributed.DataParallel(world or distributed.SingleProcess(), loop)
        self.rank = self.parallel.communicator.rank
        self.batcher = Batcher(arrays, config["batch_size"], seed=config["seed"],
                               rank=self.rank, world_size=self.parallel.communicator.size)
        self.picture_options = sample_defaults(type(loop))
        every = config.get("sample_every")
        self.sample_every = config["checkpoint_every"] if every is None else every
        self.log = StepLog(out / LOG if self.rank == 0 else None, start_step)
        self.eval_every = config.get("eval_every") or 0
        self.eval_log = EvalLog(out, start_step, lambda: quality_measures(
            loop, dataset, config["eval_samples"], self.picture_options, MEASURE_SEED),
            f"{config['loop']} on {config['dataset']}") if self.eval_every and self.rank == 0 \
            else None
        self.started = time.perf_counter()
        self.guard = NonFiniteGuard(loop, config, config.get("on_nonfinite", "stop"), skipped)
        self.saved_step = start_step if config.get("resume") else None

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def images_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.started
        return self.config["batch_size"] * (step - self.start_step) / max(elapsed, 1e-9)

    def batch(self, step: int):
        batch = self.batcher.batch(step)
        if isinstance(batch, tuple):
            return minigen.Tensor(batch[0]), minigen.Tensor(batch[1])
        return minigen.Tensor(batch), None

    def save(self, step: int) -> None:
        if self.rank != 0:
            return
        bad_weight = nonfinite_weight(self.loop)
        if bad_weight is not None:
            self.diverged(f"after step {step - 1} the weight {bad_weight} holds NaN or inf "
                          "although every loss and gradient norm was finite")
        extra = {"seconds": self.seconds()}
        if self.guard.skipped:
            extra["skipped_steps"] = self.guard.skipped
        try:
            save_checkpoint(self.out / CHECKPOINT, models=self.loop.models(),
                            optimizers=self.loop.optimizers(), ema=self.loop.emas(), step=step,
                            config=self.config, extra=extra)
        except CheckpointError as error:
            raise UserError(str(error)) from None
        self.saved_step = step
        if self.log.rows:
            viz.save_loss_curves(self.log.rows, self.out / LOSS, keys=self.log.loss_keys(),
                                 title=f"{self.config['loop']} on {self.config['dataset']}")

    def diverged(self, reason: str):
        """Stop the run: the reason, what the last checkpoint holds, and what to try."""
        checkpoint = self.out / CHECKPOINT
        kept = (f"{checkpoint} keeps step {self.saved_step}" if self.saved_step is not None
                else f"nothing was saved over {checkpoint}" if checkpoint.exists()
                else "no checkpoint was written")
        raise TrainingDiverged(f"{reason}; {kept}; {self.guard.advice()}")

    def pictures(self) -> None:
        if self.rank != 0:
            return
        samples = draw_samples(self.loop, PICTURE_COUNT, self.picture_options, PICTURE_SEED)
        write_samples(samples, self.out / SAMPLES, self.dataset)

    def status(self, step: int, scalars: dict) -> str:
        values = "  ".join(f"{key} {value:.4g}" for key, value in scalars.items())
        return (f"step {step}/{self.config['steps']}  {values}  "
                f"{self.images_per_second(step):.0f} img/s")

    def run(self) -> dict:
        from tqdm.auto import tqdm

        config, steps = self.config, self.config["steps"]
        data = self.dataset
        self.say(f"training {config['loop']} on {data.name} ({len(data.train)} {data.kind}, "
                 f"{len(data.test)} more held out for the measures, "
                 f"{'x'.join(map(str, data.shape))}) on {config['device']}: steps "
                 f"{self.start_step} -> {steps}, into {self.out}")
        disable = None if self.progress is None else not self.progress  # None: terminals only
        if disable is not True and terminal_columns() == 0:
            disable = True  # a terminal that reports no width shows no bar: status lines instead
        disable = True if self.rank != 0 else disable
        self.parallel.start()
        try:
            with stop_on_signals() as stop, tqdm(total=steps, initial=self.start_step,
                                                  disable=disable, unit="step", file=sys.stderr,
                                                  dynamic_ncols=True, bar_format=BAR_FORMAT) as bar:
                for step in range(self.start_step, steps):
                    batch, labels = self.batch(step)
                    with self.parallel.step(batch.shape[0]):
                        scalars, stop_reason = self.guard.step(batch, labels, step)
                    scalars, signum = self.parallel.finish_step(scalars, stop.signum)
                    done = step + 1
                    self.log.append(step, scalars, self.seconds())
                    if stop_reason:
                        self.diverged(stop_reason)
                    bar.set_postfix_str(bar_postfix(scalars, self.images_per_second(done)),
                                        refresh=False)
                    bar.update()
                    if signum is not None:
                        self.save(done)
                        self.parallel.communicator.barrier()  # saved before any rank exits
                        raise TrainingInterrupted(signum, done, str(self.out / CHECKPOINT),
                                                  config["loop"])
                    if self.eval_log is not None and done % self.eval_every == 0:
                        line = self.eval_log.record(done, self.seconds())
                        self.say(line) if bar.disable else bar.write(line, file=sys.stderr)
                    if done == steps:
                        break
                    if done % config["checkpoint_every"] == 0:
                        self.save(done)
                        if bar.disable:
                            self.say(self.status(done, scalars))
                    if self.sample_every and done % self.sample_every == 0:
                        self.pictures()
            self.say(f"step {steps}: writing {CHECKPOINT}, {LOSS} and {SAMPLES} "
                     f"({PICTURE_COUNT} samples)")
            self.save(steps)
            self.pictures()
            return self.finish()
        finally:
            self.log.close()
            if self.eval_log is not None:
                self.eval_log.close()

    def finish(self) -> dict:
        config, steps = self.config, self.config["steps"]
        seconds = self.seconds()
        summary = {"loop": config["loop"], "dataset": config["dataset"], "steps": steps,
                   "seconds": round(seconds, 3),
                   "images_per_second": round(config["batch_size"] * steps / max(seconds, 1e-9), 1),
                   "world_size": config.get("world_size", 1), "final": self.log.final()}
        if self.guard.skipping:
            summary["skipped_steps"] = self.guard.skipped
        if self.rank != 0:
            return summary
        n = config["eval_samples"]
        n = default_eval_samples(self.dataset) if n is None else n
        if n > 0:
            self.say(f"measuring sample quality for {METRICS} on {n} samples (seed "
                     f"{MEASURE_SEED}; `minigen eval` repeats it)")
        measures = quality_measures(self.loop, self.dataset, n, self.picture_options,
                                    MEASURE_SEED)
        write_atomically(self.out / METRICS, json.dumps({**(measures or {}), "training": summary},
                                                        indent=2, default=_json_default) + "\n")
        from minigen import metrics
        headline = metrics.headline(measures)
        skipped = f" ({self.guard.skipped} skipped)" if self.guard.skipping else ""
        self.say(f"done: {steps} steps{skipped} in {seconds:.1f} s "
                 f"({summary['images_per_second']:.0f} img/s){'; ' + headline if headline else ''}; "
                 f"{self.out}: "
                 f"{', '.join(name for name in RUN_FILES + EVAL_FILES if (self.out / name).exists())}")
        return summary


def load_trained(path: str, loop_cls: type[TrainingLoop], device: str = "cpu"
                 ) -> tuple[TrainingLoop, dict, int]:
    """(loop, config, step): the loop rebuilt from a checkpoint's config, weights and EMAs
    loaded (not the optimizers), ready for sample()."""
    config, step = read_checkpoint_config(path)
    try:
        device = backend.check_device(device)
    except (ValueError, RuntimeError) as error:
        raise UserError(str(error)) from None
    loop = _build_loop(loop_cls, config, device)
    try:
        state = load_checkpoint(path, models=loop.models(), ema=loop.emas(), restore_rng=False)
    except CheckpointError as error:
        raise UserError(str(error)) from None
    if state["note"]:
        _say(state["note"])
    return loop, config, step
