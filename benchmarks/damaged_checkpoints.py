"""How minigen treats damaged copies of a real checkpoint, measured from the command line.

    python benchmarks/damaged_checkpoints.py runs/ddpm-digits/checkpoint.h5 --copies 40

Makes COPIES copies of CKPT, half with 8 random bytes flipped and half with a 512-byte block
zeroed, and runs `minigen inspect` and `minigen sample --n 4 --out x.npy` on each. A copy is
intact when h5py, reading it without minigen's checks (in a child under a timeout: HDF5 can
hang on damaged files), gets back every attribute and array of the original; only intact
copies may load. Prints one line per copy and the counts last.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np


# Reads every attribute and array with h5py alone and prints a SHA-256 of them all. It runs
# in a child process under a timeout: without checks, HDF5 can hang or crash on damaged files.
CONTENT_DIGEST = """
import hashlib, sys
import h5py, numpy as np
digest = hashlib.sha256()
def add(name, item):
    digest.update(name.encode())
    for key in sorted(item.attrs):
        value = np.asarray(item.attrs[key])
        digest.update(key.encode() + repr(value.tolist()).encode() + value.dtype.str.encode())
    if isinstance(item, h5py.Dataset):
        data = item[...]
        digest.update(data.dtype.str.encode() + repr(data.shape).encode() + data.tobytes())
with h5py.File(sys.argv[1], "r") as file:
    add("/", file)
    file.visititems(add)
print(digest.hexdigest())
"""


def content(path: str) -> str | None:
    """A digest of what h5py reads from `path` without minigen's checks; None if it cannot."""
    try:
        result = subprocess.run([sys.executable, "-c", CONTENT_DIGEST, path],
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def damage(data: bytes, copy_index: int, rng: np.random.Generator) -> tuple[bytes, str]:
    copy = bytearray(data)
    if copy_index % 2 == 0:
        for position in rng.choice(len(copy), size=8, replace=False):
            copy[position] ^= int(rng.integers(1, 256))
        return bytes(copy), "8 bytes flipped"
    start = int(rng.integers(0, len(copy) - 512))
    copy[start:start + 512] = bytes(512)
    return bytes(copy), f"512 bytes zeroed at {start}"


def minigen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minigen", *args], capture_output=True,
                          text=True, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    original, data = content(args.checkpoint), open(args.checkpoint, "rb").read()
    rng = np.random.default_rng(args.seed)
    folder = tempfile.mkdtemp(prefix="damaged-")
    counts = {"refused": 0, "loaded intact": 0, "loaded damaged": 0, "refused but intact": 0,
              "not one line": 0}
    try:
        for index in range(args.copies):
            damaged, how = damage(data, index, rng)
            path = os.path.join(folder, f"copy{index}.h5")
            with open(path, "wb") as handle:
                handle.write(damaged)
            found = content(path)
            intact = found is not None and found == original
            inspect = minigen("inspect", path)
            sample = minigen("sample", path, "--n", "4", "--out", os.path.join(folder, "x.npy"))
            loaded = inspect.returncode == 0 or sample.returncode == 0
            errors = [run.stderr.strip() for run in (inspect, sample) if run.returncode != 0]
            if any("\n" in error or "Traceback" in error for error in errors):
                counts["not one line"] += 1
            if loaded:
                counts["loaded intact" if intact else "loaded damaged"] += 1
            else:
                counts["refused"] += 1
                counts["refused but intact"] += intact
            print(f"copy {index:3d} ({how}): {'loaded' if loaded else 'refused'}"
                  f"{' (intact)' if intact else ''}"
                  f"{': ' + errors[0][:160] if errors else ''}", flush=True)
    finally:
        shutil.rmtree(folder)
    print(", ".join(f"{key}: {value}" for key, value in counts.items()))


if __name__ == "__main__":
    main()
