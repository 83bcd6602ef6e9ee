"""Data-parallel training over processes and machines, on MPI (mpi4py) and NCCL (CuPy).

`mpiexec -n N minigen train ...` starts N copies of one run. `world(device)` gives each copy
its communicator: `MPICommunicator` when launched on more than one process, else
`SingleProcess`, which does nothing. `DataParallel` is what the harness (minigen.run) does with
it around a loop: broadcast rank 0's weights, shard each step's random draws, average the
gradients at the end of every backward() in a few flat buckets (`GradientAverager`: MPI
Allreduce, or NCCL for GPU arrays), and agree on when to stop. A `Heartbeat` thread (TCP, beside
MPI) ends a rank with one line when another dies or hangs, so no rank waits for ever.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time

import numpy as np

from minigen import backend
from minigen.loop import TrainingInterrupted, UserError
from minigen.tensor import Tensor, after_backward

BUCKET_BYTES = 4 * 2**20     # gradients are averaged in flat buckets of about this size
POLL_SECONDS = 2e-4          # a waiting rank checks its request this often (and sleeps between)
HEARTBEAT_SECONDS = 0.5      # each rank tells rank 0 (and rank 0 tells each) it is alive
TIMEOUT_SECONDS = 20.0       # ... and a rank silent this long is taken for dead
TIMEOUT_VARIABLE = "MINIGEN_DIST_TIMEOUT"
EXIT_PEER_LOST = 1
GOODBYE = 2                  # the heartbeat byte of a rank that finished normally
# Environment variables through which launchers tell a process how many there are.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")  # set by the user: respected


class PeerLost(Exception):
    """Another rank died or stopped answering; this rank cannot continue."""


def launched_world_size() -> int:
    """The number of processes a launcher (mpiexec, mpirun) started, 1 when none did."""
    for variable in SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank as its launcher says (0 when no launcher started it)."""
    for variable in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_VARIABLE)
    try:
        return float(value) if value else TIMEOUT_SECONDS
    except ValueError:
        raise UserError(f"{TIMEOUT_VARIABLE}={value!r} is not a number of seconds; pass e.g. "
                        f"{TIMEOUT_VARIABLE}=30") from None


_abandoning = threading.Lock()


def abandon(error: Exception) -> None:
    """Report a lost peer in one line and leave at once: MPI cannot be shut down cleanly
    with a rank missing, and waiting for it is what must not happen."""
    if not _abandoning.acquire(blocking=False):  # another thread is reporting already
        time.sleep(60)
    print(f"minigen: error: {error}", file=sys.stderr, flush=True)
    time.sleep(0.2)  # the launcher forwards the line before it sees this process end
    os._exit(EXIT_PEER_LOST)


def choose_gpu(local_rank: int, local_size: int, gpu_count: int) -> int:
    """The GPU of a rank: one per rank, by its rank among the processes of its machine."""
    if gpu_count < local_size:
        raise UserError(f"{local_size} processes on this machine train on --device cuda, but "
                        f"it has {gpu_count} GPU{'s' if gpu_count != 1 else ''}; start at most "
                        f"{gpu_count} processes per machine (one GPU each)")
    return local_rank


def threads_per_rank(local_size: int, cores: int | None = None) -> tuple[int, str]:
    """(threads, why): cores / processes on this machine, unless the user set a count."""
    for variable in THREAD_VARIABLES:
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable]), f"{variable}={os.environ[variable]}"
    if cores is None:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
    return max(1, cores // local_size), (f"{cores} cores / {local_size} processes on this "
                                         f"machine; set NUMBA_NUM_THREADS to change")


# ---------------------------------------------------------------------------------------
# Communicators
# ---------------------------------------------------------------------------------------
class SingleProcess:
    """The communicator of a run on one process: every collective is the identity."""

    rank, size, local_rank, local_size = 0, 1, 0, 1
    backend_name = "none"

    def __init__(self):
        self.seconds = 0.0         # spent in collectives (waiting for other ranks included)
        self.bytes_reduced = 0     # gradient bytes given to all-reduce
        self.messages = 0          # all-reduce calls on gradient buckets

    def allreduce_mean_(self, array):
        """array <- the mean of `array` over the ranks, in place; returns it."""
        return array

    def broadcast_(self, array, root: int = 0):
        """array <- rank root's array, in place; returns it."""
        return array

    def sum_(self, values: np.ndarray) -> np.ndarray:
        """The sum over the ranks of a small float64 vector (scalars, flags)."""
        return values

    setup_done = False  # after the setup, ranks no longer agree on errors (see ranks_together)

    def check_all(self, error: Exception | None, setup_done: bool = False) -> None:
        """Raise on every rank when `error` happened on any (the first failing rank's, as a
        UserError that only rank 0 prints)."""
        self.setup_done = setup_done
        if error is not None:
            raise error

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def close(self, goodbye: bool = True) -> None:
        """Stop the heartbeat (if any), saying goodbye when every rank ends together (a
        finished or agreed stop); collectives must not be used after."""


class NCCLReducer:
    """In-place all-reduce of GPU arrays through NCCL (cupy.cuda.nccl), one GPU per rank.

    The arrays are flat, contiguous buckets; NCCL takes raw device pointers, an element count,
    a dtype code and the stream to run on, and reduces in place when both pointers are equal.
    """

    def __init__(self, nccl, size: int, rank: int, unique_id, stream_ptr=None):
        self.nccl, self.size = nccl, size
        self.comm = nccl.NcclCommunicator(size, unique_id, rank)
        self.stream_ptr = stream_ptr or backend.current_stream_ptr
        self.dtypes = {np.dtype(np.float16): nccl.NCCL_FLOAT16,
                       np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def allreduce_mean_(self, array):
        if not array.flags.c_contiguous:
            raise ValueError("NCCL all-reduce needs a contiguous buffer")
        code = self.dtypes.get(np.dtype(array.dtype))
        if code is None:
            raise ValueError(f"NCCL all-reduce of {array.dtype} gradients is not supported; "
                             "train in float16, float32 or float64")
        pointer = array.data.ptr
        self.comm.allReduce(pointer, pointer, array.size, code, self.nccl.NCCL_SUM,
                            self.stream_ptr())
        array /= self.size
        return array


class MPICommunicator(SingleProcess):
    """A rank of an MPI job (mpi4py). Collectives are non-blocking requests that the rank
    polls, sleeping between polls, so signals are handled while it waits and a waiting rank
    leaves the cores to the others. GPU arrays go through NCCL when a reducer is given, else
    through host memory."""

    def __init__(self, comm, nccl_reducer: NCCLReducer | None = None,
                 timeout: float = TIMEOUT_SECONDS):
        super().__init__()
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm.Dup()
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)  # failures raise, they do not abort
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.nccl = nccl_reducer
        self.backend_name = "MPI + NCCL" if nccl_reducer is not None else "MPI"
        self.heartbeat = Heartbeat(self.comm, self.rank, self.size, timeout)
        self.heartbeat.start()

    def _wait(self, request, what: str) -> None:
        started = time.perf_counter()
        try:
            while not request.Test():
                time.sleep(POLL_SECONDS)
        except self.MPI.Exception as error:
            raise PeerLost(f"rank {self.rank}: {what} failed ({error.Get_error_string()}); "
                           "another rank has stopped (see its output)") from None
        finally:
            self.seconds += time.perf_counter() - started

    def allreduce_mean_(self, array):
        self.bytes_reduced += array.nbytes
        self.messages += 1
        if backend.device_of(array) != "cpu":
            if self.nccl is not None:
                started = time.perf_counter()
                self.nccl.allreduce_mean_(array)
                self.seconds += time.perf_counter() - started
                return array
            host = backend.to_numpy(array)
            array[...] = backend.to_device(self._allreduce_mean_host(host), "cuda")
            return array
        return self._allreduce_mean_host(array)

    def _allreduce_mean_host(self, array: np.ndarray) -> np.ndarray:
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, array, self.MPI.SUM),
                   "gradient all-reduce")
        array /= self.size
        return array

    def broadcast_(self, array, root: int = 0):
        if backend.device_of(array) != "cpu":
            host = backend.to_numpy(array).copy()
            self._wait(self.comm.Ibcast(host, root=root), "broadcast")
            array[...] = backend.to_device(host, "cuda")
            return array
        self._wait(self.comm.Ibcast(array, root=root), "broadcast")
        return array

    def sum_(self, values: np.ndarray) -> np.ndarray:
        values = np.array(values, dtype=np.float64)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, values, self.MPI.SUM), "all-reduce")
        return values

    def check_all(self, error: Exception | None, setup_done: bool = False) -> None:
        self.setup_done = setup_done
        failed = np.zeros(self.size)
        failed[self.rank] = error is not None
        failed = self.sum_(failed)
        if not failed.any():
            return
        first = int(np.flatnonzero(failed)[0])
        message = str(error).encode() if self.rank == first else b""
        length = np.array([len(message)], dtype=np.int64)
        self.broadcast_(length, root=first)
        text = np.frombuffer(message, np.uint8).copy() if self.rank == first \
            else np.zeros(int(length[0]), np.uint8)
        self.broadcast_(text, root=first)
        message = text.tobytes().decode(errors="replace")
        shown = UserError(message if first == 0 else f"rank {first}: {message}")
        shown.quiet = self.rank != 0  # one line, from rank 0
        raise shown

    def barrier(self) -> None:
        self._wait(self.comm.Ibarrier(), "barrier")

    def close(self, goodbye: bool = True) -> None:
        self.heartbeat.stop(goodbye)


class Heartbeat(threading.Thread):
    """A watchdog beside MPI: each rank holds a TCP connection to rank 0 and both ends send a
    byte every HEARTBEAT_SECONDS. A rank that dies closes its end at once (the kernel does it),
    and one that hangs falls silent; either way its partner reports it in one line and exits
    (EXIT_PEER_LOST) within `timeout` seconds at most, and the others follow as rank 0 goes: a
    star, so any rank is noticed within two timeouts. It never calls MPI after the start, so a
    failing MPI cannot take it down before it has spoken."""

    def __init__(self, comm, rank: int, size: int, timeout: float):
        super().__init__(name="minigen-heartbeat", daemon=True)
        self.rank, self.timeout = rank, timeout
        self.stopping = threading.Event()
        server = socket.create_server(("", 0)) if rank == 0 else None
        address = comm.bcast((socket.gethostname(), server.getsockname()[1]) if server else None)
        self.peers = {}  # rank -> socket
        if rank == 0:
            server.settimeout(60)
            for _ in range(size - 1):
                connection, _ = server.accept()
                connection.settimeout(60)
                self.peers[int.from_bytes(_receive_exactly(connection, 4), "little")] = connection
            server.close()
        elif size > 1:
            connection = socket.create_connection(address, timeout=60)
            connection.sendall(rank.to_bytes(4, "little"))
            self.peers[0] = connection
        for connection in self.peers.values():
            connection.setblocking(False)

    def run(self) -> None:
        heard = {peer: time.monotonic() for peer in self.peers}
        while not self.stopping.is_set():
            for peer in list(heard):
                with contextlib.suppress(BlockingIOError):  # a full buffer: it is not reading
                    try:
                        self.peers[peer].send(b"\x01")
                    except OSError:
                        self._lost(peer, "closed its connection (it died)")
            readable, _, _ = select.select([self.peers[peer] for peer in heard], [], [],
                                           HEARTBEAT_SECONDS)
            now = time.monotonic()
            for peer in [peer for peer in list(heard) if self.peers[peer] in readable]:
                try:
                    data = self.peers[peer].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if bytes([GOODBYE]) in data:  # it finished normally: no longer watched
                    del heard[peer]
                elif not data:
                    self._lost(peer, "closed its connection (it died)")
                else:
                    heard[peer] = now
            for peer, when in heard.items():
                if now - when > self.timeout:
                    self._lost(peer, f"has not answered for {self.timeout:g} s (it hangs)")

    def _lost(self, peer: int, what: str) -> None:
        if not self.stopping.is_set():
            abandon(PeerLost(f"rank {self.rank}: rank {peer} {what}; stopping this rank too "
                             f"(the last checkpoint is whole; {TIMEOUT_VARIABLE} sets the wait)"))

    def stop(self, goodbye: bool) -> None:
        """Stop beating; with goodbye, first tell the partners that this rank finished
        normally (so that rank 0 may go on alone, writing its pictures and measures)."""
        self.stopping.set()
        if self.is_alive():
            self.join()
        for connection in self.peers.values():
            with contextlib.suppress(OSError):
                if goodbye:
                    connection.setblocking(True)
                    connection.settimeout(1.0)
                    connection.sendall(bytes([GOODBYE]))
                connection.close()


def _receive_exactly(connection, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError("a rank closed its heartbeat connection at the start")
        data += chunk
    return data


_ending = False  # the ranks have agreed to end: another one exiting non-zero is expected


def _peer_failed(signum, frame) -> None:
    # MPICH's launcher sends SIGUSR1 when another process of the job failed (died, or exited
    # non-zero) and it does not clean the job up itself (mpiexec -disable-auto-cleanup).
    if _ending:
        return
    abandon(PeerLost("another process of this MPI job failed (its launcher says so); stopping "
                     "this rank too (the last checkpoint is whole)"))


_mpi_world = None


def world(device: str = "cpu"):
    """This process's communicator: MPI when a launcher started more than one process (with
    NCCL for --device cuda), else SingleProcess. UserError when MPI is needed but missing."""
    global _mpi_world
    size = launched_world_size()
    if size <= 1:
        return SingleProcess()
    if _mpi_world is None:
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise UserError(f"this run was started as {size} processes, but mpi4py cannot be "
                            f"imported ({error}); install it with pip install 'minigen[dist]'"
                            ) from None
        _mpi_world = MPI.COMM_WORLD
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, _peer_failed)
    if device == "cuda" and backend.cuda_status() is not None:
        raise UserError(f"device 'cuda' was asked for, but {backend.cuda_status()}")
    reducer = _nccl_reducer(_mpi_world) if device == "cuda" else None
    return MPICommunicator(_mpi_world, reducer, timeout_seconds())


@contextlib.contextmanager
def ranks_together(device: str):
    """The communicator of a run (see world), and how its ranks end: a UserError during the
    setup is raised on every rank (rank 0 reports it), a stop request is reported by rank 0
    alone, a lost peer ends this rank at once; and the heartbeat stops, saying goodbye only
    when every rank ends together."""
    global _ending
    try:
        communicator = world(device)
    except UserError as error:  # the same on every rank: rank 0 reports it
        error.quiet = launched_rank() != 0
        raise
    together = True
    try:
        yield communicator
    except UserError as error:
        if communicator.setup_done:  # one rank's failure during training: the others
            together = False         # learn of it from its heartbeat, which ends unsaid
            raise
        _ending = True
        communicator.check_all(error)
        raise
    except TrainingInterrupted as interrupted:
        interrupted.quiet = communicator.rank != 0
        _ending = True
        raise
    except PeerLost as lost:
        abandon(lost)
    except BaseException:
        together = False
        raise
    else:
        _ending = True
    finally:
        communicator.close(goodbye=together)


def check_batch_size(communicator, batch_size: int) -> None:
    """Each rank takes batch_size / N samples of every global batch: N must divide it."""
    if batch_size % communicator.size:
        raise UserError(f"--batch-size {batch_size} cannot be split evenly over "
                        f"{communicator.size} processes; pass a multiple of {communicator.size}")


def share_cores(communicator, say) -> None:
    """On several processes, give each rank its share of the machine's cores, and say so."""
    if communicator.size == 1:
        return
    threads, why = threads_per_rank(communicator.local_size)
    backend.set_cpu_threads(threads)
    say(f"{communicator.size} processes ({communicator.backend_name}), {threads} CPU thread"
        f"{'s' if threads > 1 else ''} each ({why})")


def _nccl_reducer(comm):  # pragma: no cover - needs GPUs
    """Select this rank's GPU and join the job's NCCL communicator (None: no NCCL, so GPU
    buckets go through host memory and MPI)."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    backend.use_gpu(choose_gpu(local.Get_rank(), local.Get_size(), backend.gpu_count()))
    local.Free()
    nccl = backend.nccl()
    if nccl is None:
        return None
    unique_id = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
    return NCCLReducer(nccl, comm.Get_size(), comm.Get_rank(), unique_id)


# ---------------------------------------------------------------------------------------
# Gradient averaging and what the harness does around a loop
# ---------------------------------------------------------------------------------------
def _buckets(tensors: list, bucket_bytes: int):
    """Consecutive runs of tensors of one dtype and device, about bucket_bytes each."""
    bucket, size, key = [], 0, None
    for tensor in tensors:
        tensor_key = (tensor.data.dtype, backend.device_of(tensor.data))
        if bucket and (tensor_key != key or size + tensor.data.nbytes > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size, key = size + tensor.data.nbytes, tensor_key
    if bucket:
        yield bucket


def _flatten(arrays: list):
    xp = backend.array_module(arrays[0])
    flat = xp.empty(sum(int(array.size) for array in arrays), dtype=arrays[0].dtype)
    offset = 0
    for array in arrays:
        flat[offset:offset + array.size] = array.reshape(-1)
        offset += array.size
    return flat


def _pieces(flat, arrays: list):
    """Views of `flat` shaped like `arrays`, in order."""
    offset = 0
    for array in arrays:
        yield flat[offset:offset + array.size].reshape(array.shape)
        offset += array.size


class GradientAverager:
    """hook(leaves) for minigen.tensor.after_backward: the gradients of `parameters` that this
    backward() produced, averaged over the ranks in flat buckets (one all-reduce each).

    Every rank runs the same code, so the same parameters get gradients in the same order on
    every rank; the buckets follow the parameters' order. The averaged gradients are views of
    a bucket that is fresh each time, so nothing is copied back.
    """

    def __init__(self, communicator, parameters, bucket_bytes: int = BUCKET_BYTES):
        self.communicator, self.bucket_bytes = communicator, bucket_bytes
        self.parameters = list(parameters)

    def __call__(self, leaves) -> None:
        received = {id(leaf) for leaf in leaves}
        ready = [param for param in self.parameters
                 if id(param) in received and param.grad is not None]
        for bucket in _buckets([param.grad for param in ready], self.bucket_bytes):
            arrays = [grad.data for grad in bucket]
            flat = self.communicator.allreduce_mean_(_flatten(arrays))
            for grad, averaged in zip(bucket, _pieces(flat, arrays)):
                grad.data = averaged


def broadcast_tensors_(communicator, arrays: list, root: int = 0) -> None:
    """Overwrite each array in place with rank root's, in flat buckets."""
    holders = [Tensor(array) for array in arrays]
    for bucket in _buckets(holders, BUCKET_BYTES):
        parts = [holder.data for holder in bucket]
        flat = communicator.broadcast_(_flatten(parts), root)
        for part, received in zip(parts, _pieces(flat, parts)):
            part[...] = received


class DataParallel:
    """One loop trained on every rank of `communicator`: the harness's hooks.

    start() broadcasts rank 0's weights (models and EMAs); step(n) shards the draws of a step
    on local batches of n and averages the gradients of every backward() in it; after a step,
    finish_step() averages floating-point buffers (BatchNorm's running statistics: each rank
    normalises with its own shard's statistics, as PyTorch's DistributedDataParallel does) and
    sums the scalars to log with the stop requests, so every rank logs the global batch's values
    and stops after the same step.
    """

    def __init__(self, communicator, loop):
        self.communicator, self.loop = communicator, loop
        self.parallel = communicator.size > 1
        params = [param for model in loop.models().values() for param in model.parameters()]
        self.averager = GradientAverager(communicator, params)

    def _buffers(self) -> list:
        return [buffer for model in self.loop.models().values() for buffer in model.buffers()]

    def start(self) -> None:
        if not self.parallel:
            return
        arrays = [tensor.data for model in self.loop.models().values()
                  for tensor in (*model.parameters(), *model.buffers())]
        for ema in self.loop.emas().values():
            arrays += [*ema.shadow.values(), *ema.buffers.values()]
        broadcast_tensors_(self.communicator, arrays)

    @contextlib.contextmanager
    def step(self, local_batch: int):
        if not self.parallel:
            yield
            return
        rank, size = self.communicator.rank, self.communicator.size
        with backend.shard_draws(rank, size, local_batch), after_backward(self.averager):
            yield

    def finish_step(self, scalars: dict, signum: int | None) -> tuple[dict, int | None]:
        """(the scalars averaged over the ranks, the stop signal any rank received or None)."""
        if not self.parallel:
            return scalars, signum
        buffers = [buffer for buffer in self._buffers() if buffer.data.dtype.kind == "f"]
        for bucket in _buckets(buffers, BUCKET_BYTES):
            arrays = [buffer.data for buffer in bucket]
            flat = self.communicator.allreduce_mean_(_flatten(arrays))
            for array, averaged in zip(arrays, _pieces(flat, arrays)):
                array[...] = averaged
        keys = list(scalars)
        requests = [signum == signal.SIGINT, signum == signal.SIGTERM]
        summed = self.communicator.sum_([*(scalars[key] for key in keys), *requests])
        size = self.communicator.size
        averaged = {key: float(value) / size for key, value in zip(keys, summed)}
        stop = signal.SIGINT if summed[-2] else signal.SIGTERM if summed[-1] else None
        return averaged, stop
