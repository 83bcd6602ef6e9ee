"""Where the CPU kernels are cached (kernels/numba_cache.py): a directory per version of the
kernel sources, so that a cached function never runs the old code of a function it calls
from another file."""
from __future__ import annotations

import os
import subprocess
import sys

from minigen.kernels import numba_cache


def _sources(directory, **files):
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_the_hash_changes_with_any_kernel_source(tmp_path, monkeypatch):
    monkeypatch.setattr(numba_cache, "KERNELS", _sources(tmp_path, **{"a.py": "x = 1\n",
                                                                       "b.py": "y = 2\n"}))
    first = numba_cache.source_hash()
    assert numba_cache.source_hash() == first
    (tmp_path / "b.py").write_text("y = 3\n")  # a callee's file, not the caller's
    assert numba_cache.source_hash() != first
    (tmp_path / "b.py").write_text("y = 2\n")
    assert numba_cache.source_hash() == first
    (tmp_path / "c.py").write_text("")  # a new module counts too
    assert numba_cache.source_hash() != first


def test_a_numba_cache_dir_of_the_users_holds_one_directory_per_version(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    directory = numba_cache.cache_directory()
    assert directory.parent == tmp_path / "mine"
    assert directory.name == f"numba-{numba_cache.source_hash()}"


def test_the_local_cache_drops_other_versions_and_numbas_default_files(tmp_path, monkeypatch):
    kernels = _sources(tmp_path, **{"a.py": "x = 1\n"})
    cache = kernels / "__pycache__"
    (cache / "numba-0123456789abcdef" / "kernels").mkdir(parents=True)
    (cache / "numba-0123456789abcdef" / "kernels" / "a.f-1.py311.nbi").write_bytes(b"old")
    (cache / "a.f-1.py311.nbi").write_bytes(b"old")
    (cache / "a.f-1.py311.1.nbc").write_bytes(b"old")
    (cache / "a.cpython-311.pyc").write_bytes(b"python's")
    monkeypatch.setattr(numba_cache, "KERNELS", kernels)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    directory = numba_cache.cache_directory()
    assert directory == cache / f"numba-{numba_cache.source_hash()}"
    assert sorted(entry.name for entry in cache.iterdir()) == ["a.cpython-311.pyc"]


def test_compiled_kernels_land_in_the_directory_of_this_version(tmp_path):
    code = ("import numpy as np\n"
            "from minigen.kernels import cpu, numba_cache\n"
            "x = np.ones((1, 2, 4, 4), np.float32)\n"
            "cpu.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))\n"
            "print(numba_cache.CACHE_DIRECTORY)\n")
    environment = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                            text=True, timeout=300, check=True)
    directory = tmp_path / f"numba-{numba_cache.source_hash()}"
    assert result.stdout.strip() == str(directory)
    assert list(directory.rglob("*.nbi")), "no cache index written there"
    assert not [path for path in tmp_path.rglob("*.nbi") if directory not in path.parents]
