"""Write failures: a full disk (ENOSPC), a file size limit (EFBIG), a failing disk (EIO) or a
permission (EACCES) while saving a checkpoint, a picture or the log is one line naming the file,
the bytes needed and the bytes free; the temporary file is removed, the previous file is whole,
and a run exits non-zero, never on a signal.

EFBIG is made portably, without root: a child process with RLIMIT_FSIZE set low and SIGXFSZ
ignored. ENOSPC needs a small tmpfs, mounted where this process may mount (root on Linux); the
tests that need it skip elsewhere.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minigen.files
from minigen.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minigen.files import WriteError, write_atomically
from minigen.run import train
from tiny_loop import TESTS_DIR, TinyLoop, cheap_plots, subprocess_env, tiny_config  # noqa: F401


class Holder:
    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state, strict=True):
        self.state = state


def weights(size: int, value: float = 1.0) -> Holder:
    return Holder({"weight": np.full(size, value, np.float32)})


def leftovers(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def limited_file_size(limit: int):
    """preexec_fn: files of at most `limit` bytes; SIGXFSZ ignored, so writes get EFBIG."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_limited(code: str, limit: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          preexec_fn=limited_file_size(limit), env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


# --- EFBIG: a child process under a file size limit ----------------------------------------
SAVE_BIG = """
    import sys
    import numpy as np
    from minigen.checkpoint import CheckpointError, save_checkpoint

    class Holder:
        def __init__(self, state): self.state = state
        def state_dict(self): return self.state

    try:
        save_checkpoint(sys.argv[1],
                        models={"G": Holder({"weight": np.zeros(200_000, np.float32)})})
    except CheckpointError as error:
        print(error)
        sys.exit(3)
"""


def test_a_checkpoint_over_the_file_size_limit_is_one_line_and_keeps_the_previous(tmp_path):
    path = str(tmp_path / "checkpoint.h5")
    save_checkpoint(path, models={"G": weights(100, 7.0)}, step=3)
    before = open(path, "rb").read()
    result = run_limited(SAVE_BIG, 100_000, path)
    assert result.returncode == 3, result.stderr
    message = result.stdout.strip()
    assert "\n" not in message and result.stderr == ""
    assert message.startswith(f"cannot save {path}: the file is larger than the process's file "
                              "size limit (EFBIG): it needs ")
    needed = int(message.split("it needs ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > 800_000 and "bytes are free, limit 100,000 bytes" in message
    assert message.endswith("the previous checkpoint is untouched")
    assert open(path, "rb").read() == before and leftovers(tmp_path) == []
    model = weights(100, 0.0)
    assert load_checkpoint(path, models={"G": model})["step"] == 3
    np.testing.assert_array_equal(model.state["weight"], np.full(100, 7.0, np.float32))


@pytest.mark.usefixtures("cheap_plots")
def test_a_run_that_cannot_save_exits_2_with_one_line_and_keeps_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    common = ["-m", "minigen", "train", "tiny", "--out", str(out), "--eval-samples", "0",
              "--hidden", "512"]
    train(TinyLoop, tiny_config(out, steps=5, hidden=512), say=lambda _: None)
    checkpoint = out / "checkpoint.h5"
    before = checkpoint.read_bytes()
    limit = len(before) // 2
    result = subprocess.run([sys.executable, *common, "--steps", "10", "--resume",
                             str(checkpoint)], env=subprocess_env(), capture_output=True,
                            text=True, timeout=120, preexec_fn=limited_file_size(limit))
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr
    assert error_lines[0].startswith(f"minigen: error: cannot save {checkpoint}: the file is "
                                     "larger than the process's file size limit (EFBIG)")
    assert f"limit {limit:,} bytes" in error_lines[0]
    assert checkpoint.read_bytes() == before and leftovers(out) == []


PICTURE_AND_LOG = """
    import sys
    from pathlib import Path
    import numpy as np
    from minigen import viz
    from minigen.files import WriteError
    from minigen.steplog import StepLog

    folder = Path(sys.argv[1])
    try:
        viz.save_image_grid(np.random.default_rng(0).uniform(-1, 1, (64, 3, 32, 32)),
                            folder / "samples.png")
    except WriteError as error:
        print(error)
    log = StepLog(folder / "log.csv", 0)
    try:
        for step in range(10_000):
            log.append(step, {"loss": 0.123456789, "lr": 0.001}, 1.5)
    except WriteError as error:
        print(error)
    log.close()
    print(len(log.rows))
"""


def test_pictures_and_the_log_over_the_file_size_limit_are_one_line_each(tmp_path):
    (tmp_path / "samples.png").write_bytes(b"the previous picture")
    result = run_limited(PICTURE_AND_LOG, 20_000, str(tmp_path))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    picture, log, rows = result.stdout.strip().splitlines()
    assert picture.startswith(f"cannot write {tmp_path / 'samples.png'}: the file is larger "
                              "than the process's file size limit (EFBIG): it needs ")
    assert picture.endswith("; the previous samples.png is untouched")
    assert (tmp_path / "samples.png").read_bytes() == b"the previous picture"
    assert log.startswith(f"cannot write {tmp_path / 'log.csv'}: the file is larger than the "
                          "process's file size limit (EFBIG): it needs ")
    assert log.endswith("the rows before it are kept")
    assert os.path.getsize(tmp_path / "log.csv") <= 20_000 and int(rows) > 100
    assert leftovers(tmp_path) == []


# --- EIO and EACCES: a failing disk and a refused permission, simulated -------------------
class FailingOs:
    """os, except that one function fails with one errno."""

    def __init__(self, name: str, code: int):
        self.name, self.code = name, code

    def __getattr__(self, attribute):
        if attribute == self.name:
            def fail(*args, **kwargs):
                raise OSError(self.code, os.strerror(self.code))
            return fail
        return getattr(os, attribute)


@pytest.mark.parametrize("function, code, cause", [
    ("write", errno.EIO, "the disk reported an input/output error (EIO)"),
    ("fsync", errno.EIO, "the disk reported an input/output error (EIO)"),
    ("replace", errno.EACCES, "permission denied (EACCES)"),
    ("write", errno.ENOSPC, "the disk is full (ENOSPC)"),
])
def test_each_write_failure_names_its_cause_and_removes_the_temporary_file(
        tmp_path, monkeypatch, function, code, cause):
    path = str(tmp_path / "checkpoint.h5")
    save_checkpoint(path, models={"G": weights(10, 2.0)})
    before = open(path, "rb").read()
    monkeypatch.setattr(minigen.files, "os", FailingOs(function, code))
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(path, models={"G": weights(1000)})
    message = str(caught.value)
    assert message.startswith(f"cannot save {path}: {cause}: it needs ") and "\n" not in message
    assert "bytes are free" in message
    monkeypatch.undo()
    assert open(path, "rb").read() == before and leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders; needs an unprivileged user")
def test_a_read_only_folder_is_one_line(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"permission denied \(EACCES\)"):
            write_atomically(tmp_path / "config.json", "{}")
    finally:
        tmp_path.chmod(0o700)


# --- ENOSPC: a small tmpfs -------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path / "disk", where mounting is allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_one_line_with_the_bytes_needed_and_free(small_disk):
    path = str(small_disk / "checkpoint.h5")
    save_checkpoint(path, models={"G": weights(50_000, 3.0)}, step=1)  # 200 kB of 1 MiB
    before = open(path, "rb").read()
    free_before = minigen.files.free_bytes(small_disk)
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(path, models={"G": weights(400_000)}, step=2)  # 1.6 MB
    message = str(caught.value)
    assert message.startswith(f"cannot save {path}: the disk is full (ENOSPC): it needs ")
    assert f"{free_before:,} bytes are free" in message and "\n" not in message
    assert message.endswith("the previous checkpoint is untouched")
    assert leftovers(small_disk) == [] and minigen.files.free_bytes(small_disk) == free_before
    assert open(path, "rb").read() == before
    assert load_checkpoint(path, models={"G": weights(50_000)})["step"] == 1


def test_a_run_on_a_full_disk_exits_2_and_keeps_its_last_checkpoint(small_disk):
    """The first checkpoint (about 600 kB) fits on the 1 MiB disk; the second, written beside
    it before the rename, does not."""
    out = small_disk / "run"
    result = subprocess.run([sys.executable, "-m", "minigen", "train", "tiny", "--out", str(out),
                             "--steps", "10", "--checkpoint-every", "5", "--hidden", "10000",
                             "--eval-samples", "0"], env=subprocess_env(), capture_output=True,
                            text=True, timeout=120, cwd=TESTS_DIR)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"minigen: error: cannot save {out / 'checkpoint.h5'}: the disk is "
                            "full (ENOSPC): it needs ")
    assert error.endswith("the previous checkpoint is untouched")
    assert leftovers(out) == []
    json.loads((out / "config.json").read_text())
    assert load_checkpoint(out / "checkpoint.h5", restore_rng=False)["step"] == 5
