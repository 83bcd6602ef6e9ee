"""Fuzzed loaders: a real checkpoint, IDX files, an .npz and a folder of PNGs, damaged hundreds
of times (random bytes flipped, 512-byte blocks zeroed, truncations, wrong headers), each copy
either loads exactly what was saved or is refused with the project's one-line error naming the
file: never a traceback from h5py, NumPy, zipfile or Pillow, a crash or a hang.

Each kind of file is fuzzed in a child process under a timeout, so a crash (a segfault inside
HDF5) or a hang fails the test instead of taking pytest down. The one exception to "loads
exactly": a raw (not gzipped) IDX file has no checksum, so damage to its pixels is not seen;
for it only damage to the header and truncations are held to the rule, and the rest must load
with the header's shape or be refused.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

COPIES = {"checkpoint": 160, "idx_gz": 80, "idx_raw": 80, "npz": 120, "png_folder": 120}
KINDS = ("flip", "zero_block", "truncate", "header")
TIMEOUT_S = 120


# --- damage -------------------------------------------------------------------------------
def damage(data: bytes, kind: str, rng: np.random.Generator, header_size: int = 16) -> bytes:
    """One damaged copy: 8 random bytes flipped, a 512-byte block zeroed, the file cut short,
    or the header (the first header_size bytes) overwritten with random bytes."""
    copy = bytearray(data)
    if kind == "flip":
        for position in rng.choice(len(copy), size=min(8, len(copy)), replace=False):
            copy[position] ^= int(rng.integers(1, 256))
    elif kind == "zero_block":
        start = int(rng.integers(0, max(1, len(copy) - 512)))
        end = min(len(copy), start + 512)
        if not any(copy[start:end]):  # already zeros: that would damage nothing
            copy[start] = 1
        copy[start:end] = bytes(end - start)
    elif kind == "truncate":
        copy = copy[:int(rng.integers(0, len(copy)))]
    else:
        size = min(header_size, len(copy))
        copy[:size] = rng.bytes(size)
        if copy[:size] == data[:size]:
            copy[0] ^= 0xFF
    return bytes(copy)


def same(first, second) -> bool:
    """Equal nested structures, arrays equal bit for bit (dtype and shape included)."""
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        return (isinstance(first, np.ndarray) and isinstance(second, np.ndarray)
                and first.dtype == second.dtype and first.shape == second.shape
                and first.tobytes() == second.tobytes())
    if isinstance(first, dict):
        return (isinstance(second, dict) and first.keys() == second.keys()
                and all(same(first[key], second[key]) for key in first))
    if isinstance(first, (list, tuple)):
        return (isinstance(second, (list, tuple)) and len(first) == len(second)
                and all(same(a, b) for a, b in zip(first, second)))
    return type(first) is type(second) and first == second


# --- the files and how each is loaded -----------------------------------------------------
def _checkpoint_target(folder: Path):
    import minigen
    import minigen.functional as F
    from minigen import nn, optim
    from minigen.checkpoint import CheckpointError, inspect_checkpoint, load_checkpoint, \
        save_checkpoint

    def build():
        minigen.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 48), nn.SiLU(), nn.Linear(48, 48), nn.SiLU(),
                              nn.Linear(48, 4))
        return model, optim.Adam(model.parameters(), lr=1e-3), optim.EMA(model, decay=0.9)

    model, optimizer, ema = build()
    for _ in range(2):
        loss = F.mse_loss(model(minigen.randn(16, 4)), minigen.zeros(16, 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update()
    path = folder / "checkpoint.h5"
    save_checkpoint(path, models={"mlp": model}, optimizers={"adam": optimizer},
                    ema={"mlp": ema}, step=2, config={"lr": 1e-3, "dataset": "ring8"},
                    extra={"seconds": 1.5})

    def content(model, optimizer, ema, state):
        return {"model": {k: v.data for k, v in model.state_dict().items()},
                "adam": optimizer.state_dict(), "ema": ema.state_dict(),
                **{key: state[key] for key in ("step", "config", "rng_state", "extra")}}

    def load(target: Path):
        fresh = build()
        state = load_checkpoint(target, models={"mlp": fresh[0]}, optimizers={"adam": fresh[1]},
                                ema={"mlp": fresh[2]}, restore_rng=False)
        listing = inspect_checkpoint(target)  # must agree with the load
        assert listing.splitlines()[-1].startswith("verified: ")
        return content(*fresh, state)

    return {path.name: path.read_bytes()}, load, CheckpointError, 64


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _idx_target(folder: Path, gzipped: bool):
    from minigen.idx import read_idx

    images = np.random.default_rng(0).integers(0, 256, size=(60, 8, 8), dtype=np.uint8)
    data = _idx_bytes(images)
    name = "train-images-idx3-ubyte" + (".gz" if gzipped else "")
    if gzipped:
        data = gzip.compress(data, mtime=0)

    def load(target: Path):
        return read_idx(target)

    return {name: data}, load, ValueError, 16


def _npz_target(folder: Path):
    import io

    from minigen.data import load_dataset

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.integers(0, 256, size=(40, 8, 8), dtype=np.uint8),
             y=rng.integers(0, 10, size=40))
    path = folder / "digits.npz"

    def load(target: Path):
        dataset = load_dataset(str(target))
        return [dataset.train, dataset.test, dataset.train_labels, dataset.test_labels]

    return {path.name: buffer.getvalue()}, load, ValueError, 64


def _png_target(folder: Path):
    import io

    from PIL import Image

    from minigen.data import load_dataset

    rng = np.random.default_rng(0)
    files = {}
    for label in ("cat", "dog"):
        for index in range(3):
            buffer = io.BytesIO()
            pixels = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, format="PNG")
            files[f"{label}/{index}.png"] = buffer.getvalue()

    def load(target: Path):
        dataset = load_dataset(str(target))
        return [dataset.train, dataset.test, dataset.train_labels, dataset.test_labels]

    return files, load, ValueError, 33  # signature, IHDR


def fuzz(name: str, copies: int, seed: int = 0) -> dict:
    """Damage the files of target `name` `copies` times; returns the outcome counts and the
    copies that broke the rule (which the test shows)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    builders = {"checkpoint": _checkpoint_target, "idx_gz": lambda f: _idx_target(f, True),
                "idx_raw": lambda f: _idx_target(f, False), "npz": _npz_target,
                "png_folder": _png_target}
    files, load, error_type, header_size = builders[name](folder)
    single = len(files) == 1

    def write(contents: dict) -> Path:
        for relative, data in contents.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(data)
        return folder / next(iter(contents))

    write(files)
    original = load(folder / next(iter(files)) if single else folder)
    rng = np.random.default_rng([seed, len(name)])
    outcomes = {"refused": 0, "loaded intact": 0, "loaded, no checksum to tell": 0}
    failures = []
    victim = None
    for copy_index in range(copies):
        kind = KINDS[copy_index % len(KINDS)]
        if victim is not None:
            write({victim: files[victim]})  # the last copy's damaged file made whole again
        victim = list(files)[int(rng.integers(len(files)))]
        target = write({victim: damage(files[victim], kind, rng, header_size)})
        target = target if single else folder
        where = f"copy {copy_index} ({kind} of {victim})"
        try:
            loaded = load(target)
        except error_type as error:
            message = str(error)
            if "\n" in message or str(folder / victim) not in message:
                failures.append(f"{where}: the error is not one line naming the file: "
                                f"{message!r}")
            outcomes["refused"] += 1
            continue
        except Exception as error:  # noqa: BLE001 -- exactly what the loaders must not raise
            failures.append(f"{where}: {type(error).__name__}: {error}")
            continue
        if same(loaded, original):
            outcomes["loaded intact"] += 1
        elif name == "idx_raw" and kind in ("flip", "zero_block"):
            if loaded.shape != original.shape or loaded.dtype != original.dtype:
                failures.append(f"{where}: loaded with shape {loaded.shape}, {loaded.dtype}")
            outcomes["loaded, no checksum to tell"] += 1
        else:
            failures.append(f"{where}: loaded with different content")
    return {"outcomes": outcomes, "failures": failures}


# --- the tests ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(COPIES))
def test_damaged_copies_load_intact_or_are_refused_in_one_line(name):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = ("import faulthandler, json, sys; faulthandler.enable(); "
            "from test_fuzz_loaders import fuzz; "
            f"print(json.dumps(fuzz({name!r}, {COPIES[name]})))")
    paths = [tests_dir, os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fuzzing {name} hung for {TIMEOUT_S} s")
    assert result.returncode == 0, f"the child crashed ({result.returncode}):\n{result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], "\n".join(report["failures"][:10])
    outcomes = report["outcomes"]
    assert sum(outcomes.values()) == COPIES[name]
    # Most damage hits content the formats check: the test bites.
    assert outcomes["refused"] > COPIES[name] // 2, outcomes
