"""Data-parallel training (minigen.distributed): the pieces in one process, with stand-ins for
other ranks and for NCCL, then whole runs under `mpiexec -n 2` (skipped where MPI is missing).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import minigen
from minigen import backend, distributed
from minigen.checkpoint import load_checkpoint
from minigen.data import Batcher
from minigen.loop import UserError
from minigen.nn import Linear
from minigen.tensor import after_backward

WORKER = str(Path(__file__).with_name("distributed_worker.py"))
# The default DDPM settings (learning-rate warmup included) on a small U-Net and batch.
SMALL_DDPM = {"batch_size": 16, "base_channels": 8, "eval_samples": 0, "sample_every": 0}


@contextlib.contextmanager
def once_for_all_workers(tmp_path_factory, name: str):
    """(folder, done): a folder shared by the pytest-xdist workers, and whether another
    worker has already filled it; held under a lock until the block ends."""
    folder = tmp_path_factory.getbasetemp().parent / name
    folder.mkdir(exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = (folder / ".done").exists()
        yield folder, done
        (folder / ".done").touch()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """256 labelled 8x8 images in a .npz file: loads in no time (the digits need scikit-learn,
    seconds to import on every rank)."""
    with once_for_all_workers(tmp_path_factory, "images") as (folder, done):
        if not done:
            generator = np.random.default_rng(0)
            np.savez(folder / "images.npz",
                     x=generator.uniform(-1, 1, (256, 1, 8, 8)).astype(np.float32),
                     y=generator.integers(0, 4, 256))
    return str(folder / "images.npz")


def _mpi_missing() -> str | None:
    if shutil.which("mpiexec") is None:
        return "mpiexec is not on PATH (pip install 'minigen[dist]')"
    try:
        import mpi4py  # noqa: F401 (only whether it imports)
    except ImportError:
        return "mpi4py is not installed (pip install 'minigen[dist]')"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def run_job(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command in a session of its own; on timeout, kill all of it (mpiexec's ranks
    hold its pipes open) and fail."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "MPLBACKEND": "Agg"},
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(command)} did not finish in {timeout} s:\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def mpiexec(args: list[str], n: int = 2, timeout: float = 120):
    return run_job(["mpiexec", "-n", str(n), sys.executable, *args], timeout)


def worker_train(folder: Path, options: dict, n: int = 2, loop: str = "ddpm"):
    """Train under mpiexec -n n (n=1: a plain process); each rank dumps rankR.npz in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [WORKER, "train", loop, str(folder),
            *(f"{key}={json.dumps(value)}"
              for key, value in {**options, "out": str(folder)}.items())]
    result = run_job([sys.executable, *args]) if n == 1 else mpiexec(args, n)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(path: Path) -> dict:
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def relative_distance(a: dict, b: dict) -> float:
    keys = [key for key in a if key != "rng_state" and a[key].dtype.kind == "f"]
    difference = sum(float(((a[k].astype(np.float64) - b[k]) ** 2).sum()) for k in keys)
    norm = sum(float((a[k].astype(np.float64) ** 2).sum()) for k in keys)
    return (difference / norm) ** 0.5


# ---------------------------------------------------------------------------------------
# One process: the pieces
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [2, 4])
def test_the_shards_of_a_step_draw_the_global_batch_of_noise(world_size):
    batch = 8
    minigen.manual_seed(3)
    expected = (minigen.randn(batch, 3).numpy(), minigen.randint(0, 1000, batch).numpy(),
                minigen.rand(batch, 1, 2).numpy())
    for rank in range(world_size):
        minigen.manual_seed(3)
        with backend.shard_draws(rank, world_size, batch // world_size):
            shard = (minigen.randn(batch // world_size, 3).numpy(),
                     minigen.randint(0, 1000, batch // world_size).numpy(),
                     minigen.rand(batch // world_size, 1, 2).numpy())
            other = minigen.randn(5).numpy()  # not per sample: drawn as it is
        rows = slice(rank * batch // world_size, (rank + 1) * batch // world_size)
        for got, full in zip(shard, expected):
            np.testing.assert_array_equal(got, full[rows])
        assert other.shape == (5,)


def test_the_shards_of_a_batcher_are_the_global_batch_in_order():
    data = np.arange(40)
    whole = Batcher(data, 8, seed=5)
    shards = [Batcher(data, 8, seed=5, rank=rank, world_size=4) for rank in range(4)]
    for step in (0, 3, 7):  # 5 batches per epoch: step 7 is in the second epoch
        np.testing.assert_array_equal(np.concatenate([s.batch(step) for s in shards]),
                                      whole.batch(step))


def test_a_batcher_refuses_a_batch_that_ranks_cannot_share():
    with pytest.raises(ValueError, match="cannot be split evenly over 2"):
        Batcher(np.arange(40), 7, rank=0, world_size=2)


class TwoRanksInOneProcess(distributed.SingleProcess):
    """A stand-in for a 2-rank communicator: the other rank's arrays are `other(array)`."""

    size = 2

    def __init__(self, other):
        super().__init__()
        self.other, self.calls = other, []

    def allreduce_mean_(self, array):
        self.calls.append((array.dtype, array.size))
        array[...] = (array + self.other(array)) / 2
        return array


def test_gradients_are_averaged_in_buckets_of_the_parameters_that_got_one():
    minigen.manual_seed(0)
    layers = [Linear(30, 30), Linear(30, 30), Linear(30, 30)]
    params = [p for layer in layers for p in layer.parameters()]
    communicator = TwoRanksInOneProcess(lambda array: np.zeros_like(array))
    averager = distributed.GradientAverager(communicator, params, bucket_bytes=4000)
    x = minigen.randn(4, 30)
    with after_backward(averager):
        layers[1](layers[0](x)).sum().backward()
    # The other rank's gradients are zero: averaged, each gradient is half its local value.
    local = [p.grad.numpy() * 2 for p in params[:4]]
    for p in params[:4]:
        p.grad = None
    layers[1](layers[0](x)).sum().backward()
    for p, want in zip(params[:4], local):
        np.testing.assert_allclose(p.grad.numpy(), want, rtol=1e-6)
    # 30x30 float32 weights are 3,600 bytes: one bucket each, with biases packed alongside;
    # the third layer had no gradient and was not sent.
    assert sum(size for _, size in communicator.calls) == 2 * (900 + 30)
    assert len(communicator.calls) == 2


def test_a_setup_error_on_one_process_is_raised_as_it_is():
    world = distributed.SingleProcess()
    with pytest.raises(UserError, match="bad"):
        world.check_all(UserError("bad"))


def test_each_rank_takes_the_gpu_of_its_rank_on_its_machine():
    assert [distributed.choose_gpu(rank, 4, 4) for rank in range(4)] == [0, 1, 2, 3]
    assert distributed.choose_gpu(1, 2, 8) == 1
    with pytest.raises(UserError, match="3 processes on this machine.*2 GPUs.*at most 2"):
        distributed.choose_gpu(0, 3, 2)
    with pytest.raises(UserError, match="0 GPUs"):
        distributed.choose_gpu(0, 1, 0)


def test_each_rank_uses_its_share_of_the_cores(monkeypatch):
    for variable in distributed.THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert distributed.threads_per_rank(2, cores=2)[0] == 1
    assert distributed.threads_per_rank(3, cores=16)[0] == 5
    assert distributed.threads_per_rank(4, cores=2)[0] == 1
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    assert distributed.threads_per_rank(2, cores=16) == (3, "NUMBA_NUM_THREADS=3")


class FakeDeviceArray:
    """A GPU array stand-in: host memory behind a raw pointer, as NCCL sees a CuPy array."""

    def __init__(self, array):
        self.host = array
        self.data = type("Memory", (), {"ptr": self.host.ctypes.data})()
        self.size, self.dtype, self.flags = self.host.size, self.host.dtype, self.host.flags

    def __itruediv__(self, value):
        self.host /= value
        return self


class FakeNccl:
    """cupy.cuda.nccl for two ranks on two threads of one process: allReduce waits for the
    other rank's call, then sums both buffers through their pointers, as NCCL does across two
    GPUs (where the division that follows waits on the stream instead)."""

    NCCL_SUM, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 0, 6, 7, 8
    pending: list = []
    arrived = threading.Barrier(2, timeout=10)
    summed = threading.Barrier(2, timeout=10)

    class NcclCommunicator:
        def __init__(self, size, unique_id, rank):
            self.size, self.unique_id, self.rank = size, unique_id, rank

        def allReduce(self, send, receive, count, dtype, op, stream):
            assert send == receive and op == FakeNccl.NCCL_SUM and stream == 1234
            FakeNccl.pending.append((receive, count, dtype))
            if FakeNccl.arrived.wait() == 0:
                ctype = {FakeNccl.NCCL_FLOAT32: ctypes.c_float,
                         FakeNccl.NCCL_FLOAT64: ctypes.c_double}[dtype]
                views = [np.ctypeslib.as_array((ctype * n).from_address(ptr))
                         for ptr, n, _ in FakeNccl.pending]
                total = sum(view.copy() for view in views)
                for view in views:
                    view[...] = total
                FakeNccl.pending.clear()
            FakeNccl.summed.wait()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nccl_averages_device_buckets_in_place_by_pointer(dtype):
    reducers = [distributed.NCCLReducer(FakeNccl, 2, rank, b"id", stream_ptr=lambda: 1234)
                for rank in range(2)]
    buckets = [FakeDeviceArray(np.arange(5, dtype=dtype) * (rank + 1)) for rank in range(2)]
    ranks = [threading.Thread(target=reducer.allreduce_mean_, args=(bucket,))
             for reducer, bucket in zip(reducers, buckets)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=10)
    for bucket in buckets:
        np.testing.assert_array_equal(bucket.host, np.arange(5, dtype=dtype) * 1.5)


def test_nccl_refuses_buckets_it_cannot_reduce():
    reducer = distributed.NCCLReducer(FakeNccl, 2, 0, b"id", stream_ptr=lambda: 1234)
    with pytest.raises(ValueError, match="int64"):
        reducer.allreduce_mean_(FakeDeviceArray(np.arange(4)))
    with pytest.raises(ValueError, match="contiguous"):
        reducer.allreduce_mean_(FakeDeviceArray(np.zeros((4, 4), np.float32)[:, ::2]))


def test_without_a_launcher_a_run_is_one_process(monkeypatch):
    for variable in distributed.SIZE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert isinstance(distributed.world(), distributed.SingleProcess)
    monkeypatch.setenv("PMI_SIZE", "1")
    assert distributed.world().size == 1


# ---------------------------------------------------------------------------------------
# Two processes under mpiexec
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddpm_runs(tmp_path_factory, images):
    """20 DDPM steps: on 2 processes, on 1, and on 2 again in two halves (10, resumed to 20);
    "other" resumes the first half on 1 process."""
    if _mpi_missing():
        pytest.skip(_mpi_missing())
    with once_for_all_workers(tmp_path_factory, "ddpm") as (root, done):
        if not done:
            options = dict(SMALL_DDPM, dataset=images, steps=20, checkpoint_every=10)
            worker_train(root / "two", options)
            worker_train(root / "one", options, n=1)
            worker_train(root / "halves", dict(options, steps=10))
            shutil.copytree(root / "halves", root / "other")
            for folder, n in (("halves", 2), ("other", 1)):
                worker_train(root / folder,
                             dict(options, resume=str(root / folder / "checkpoint.h5")), n=n)
    return root


@needs_mpi
def test_parameters_are_equal_on_every_rank(ddpm_runs):
    rank0, rank1 = (weights(ddpm_runs / "two" / f"rank{rank}.npz") for rank in (0, 1))
    for key in rank0:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)


@needs_mpi
def test_two_processes_equal_one_with_the_same_global_batch(ddpm_runs):
    distance = relative_distance(weights(ddpm_runs / "one" / "rank0.npz"),
                                 weights(ddpm_runs / "two" / "rank0.npz"))
    print(f"relative L2 distance, 2 processes vs 1, 20 DDPM steps: {distance:.3g}")
    assert distance <= 1e-4


@needs_mpi
def test_the_checkpoint_and_metrics_record_the_world_size(ddpm_runs):
    state = load_checkpoint(ddpm_runs / "two" / "checkpoint.h5", restore_rng=False)
    assert state["config"]["world_size"] == 2 and state["step"] == 20
    metrics = json.loads((ddpm_runs / "two" / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2
    assert not (ddpm_runs / "two" / "rank1").exists()


@needs_mpi
def test_resuming_on_the_same_processes_continues_bit_for_bit(ddpm_runs):
    straight = weights(ddpm_runs / "two" / "rank0.npz")
    resumed = weights(ddpm_runs / "halves" / "rank0.npz")
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)


@needs_mpi
def test_resuming_on_another_number_of_processes_works(ddpm_runs):
    state = load_checkpoint(ddpm_runs / "other" / "checkpoint.h5", restore_rng=False)
    assert state["config"]["world_size"] == 1 and state["step"] == 20
    # The same samples and noise: only the order of the float32 sums differs.
    distance = relative_distance(weights(ddpm_runs / "two" / "rank0.npz"),
                                 weights(ddpm_runs / "other" / "rank0.npz"))
    assert distance <= 1e-4


@needs_mpi
def test_a_batch_that_ranks_cannot_share_is_one_line_naming_both(tmp_path, images):
    result = mpiexec(["-m", "minigen", "train", "ddpm", "--batch-size", "15", "--steps", "1",
                      "--dataset", images, "--out", str(tmp_path / "run")])
    lines = [line for line in result.stderr.splitlines() if line.startswith("minigen")]
    assert lines == ["minigen: error: --batch-size 15 cannot be split evenly over 2 processes; "
                     "pass a multiple of 2"], result.stderr
    assert result.returncode != 0


@needs_mpi
def test_a_setup_error_on_rank_0_alone_stops_every_rank_with_one_line(tmp_path, images):
    (tmp_path / "file").write_text("not a folder")  # only rank 0 prepares the output folder
    result = mpiexec(["-m", "minigen", "train", "ddpm", "--steps", "1", "--dataset", images,
                      "--out", str(tmp_path / "file")])
    lines = [line for line in result.stderr.splitlines() if line.startswith("minigen")]
    assert len(lines) == 1 and "is a file" in lines[0], result.stderr
    assert result.returncode == 2


@needs_mpi
@pytest.mark.skipif(backend.cuda_available(), reason="this machine has a GPU")
def test_cuda_on_several_processes_without_a_gpu_is_one_line(tmp_path, images):
    result = mpiexec(["-m", "minigen", "train", "ddpm", "--device", "cuda", "--steps", "1",
                      "--dataset", images, "--out", str(tmp_path / "run")])
    lines = [line for line in result.stderr.splitlines() if line.startswith("minigen")]
    assert len(lines) == 1 and "device 'cuda' was asked for" in lines[0], result.stderr
    assert result.returncode == 2


@needs_mpi
def test_gan_batchnorm_keeps_per_rank_statistics_and_equal_weights(tmp_path, images):
    options = {"dataset": images, "batch_size": 16, "steps": 4, "eval_samples": 0,
               "sample_every": 0, "checkpoint_every": 4}
    worker_train(tmp_path / "two", options, loop="gan")
    worker_train(tmp_path / "one", options, n=1, loop="gan")
    rank0, rank1 = weights(tmp_path / "two" / "rank0.npz"), weights(tmp_path / "two" / "rank1.npz")
    assert any("running_mean" in key for key in rank0)
    for key in rank0:  # weights and the averaged running statistics agree across ranks
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
    # Each rank normalised with the statistics of its own 8 samples, not of all 16: the
    # weights move away from a one-process run's by far more than summation order does.
    assert relative_distance(weights(tmp_path / "one" / "rank0.npz"), rank0) > 1e-4


# --- faults ---------------------------------------------------------------------------
def start_long_run(folder: Path, dataset: str, flags=(), env=None) -> subprocess.Popen:
    folder.mkdir()
    args = [WORKER, "cli", str(folder), "train", "ddpm", "--dataset", dataset, "--steps",
            "100000", "--batch-size",
            "16", "--base-channels", "8", "--checkpoint-every", "2", "--sample-every", "0",
            "--out", str(folder / "run")]
    process = subprocess.Popen(["mpiexec", *flags, "-n", "2", sys.executable, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "MPLBACKEND": "Agg", **(env or {})},
                               start_new_session=True)
    deadline = time.monotonic() + 90
    while not (folder / "run" / "log.csv").is_file() or \
            len((folder / "run" / "log.csv").read_text().splitlines()) < 4:  # past a checkpoint
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    return process


def rank_pid(folder: Path, rank: int) -> int:
    return int((folder / f"rank{rank}.pid").read_text())


def stop_and_time(process: subprocess.Popen, send) -> tuple[float, str]:
    started = time.monotonic()
    send()
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("the ranks did not stop within 60 s")
    return time.monotonic() - started, stderr


def assert_checkpoint_loads(folder: Path) -> int:
    return load_checkpoint(folder / "run" / "checkpoint.h5", restore_rng=False)["step"]


@needs_mpi
@pytest.mark.parametrize("target", ["launcher", "rank 1"])
def test_a_signal_saves_one_checkpoint_and_stops_every_rank(tmp_path, images, target):
    process = start_long_run(tmp_path / "job", images)
    signum = signal.SIGINT if target == "launcher" else signal.SIGTERM
    pid = process.pid if target == "launcher" else rank_pid(tmp_path / "job", 1)
    seconds, stderr = stop_and_time(process, lambda: os.kill(pid, signum))
    print(f"{signal.Signals(signum).name} to {target}: every rank stopped in {seconds:.2f} s")
    assert process.returncode != 0
    reports = [line for line in stderr.splitlines() if line.startswith("minigen:")]
    assert len(reports) == 1, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in reports[0], stderr
    step = int(reports[0].split("after step ")[1].split(";")[0])
    assert assert_checkpoint_loads(tmp_path / "job") == step
    assert seconds < 10


@needs_mpi
def test_a_killed_rank_stops_every_rank_and_the_checkpoint_loads(tmp_path, images):
    # MPICH's launcher ends the other ranks itself and reports the dead one on stdout; the
    # heartbeat may get there first, with its one line (the next test sees it alone).
    process = start_long_run(tmp_path / "job", images)
    seconds, stderr = stop_and_time(process, lambda: os.kill(rank_pid(tmp_path / "job", 1),
                                                             signal.SIGKILL))
    print(f"SIGKILL to rank 1: every rank stopped in {seconds:.2f} s")
    assert process.returncode != 0
    assert len([line for line in stderr.splitlines() if line.startswith("minigen:")]) <= 1, stderr
    assert_checkpoint_loads(tmp_path / "job")
    assert seconds < 60


@needs_mpi
def test_a_rank_that_stops_answering_stops_the_others_with_one_line(tmp_path, images):
    process = start_long_run(tmp_path / "job", images, env={distributed.TIMEOUT_VARIABLE: "3"})
    frozen = rank_pid(tmp_path / "job", 1)
    try:
        seconds, stderr = stop_and_time(process, lambda: os.kill(frozen, signal.SIGSTOP))
    finally:
        try:
            os.kill(frozen, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(f"SIGSTOP to rank 1: rank 0 stopped in {seconds:.2f} s")
    reports = [line for line in stderr.splitlines() if line.startswith("minigen:")]
    assert any("rank 1 has not answered for 3 s" in line for line in reports), stderr
    assert seconds < 60
