"""The IDX reader and the MNIST / Fashion-MNIST loader, on tiny IDX files written here.

The files are written with `struct` straight from the format's description (magic number,
big-endian dimensions, data), independently of the reader. No test touches the network:
the download seam `minigen.idx._urlopen` is replaced in every test that could reach it.
"""
from __future__ import annotations

import gzip
import io
import struct
import urllib.error

import numpy as np
import pytest

from minigen import idx
from minigen.data import load_dataset

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array: np.ndarray, gzipped: bool = False):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def tiny_split(count: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(count, 4, 4), dtype=np.uint8),
            rng.integers(0, 10, size=count).astype(np.uint8))


def write_dataset(folder, gzipped=True, train_count=6, test_count=3, label_count=None):
    """The 4 standard files with tiny 4x4 images; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzipped else ""
    train_images, train_labels = tiny_split(train_count, 0)
    test_images, test_labels = tiny_split(test_count, 1)
    if label_count is not None:
        train_labels = train_labels[:label_count]
    for role, array in [("train_images", train_images), ("train_labels", train_labels),
                        ("test_images", test_images), ("test_labels", test_labels)]:
        write_idx(folder / (idx.IDX_FILES[role] + suffix), array, gzipped)
    return train_images, train_labels, test_images, test_labels


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache folder and a network that refuses every request."""
    monkeypatch.setenv("MINIGEN_CACHE", str(tmp_path / "cache"))

    def refuse(url, timeout):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(idx, "_urlopen", refuse)


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5),
    np.array([7, 0, 255], dtype=np.uint8),
    np.array([[-2, 70000], [3, -1]], dtype=np.int32),
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
], ids=["uint8-3d", "uint8-1d", "int32-2d", "float32-2d"])
def test_read_idx_returns_the_array_that_was_written(tmp_path, array, gzipped):
    path = write_idx(tmp_path / "file.idx", array, gzipped)
    result = idx.read_idx(path)
    assert result.dtype == array.dtype and result.dtype.isnative
    np.testing.assert_array_equal(result, array)


@pytest.mark.parametrize("cut", [3, 6, 20])
def test_read_idx_names_a_truncated_file(tmp_path, cut):
    data = idx_bytes(np.zeros((2, 4, 4), dtype=np.uint8))
    path = tmp_path / "cut.idx"
    path.write_bytes(data[:-cut] if cut != 6 else data[:6])
    with pytest.raises(ValueError, match=r"cut\.idx: (truncated|not an IDX file)"):
        idx.read_idx(path)


def test_read_idx_names_a_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    compressed = gzip.compress(idx_bytes(np.zeros((2, 4, 4), dtype=np.uint8)))
    path.write_bytes(compressed[:len(compressed) // 2])
    with pytest.raises(ValueError, match=r"cut\.gz: the gzip stream is truncated or corrupt"):
        idx.read_idx(path)


def test_read_idx_rejects_a_wrong_magic_number(tmp_path):
    path = tmp_path / "wrong.idx"
    path.write_bytes(b"\x89PNG" + bytes(32))
    with pytest.raises(ValueError, match=r"wrong\.idx: wrong magic number 0x89504E47"):
        idx.read_idx(path)


def test_read_idx_rejects_bytes_after_the_announced_data(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)) + b"\x00\x00")
    with pytest.raises(ValueError, match=r"long\.idx: 2 bytes after the data"):
        idx.read_idx(path)


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("in_subfolder", [False, True])
def test_mnist_loads_from_data_dir_as_nchw_in_unit_range(tmp_path, offline, gzipped,
                                                         in_subfolder):
    folder = tmp_path / "data" / "mnist" if in_subfolder else tmp_path / "data"
    train_images, train_labels, test_images, test_labels = write_dataset(folder, gzipped)
    dataset = load_dataset("mnist", data_dir=str(tmp_path / "data"))
    assert dataset.kind == "images" and dataset.shape == (1, 4, 4)
    assert dataset.train.dtype == np.float32 and dataset.train_labels.dtype == np.int64
    np.testing.assert_allclose(dataset.train[:, 0], train_images / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(dataset.test[:, 0], test_images / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(dataset.train_labels, train_labels)
    np.testing.assert_array_equal(dataset.test_labels, test_labels)


def test_mnist_names_a_label_count_that_differs_from_the_image_count(tmp_path, offline):
    write_dataset(tmp_path, train_count=6, label_count=5)
    with pytest.raises(ValueError, match=r"mnist: .*train-images-idx3-ubyte\.gz holds 6 images "
                                         r"but .*train-labels-idx1-ubyte\.gz holds 5 labels"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_mnist_names_swapped_images_and_labels_files(tmp_path, offline):
    write_dataset(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    images_bytes = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(images_bytes)
    with pytest.raises(ValueError, match=r"are the images and labels files swapped\?"):
        load_dataset("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_files_offline_give_one_message_naming_the_files_and_the_folder(
        tmp_path, offline, name):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(name, data_dir=str(tmp_path / "empty"))
    message = str(error.value)
    assert message.startswith(f"{name}: the IDX files are not in ")
    assert "network disabled in tests" in message
    assert str(idx.cache_dir(name)) in message and "--data-dir" in message
    for base in idx.IDX_FILES.values():
        assert base + ".gz" in message


def test_an_unreachable_mirror_gives_the_offline_message(tmp_path, monkeypatch):
    # The real urllib path, pointed at a local port where nothing listens.
    monkeypatch.setenv("MINIGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(idx.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    with pytest.raises(FileNotFoundError, match=r"downloading them failed \(http://127\.0\.0\.1"):
        load_dataset("mnist")
    assert not any((tmp_path / "cache").rglob("*ubyte*")), "no partial file is left behind"


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_missing_files_are_downloaded_once_into_the_cache(tmp_path, monkeypatch):
    served = tmp_path / "server"
    train_images, _, _, test_labels = write_dataset(served, gzipped=True)
    requests = []

    def serve(url, timeout):
        requests.append(url)
        return FakeResponse((served / url.rsplit("/", 1)[1]).read_bytes())
    monkeypatch.setattr(idx, "_urlopen", serve)
    monkeypatch.setenv("MINIGEN_CACHE", str(tmp_path / "cache"))
    dataset = load_dataset("fashion-mnist")
    assert len(requests) == 4
    assert all(url.startswith(idx.MIRRORS["fashion-mnist"][0]) for url in requests)
    assert sorted(p.name for p in (tmp_path / "cache" / "fashion-mnist").iterdir()) == \
        sorted(base + ".gz" for base in idx.IDX_FILES.values())
    np.testing.assert_allclose(dataset.train[:, 0], train_images / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(dataset.test_labels, test_labels)
    load_dataset("fashion-mnist")
    assert len(requests) == 4, "a second load reads the cache"
