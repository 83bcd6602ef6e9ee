"""MNIST and Fashion-MNIST: the IDX file reader and the download into a cache folder.

The IDX format (LeCun's MNIST page) is a 4-byte magic number (two zero bytes, a type
code, the number of dimensions), one big-endian int32 per dimension, then the raw data.
`load_idx_dataset` finds the four standard files in a folder the user names or in the cache,
downloads the missing ones when the machine is online, and says which files to put where
when it is not. minigen.data turns the arrays into a Dataset.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

# Type codes of the IDX format; every number in the file is big-endian.
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

# The four files of each dataset, by role. Names are those of the original distribution.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Mirrors are tried in order; each serves the gzipped files under their standard names.
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

DOWNLOAD_TIMEOUT_S = 30
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzipped or not, into a native-endian array of the header's shape.

    Raises ValueError naming the file when the magic number is wrong, the file is
    truncated, or it holds more bytes than its header announces.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:  # gzip checks its CRC-32 and length, so damage to a .gz file is always seen
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error, MemoryError) as error:
            raise ValueError(f"{path}: the gzip stream is truncated or corrupt ({error}); "
                             "delete the file and download it again") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file: only {len(raw)} bytes, fewer than the "
                         "4-byte magic number")
    zero_bytes, type_code, ndim = raw[:2], raw[2], raw[3]
    if zero_bytes != b"\x00\x00" or type_code not in IDX_DTYPES or ndim == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise ValueError(f"{path}: wrong magic number 0x{magic:08X}; an IDX file starts with "
                         "0x0000, a type code and the number of dimensions (0x00000803 for "
                         "images, 0x00000801 for labels); is this the right file?")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated: the header announces {ndim} dimensions but the "
                         f"file ends after {len(raw)} bytes; download it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a damaged header cannot overflow
    found = len(raw) - header_size
    if found < expected:
        raise ValueError(f"{path}: truncated: the header announces shape {shape} "
                         f"({expected} bytes of data) but the file holds only {found}; "
                         "download it again")
    if found > expected:
        raise ValueError(f"{path}: {found - expected} bytes after the data announced by the "
                         f"header (shape {shape}); the file is corrupt or not an IDX file")
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header_size)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def cache_dir(name: str) -> Path:
    """Where downloads of dataset `name` go: $MINIGEN_CACHE/NAME, else ~/.cache/minigen/NAME."""
    root = os.environ.get("MINIGEN_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "minigen"
    return Path(root).expanduser() / name


def _find(base_name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / (base_name + ".gz"), folder / base_name):
            if candidate.is_file():
                return candidate
    return None


def _urlopen(url: str, timeout: float):
    """The one network call (a module-level seam so tests can replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _download(url: str, target: Path) -> None:
    """Stream `url` to `target` with a progress bar; a partial file never takes its name."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    with _urlopen(url, DOWNLOAD_TIMEOUT_S) as response:
        total = response.headers.get("Content-Length") if response.headers else None
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".")
        try:
            with os.fdopen(handle, "wb") as out, tqdm(
                    total=int(total) if total else None, unit="B", unit_scale=True,
                    desc=target.name, leave=False) as progress:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    progress.update(len(chunk))
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise


def _missing_files_message(name: str, folders: list[Path], reason: str) -> str:
    files = ", ".join(base + ".gz" for base in IDX_FILES.values())
    searched = ", ".join(str(folder) for folder in folders)
    return (f"{name}: the IDX files are not in {searched} and downloading them failed "
            f"({reason}). Put these 4 files (gzipped or not) in {cache_dir(name)}, or in a "
            f"folder that you pass as --data-dir: {files} (from {MIRRORS[name][0]})")


def idx_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The paths of the 4 IDX files of `name` (keys as in IDX_FILES), downloading if needed.

    Looks in data_dir, data_dir/NAME, then the cache folder; missing files are downloaded
    into the cache. Offline, raises FileNotFoundError naming the files and the folder.
    """
    folders = [Path(data_dir), Path(data_dir) / name] if data_dir is not None else []
    folders.append(cache_dir(name))
    paths = {role: _find(base, folders) for role, base in IDX_FILES.items()}
    for role, path in paths.items():
        if path is not None:
            continue
        target = cache_dir(name) / (IDX_FILES[role] + ".gz")
        errors = []
        for mirror in MIRRORS[name]:
            try:
                _download(mirror + target.name, target)
                break
            except OSError as error:  # URLError, timeouts and HTTP errors are all OSErrors
                errors.append(f"{mirror + target.name}: {getattr(error, 'reason', error)}")
        else:
            raise FileNotFoundError(_missing_files_message(name, folders, "; ".join(errors)))
        paths[role] = target
    return paths


def load_idx_dataset(name: str, data_dir=None):
    """(train_images, train_labels, test_images, test_labels) as uint8 (N, H, W) and int64 (N,)."""
    paths = idx_files(name, data_dir)
    arrays = {role: read_idx(path) for role, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.ndim != 3:
            raise ValueError(f"{image_path}: expected images of 3 dimensions (count, rows, "
                             f"columns) but the file holds shape {images.shape}; are the "
                             "images and labels files swapped?")
        if labels.ndim != 1:
            raise ValueError(f"{label_path}: expected labels of 1 dimension (count,) but the "
                             f"file holds shape {labels.shape}; are the images and labels "
                             "files swapped?")
        if images.dtype != np.uint8:
            raise ValueError(f"{image_path}: the images are {images.dtype}, but MNIST's are "
                             "unsigned bytes (type code 0x08); the file is damaged or another "
                             "dataset's")
        if labels.dtype != np.uint8 or (labels.size and labels.max() > 9):
            raise ValueError(f"{label_path}: labels of type {labels.dtype} spanning "
                             f"{labels.min() if labels.size else '-'}..."
                             f"{labels.max() if labels.size else '-'}, but MNIST's are bytes "
                             "0..9; the file is damaged or another dataset's")
        if len(images) != len(labels):
            raise ValueError(f"{name}: {image_path} holds {len(images)} images but "
                             f"{label_path} holds {len(labels)} labels; one of them is from "
                             "another dataset or damaged")
    return (arrays["train_images"], arrays["train_labels"].astype(np.int64),
            arrays["test_images"], arrays["test_labels"].astype(np.int64))
