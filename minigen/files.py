"""Writing a run's files so that a full disk or a failing write ends in one clear line.

`write_atomically(path, data)` writes bytes under a temporary name in the same folder, syncs
them to disk and renames them over `path`: a crash, a full disk (ENOSPC), a file size limit
(EFBIG), a permission (EACCES) or a disk error (EIO) leaves the previous file whole and no
temporary file behind, and becomes a `WriteError` naming the file, the bytes it needed and the
bytes free. Checkpoints (minigen.checkpoint), pictures (minigen.viz), config.json and
metrics.json go through it; log.csv appends rows and reports its failures the same way.
"""
from __future__ import annotations

import errno
import os
import tempfile

from minigen.loop import UserError

# What each write failure means to a user, and what to do about it.
_CAUSES = {
    errno.ENOSPC: ("the disk is full (ENOSPC)", "free some space or pass --out on another disk"),
    errno.EDQUOT: ("the disk quota is used up (EDQUOT)", "free some space or raise the quota"),
    errno.EFBIG: ("the file is larger than the process's file size limit (EFBIG)",
                  "raise the limit (ulimit -f) or write smaller files"),
    errno.EACCES: ("permission denied (EACCES)", "check the folder's owner and permissions"),
    errno.EPERM: ("the operation is not permitted (EPERM)", "check the folder's permissions"),
    errno.EROFS: ("the disk is read-only (EROFS)", "pass --out on a writable disk"),
    errno.EIO: ("the disk reported an input/output error (EIO)",
                "check the disk (dmesg) and pass --out on a healthy one"),
}


class WriteError(UserError):
    """A file could not be written; the message is one line naming the file, the cause, the
    bytes needed and the bytes free."""


def free_bytes(directory: str | os.PathLike) -> int | None:
    """Bytes an unprivileged process may still write on the disk holding `directory`."""
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):  # no statvfs on Windows; a vanished folder
        return None
    return stats.f_bavail * stats.f_frsize


def describe_write_error(path: str | os.PathLike, error: OSError, needed: int | None,
                         after: str = "") -> str:
    """One line: which file, why it failed, the bytes it needed (None: not known, as when the
    file cannot be created) and the bytes free, the fix."""
    path = os.fspath(path)
    cause, fix = _CAUSES.get(error.errno, (f"{error.strerror or error} "
                                           f"({errno.errorcode.get(error.errno, error.errno)})",
                                           "check the disk and the folder"))
    free = free_bytes(os.path.dirname(os.path.abspath(path)) or ".")
    free_text = "unknown" if free is None else f"{free:,}"
    limit = ""
    if error.errno == errno.EFBIG:
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if soft != resource.RLIM_INFINITY:
                limit = f", limit {soft:,} bytes"
        except (ImportError, OSError, ValueError):
            pass
    needs = "" if needed is None else f"it needs {needed:,} bytes and "
    return f"cannot write {path}: {cause}: {needs}{free_text} bytes are free{limit}; {fix}{after}"


def _fsync_directory(directory: str) -> None:
    """Make a rename durable; Windows cannot open a directory, and needs no fsync."""
    if os.name == "nt":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def new_file_mode(path: str) -> int:
    """Keep an existing file's permissions; a new one gets the usual 0o666 minus umask
    (mkstemp would otherwise leave it readable by its owner only)."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_prefix(path: str) -> str:
    """Temporary files of `path` are named .NAME.<random>.tmp, in the same folder."""
    return f".{os.path.basename(path)}."


def write_atomically(path: str | os.PathLike, data: bytes | str, kept: str | None = None) -> None:
    """Replace `path` by `data` (bytes, or str written as UTF-8) all at once.

    Writes a temporary file in the same folder with plain file I/O, syncs it, renames it over
    `path` and syncs the folder. On any OSError the temporary file is removed, `path` is left
    as it was, and a WriteError says what failed (see describe_write_error), ending with
    `kept` (default: that the previous file is untouched, or that none was written).
    """
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    temp_path = None
    if kept is None:
        kept = (f"; the previous {os.path.basename(path)} is untouched" if os.path.exists(path)
                else f"; no {os.path.basename(path)} was written")
    try:
        os.makedirs(directory, exist_ok=True)
        mode = new_file_mode(path)
        descriptor, temp_path = tempfile.mkstemp(dir=directory, prefix=temp_prefix(path),
                                                 suffix=".tmp")
        with os.fdopen(descriptor, "wb") as handle:
            view = memoryview(data)
            while view:  # os.write may write less than asked (a signal, a nearly full disk)
                view = view[os.write(handle.fileno(), view):]
            os.fsync(handle.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, path)
        temp_path = None
        _fsync_directory(directory)
    except OSError as error:
        _remove(temp_path)
        raise WriteError(describe_write_error(path, error, len(data), kept)) from None
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        _remove(temp_path)
        raise


def _remove(temp_path: str | None) -> None:
    if temp_path is not None:
        try:
            os.remove(temp_path)
        except OSError:
            pass
