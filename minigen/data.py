"""Datasets as plain arrays, and shuffled mini-batches whose order is a function of (seed, step).

`load_dataset(name)` returns a `Dataset`: images as float32 in [-1, 1] laid out NCHW, or
points as float32 (N, D), with labels and a fixed held-out split. Sources: the 8x8 digits
bundled with scikit-learn (the default, nothing downloaded), MNIST / Fashion-MNIST (see
minigen.idx), toy mixtures of Gaussians for GANs, and any .npy / .npz file or folder of PNGs.
`Batcher` draws the mini-batches; `Dataset.to("cuda")` puts the arrays on the GPU first.
A damaged or malformed file is a ValueError naming it (the zip and PNG CRC-32s are checked),
never a traceback from NumPy, zipfile or Pillow.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from minigen import backend
from minigen.idx import load_idx_dataset

TOY_DATASETS = ("gauss1d", "ring8", "grid25", "swissroll")
IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist")
KNOWN_DATASETS = IMAGE_DATASETS + TOY_DATASETS

TOY_TRAIN_SIZE = 20_000
TOY_TEST_SIZE = 2_500
DIGITS_TEST_SIZE = 297      # 1,797 digits: 1,500 to train on, 297 held out
FILE_TEST_FRACTION = 0.1    # held out from .npy / .npz / PNG data that has no test split
SPLIT_SEED = 0              # the held-out split never depends on the run's seed


@dataclasses.dataclass
class Dataset:
    """A dataset held as arrays (NumPy, or CuPy after `.to("cuda")`).

    train, test: images (N, C, H, W) float32 in [-1, 1], or points (N, D) float32.
    train_labels, test_labels: int64 (N,) or None. centres (K, D) and std: the mixture's
    modes for toy data (mode-coverage metrics), None otherwise.
    """
    name: str
    kind: str  # "images" or "points"
    train: Any
    test: Any
    train_labels: Any = None
    test_labels: Any = None
    num_classes: int | None = None
    centres: Any = None
    std: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) or (D,)."""
        return tuple(self.train.shape[1:])

    @property
    def device(self) -> str:
        return backend.device_of(self.train)

    def to(self, device: str) -> "Dataset":
        """A copy whose arrays live on `device` ("cpu" or "cuda")."""
        def move(array):
            return None if array is None else backend.to_device(array, device)
        return dataclasses.replace(
            self, train=move(self.train), test=move(self.test),
            train_labels=move(self.train_labels), test_labels=move(self.test_labels),
            centres=move(self.centres))

    def __repr__(self) -> str:
        labels = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"Dataset({self.name!r}, {self.kind}, sample shape {self.shape}, "
                f"{len(self.train)} train / {len(self.test)} test{labels}, on {self.device})")


def load_dataset(name: str | os.PathLike, data_dir: str | None = None, seed: int = 0,
                 n: int | None = None) -> Dataset:
    """Load a dataset by name, or from a .npy / .npz file or a folder of PNG images.

    name: one of KNOWN_DATASETS or a path. data_dir: where MNIST's IDX files are (else the
    cache, downloading if online). seed: the toy distributions' sampling seed. n: the number
    of training points of a toy distribution (default 20,000); for images, keep only the
    first n training images (None keeps all).
    """
    name = os.fspath(name)
    if name in TOY_DATASETS:
        return _toy_dataset(name, TOY_TRAIN_SIZE if n is None else n, seed)
    if name == "digits":
        dataset = _digits()
    elif name in ("mnist", "fashion-mnist"):
        train, train_labels, test, test_labels = load_idx_dataset(name, data_dir)
        dataset = Dataset(name, "images", _scale_uint8(train[:, None]),
                          _scale_uint8(test[:, None]), train_labels, test_labels,
                          num_classes=10)
    elif name.endswith((".npy", ".npz")):
        dataset = _array_file(Path(name))
    elif Path(name).is_dir():
        dataset = _png_folder(Path(name))
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}, or a "
                         "path to a .npy / .npz file or to a folder of PNG images")
    if n is not None:
        dataset.train = dataset.train[:n]
        if dataset.train_labels is not None:
            dataset.train_labels = dataset.train_labels[:n]
    return dataset


# --- images -----------------------------------------------------------------------------
def _scale_uint8(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / np.float32(127.5) - np.float32(1.0))


def _fixed_split(count: int, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices from a permutation that is the same on every run."""
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    return np.sort(order[test_size:]), np.sort(order[:test_size])


def _digits() -> Dataset:
    from sklearn.datasets import load_digits  # reads the file bundled with scikit-learn

    bunch = load_digits()
    # Pixels are ink counts 0..16 (UCI optdigits): 0 -> -1, 16 -> +1.
    images = (bunch.images.astype(np.float32) / np.float32(8.0) - np.float32(1.0))[:, None]
    labels = bunch.target.astype(np.int64)
    train, test = _fixed_split(len(images), DIGITS_TEST_SIZE)
    return Dataset("digits", "images", images[train], images[test], labels[train],
                   labels[test], num_classes=10)


def _to_unit_range(array: np.ndarray, source: Path) -> np.ndarray:
    """uint8 0..255, floats in [0, 1] or floats in [-1, 1] -> float32 in [-1, 1]."""
    if array.dtype == np.uint8:
        return _scale_uint8(array)
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return array * np.float32(2.0) - np.float32(1.0)
    if low >= -1.0 and high <= 1.0:
        return array
    raise ValueError(f"{source}: image values span [{low:g}, {high:g}]; minigen reads uint8 "
                     "0..255 or floats in [0, 1] or [-1, 1]; rescale the array first")


def _to_nchw(images: np.ndarray, source: Path) -> np.ndarray:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3} -> (N, C, H, W).

    NCHW wins when both readings fit (PyTorch's layout)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise ValueError(f"{source}: an array of shape {images.shape} is neither points (N, D) "
                     "nor images (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3")


def _check_arrays(source: Path, samples: np.ndarray, labels, test, test_labels) -> None:
    """Refuse what would fail later, or train on garbage: non-numeric or empty arrays, NaN
    or infinite values, labels that are not class indices, splits of different shapes."""
    named = {"samples": samples, "labels": labels, "test samples": test,
             "test labels": test_labels}
    for what, array in named.items():
        if array is None:
            continue
        if array.dtype.kind not in "biuf" or array.ndim == 0:
            raise ValueError(f"{source}: the {what} are an array of {array.dtype} and shape "
                             f"{array.shape}; pass numbers (uint8 images, float images or "
                             "points, integer labels)")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{source}: the {what} hold NaN or infinite values; the file is "
                             "damaged or the array was saved before it was cleaned")
    if len(samples) < 2:
        raise ValueError(f"{source}: {len(samples)} samples; a dataset needs at least 2 (one "
                         "to train on, one held out)")
    if test is not None and test.shape[1:] != samples.shape[1:]:
        raise ValueError(f"{source}: the test samples have shape {test.shape[1:]} but the "
                         f"training samples {samples.shape[1:]}; save both splits alike")
    for what, array, count in (("labels", labels, len(samples)),
                               ("test labels", test_labels, None if test is None else len(test))):
        if array is None:
            continue
        if array.ndim != 1 or (count is not None and len(array) != count):
            found = f"{len(array)} {what}" if array.ndim == 1 else f"{what} of shape {array.shape}"
            raise ValueError(f"{source}: {count} samples but {found}; pass one class index "
                             "per sample")
        if array.size and (array.min() < 0 or (array.dtype.kind == "f"
                                               and not np.all(array == np.round(array)))):
            raise ValueError(f"{source}: the {what} hold values that are not class indices "
                             "0, 1, 2, ...; pass integer classes")


def _from_array(name: str, source: Path, samples: np.ndarray, labels, test=None,
                test_labels=None) -> Dataset:
    """A Dataset from arrays read from a file: points stay as they are, images are scaled."""
    _check_arrays(source, samples, None if labels is None else np.asarray(labels), test,
                  None if test_labels is None else np.asarray(test_labels))
    kind = "points" if samples.ndim == 2 else "images"
    if kind == "images":
        samples = _to_unit_range(_to_nchw(samples, source), source)
        test = None if test is None else _to_unit_range(_to_nchw(test, source), source)
    else:
        samples = samples.astype(np.float32)
        test = None if test is None else test.astype(np.float32)
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    test_labels = None if test_labels is None else np.asarray(test_labels, dtype=np.int64)
    if labels is not None and len(labels) != len(samples):
        raise ValueError(f"{source}: {len(samples)} samples but {len(labels)} labels")
    if test is None:
        train_index, test_index = _fixed_split(len(samples),
                                               max(1, int(len(samples) * FILE_TEST_FRACTION)))
        test = samples[test_index]
        test_labels = None if labels is None else labels[test_index]
        samples = samples[train_index]
        labels = None if labels is None else labels[train_index]
    num_classes = None if labels is None else int(labels.max()) + 1
    return Dataset(name, kind, samples, test, labels, test_labels, num_classes=num_classes)


# Keys looked for in an .npz file, first match wins.
_NPZ_SAMPLE_KEYS = ("x", "images", "data", "train", "x_train", "arr_0")
_NPZ_LABEL_KEYS = ("y", "labels", "train_labels", "y_train")
_NPZ_TEST_KEYS = ("test", "x_test")
_NPZ_TEST_LABEL_KEYS = ("test_labels", "y_test")


# What reading a damaged .npy / .npz raises inside NumPy and zipfile.
_ARRAY_FILE_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                      struct.error, TypeError, SyntaxError, MemoryError, UnicodeDecodeError)


def _damaged(path: Path, error: BaseException) -> ValueError:
    text = " ".join(str(error).split())[:200]
    return ValueError(f"{path}: cannot read it: the file is damaged or not what its name says "
                      f"({type(error).__name__}: {text}); write it again")


def _read_npy(handle, path: Path, size: int) -> np.ndarray:
    """One .npy array from an open file of `size` bytes, its header checked against the size
    first (a damaged header must not make NumPy allocate what the file cannot hold)."""
    version = np.lib.format.read_magic(handle)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f".npy format version {version[0]}.{version[1]}, which minigen does not "
                         "read (1.0 and 2.0 hold numeric arrays)")
    shape, fortran_order, dtype = read_header(handle)
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which minigen does not unpickle")
    expected, found = math.prod(shape) * dtype.itemsize, size - handle.tell()
    if found != expected:
        raise ValueError(f"the header announces shape {shape} of {dtype} ({expected} bytes) "
                         f"but {found} bytes follow it")
    data = handle.read(expected)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran_order else "C").copy()


def _array_file(path: Path) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass the path of an existing .npy "
                                "or .npz array of images (N, H, W) / (N, C, H, W) or points (N, D)")
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as handle:
                arrays = {"x": _read_npy(handle, path, path.stat().st_size)}
        else:
            with zipfile.ZipFile(path) as archive:
                arrays = {}
                for info in archive.infolist():
                    if info.filename.endswith(".npy"):
                        with archive.open(info) as handle:  # checks the CRC-32 at the end
                            arrays[info.filename[:-4]] = _read_npy(handle, path, info.file_size)
                            handle.read()  # to the end of the member, so its CRC-32 is checked
    except _ARRAY_FILE_ERRORS as error:
        raise _damaged(path, error) from None

    def first(keys):
        return next((arrays[key] for key in keys if key in arrays), None)

    samples = first(_NPZ_SAMPLE_KEYS)
    if samples is None:
        raise ValueError(f"{path}: no array named {' / '.join(_NPZ_SAMPLE_KEYS)} (the file "
                         f"holds {', '.join(arrays) or 'nothing'}); save the images "
                         "under 'x' (and labels under 'y')")
    if path.suffix == ".npy":
        return _from_array(path.stem, path, samples, None)
    return _from_array(path.stem, path, samples, first(_NPZ_LABEL_KEYS),
                       first(_NPZ_TEST_KEYS), first(_NPZ_TEST_LABEL_KEYS))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(file: Path, data: bytes) -> None:
    """Walk the PNG chunks and check each one's CRC-32 (Pillow skips those of the pixel
    data), so a damaged PNG is refused rather than read with changed pixels."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"{file}: not a PNG file (it does not start with the PNG signature); "
                         "convert it to PNG or remove it from the folder")
    position = len(_PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise ValueError(f"{file}: truncated: the PNG ends at byte {len(data)} before its "
                             "IEND chunk; copy or write the image again")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if end > len(data):
            raise ValueError(f"{file}: truncated or damaged: a PNG chunk at byte {position} "
                             f"announces {length} bytes, more than the file holds; copy or "
                             "write the image again")
        if zlib.crc32(data[position + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            raise ValueError(f"{file}: damaged: the PNG chunk {kind!r} at byte {position} "
                             "fails its CRC-32; copy or write the image again")
        if kind == b"IEND":
            return
        position = end


def _read_png(file: Path):
    """(pixels (H, W) or (H, W, 3) uint8, size) of one PNG, checked; ValueError naming it."""
    from PIL import Image

    data = file.read_bytes()
    _check_png(file, data)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            gray = image.mode in _GRAYSCALE_MODES
            return np.asarray(image.convert("L" if gray else "RGB")), image.size
    except Exception as error:  # Pillow raises many types (SyntaxError, OSError, ...) on bad data
        raise _damaged(file, error) from None


_GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _png_folder(folder: Path) -> Dataset:
    """Every PNG in `folder` (no labels), or in its subfolders (one class per subfolder)."""
    files = sorted(folder.glob("*.png"))
    class_names = []
    if not files:
        class_names = sorted(sub.name for sub in folder.iterdir()
                             if sub.is_dir() and any(sub.glob("*.png")))
        files = [file for name in class_names for file in sorted((folder / name).glob("*.png"))]
    if not files:
        raise FileNotFoundError(f"{folder}: no .png files in the folder or its subfolders; "
                                "put the images there (one subfolder per class for labels)")
    arrays, size = [], None
    for file in files:
        pixels, image_size = _read_png(file)
        size = size or (image_size, file)
        if image_size != size[0]:
            raise ValueError(f"{file}: size {image_size} differs from {size[0]} of "
                             f"{size[1]}; all images of a dataset must have one size")
        arrays.append(pixels)
    if any(array.ndim == 3 for array in arrays):  # some colour: every image becomes RGB
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    stacked = np.stack(arrays)  # (N, H, W) or (N, H, W, 3), uint8
    labels = ([class_names.index(file.parent.name) for file in files] if class_names else None)
    return _from_array(folder.name, folder, stacked, labels)


# --- toy distributions ------------------------------------------------------------------
def _toy_mixture(name: str) -> tuple[np.ndarray, float]:
    """The centres (K, D) and the common std of a toy mixture of Gaussians."""
    if name == "gauss1d":  # the 1D figure of Goodfellow et al. (2014)
        return np.array([[4.0]]), 0.5
    if name == "ring8":  # 8 modes on a circle of radius 2 (Unrolled GAN, VEEGAN)
        angles = 2 * np.pi * np.arange(8) / 8
        return 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.02
    if name == "grid25":  # 5 x 5 modes two units apart (VEEGAN, PacGAN)
        axis = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2), 0.05
    raise ValueError(f"{name!r} is not a mixture of Gaussians")


def _sample_toy(name: str, count: int, rng: np.random.Generator):
    """`count` points (and their mode index, or None) from a toy distribution."""
    if name == "swissroll":
        angle = 1.5 * np.pi * (1 + 2 * rng.random(count))
        points = angle[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1) / 5.0
        return (points + 0.05 * rng.standard_normal((count, 2))).astype(np.float32), None
    centres, std = _toy_mixture(name)
    modes = rng.integers(0, len(centres), size=count)
    points = centres[modes] + std * rng.standard_normal((count, centres.shape[1]))
    return points.astype(np.float32), modes.astype(np.int64)


def _toy_dataset(name: str, count: int, seed: int) -> Dataset:
    train, train_labels = _sample_toy(name, count, np.random.default_rng([seed, 0]))
    test, test_labels = _sample_toy(name, TOY_TEST_SIZE, np.random.default_rng([seed, 1]))
    if name == "swissroll":
        return Dataset(name, "points", train, test)
    centres, std = _toy_mixture(name)
    return Dataset(name, "points", train, test, train_labels, test_labels,
                   num_classes=len(centres), centres=centres.astype(np.float32), std=std)


# --- mini-batches -----------------------------------------------------------------------
class Batcher:
    """Shuffled mini-batches in which batch number `step` depends only on (seed, step).

    Each epoch is one permutation drawn from a NumPy generator seeded with (seed, epoch), so
    a resumed run asks for `batch(step)` and gets what the straight run got, with no saved
    state, and a CPU run and a GPU run see the same batches. Arrays may live on the GPU;
    they are indexed there with an index array moved once per epoch.

    Data-parallel training: with world_size N, batch_size is the global batch and `batch`
    returns rank `rank`'s consecutive share of it (batch_size / N samples), so the samples
    of each global batch, and their order, do not depend on N.
    """

    def __init__(self, arrays, batch_size: int, seed: int = 0, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.single = not isinstance(arrays, (tuple, list))
        self.arrays = (arrays,) if self.single else tuple(arrays)
        self.count = len(self.arrays[0])
        for array in self.arrays[1:]:
            if len(array) != self.count:
                raise ValueError(f"Batcher: arrays of different lengths "
                                 f"{[len(a) for a in self.arrays]}; pass samples and labels "
                                 "of the same dataset")
        if batch_size < 1 or (drop_last and batch_size > self.count):
            raise ValueError(f"Batcher: batch_size {batch_size} does not fit a dataset of "
                             f"{self.count} samples; use 1 <= batch_size <= {self.count} "
                             "(or drop_last=False)")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(f"Batcher: a batch of {batch_size} cannot be split evenly over "
                             f"{world_size} processes; pass a batch size divisible by {world_size}")
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self._epoch, self._order = None, None

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.count // self.batch_size
        return -(-self.count // self.batch_size)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the samples in `epoch` (a NumPy int64 array)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.count)

    def batch(self, step: int):
        """Batch number `step` (counting from 0 over all epochs): an array or a tuple."""
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            xp = backend.array_module(self.arrays[0])
            self._epoch, self._order = epoch, xp.asarray(self.permutation(epoch))
        index = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        if self.world_size > 1:
            share = len(index) // self.world_size  # drop_last=False: the last batch may be short
            index = index[self.rank * share:(self.rank + 1) * share]
        batch = tuple(array[index] for array in self.arrays)
        return batch[0] if self.single else batch

    def epoch(self, epoch: int) -> Iterator:
        """The batches of one epoch, in order."""
        first = epoch * self.batches_per_epoch
        return (self.batch(step) for step in range(first, first + self.batches_per_epoch))

    def iterate(self, start_step: int = 0) -> Iterator:
        """Batches start_step, start_step + 1, ... without end."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    __iter__ = iterate


def batches(arrays, batch_size: int, seed: int = 0, start_step: int = 0,
            drop_last: bool = True) -> Iterator:
    """An endless iterator of shuffled mini-batches of `arrays` (one array or a tuple),
    starting at batch number `start_step`; see Batcher."""
    return Batcher(arrays, batch_size, seed, drop_last).iterate(start_step)
