"""Where Numba caches the CPU kernels: a directory named by a hash of every kernel source, so
that editing any file of kernels/ recompiles all of them.

Numba's own cache checks only the file that defines a function, but a cached function holds
the compiled code of everything it calls. So after an edit of winograd.py, the Winograd loops
of winograd_parallel.py, whose file had not changed, kept running the old transforms from
their cache: silently, until the cache was cleared. A directory per version of the sources
cannot mix them.

The directory is numba-<hash> under NUMBA_CACHE_DIR where one is set, else under
kernels/__pycache__ (where Numba would put it) where that can be written, else under the
user's cache directory. In kernels/__pycache__, the directories of other versions and the
files of Numba's default layout are removed. Every module of kernels/ that caches compiled
functions imports this one before it defines them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numba

KERNELS = Path(__file__).resolve().parent


def source_hash() -> str:
    """A hash of the kernel sources (kernels/*.py, their names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(KERNELS.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def _prune(root: Path, keep: str) -> None:
    """Remove the caches of other source versions, and Numba's default-layout files, from
    kernels/__pycache__ (best effort: another process may be doing the same)."""
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith("numba-") and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.suffix in (".nbi", ".nbc"):
            entry.unlink(missing_ok=True)


def cache_directory() -> Path:
    """The cache directory for this version of the kernel sources, created (see above)."""
    name = f"numba-{source_hash()}"
    user_set = os.environ.get("NUMBA_CACHE_DIR")
    if user_set:
        return Path(user_set) / name
    local = KERNELS / "__pycache__"
    if _writable(local):
        _prune(local, name)
        return local / name
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "minigen" / name


CACHE_DIRECTORY = cache_directory()
numba.config.CACHE_DIR = str(CACHE_DIRECTORY)
