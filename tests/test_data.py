"""Datasets and mini-batches: the embedded digits, toy distributions, array files, PNG
folders, and the batch order that is a pure function of (seed, step).

MNIST's IDX files are tested in test_idx.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minigen import backend
from minigen.data import (KNOWN_DATASETS, TOY_DATASETS, TOY_TEST_SIZE, TOY_TRAIN_SIZE, Batcher,
                          batches, load_dataset)


# --- digits -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_are_float32_nchw_in_unit_range_with_int64_labels(digits):
    assert digits.name == "digits" and digits.kind == "images"
    assert digits.train.shape == (1500, 1, 8, 8) and digits.test.shape == (297, 1, 8, 8)
    assert digits.train.dtype == np.float32 and digits.train_labels.dtype == np.int64
    assert digits.train.min() == -1.0 and digits.train.max() == 1.0
    assert digits.shape == (1, 8, 8) and digits.num_classes == 10
    assert set(digits.train_labels.tolist()) == set(digits.test_labels.tolist()) == set(range(10))
    assert digits.centres is None and digits.std is None


def test_digits_split_is_the_same_for_every_seed_and_partitions_the_data(digits):
    from sklearn.datasets import load_digits
    other = load_dataset("digits", seed=123)
    np.testing.assert_array_equal(other.test, digits.test)
    np.testing.assert_array_equal(other.train_labels, digits.train_labels)
    bunch = load_digits()
    everything = bunch.images.reshape(len(bunch.images), -1) / 8.0 - 1.0
    ours = np.concatenate([digits.train, digits.test]).reshape(len(everything), -1)
    # Train and test together are the 1,797 digits, each exactly once.
    np.testing.assert_array_equal(np.unique(ours, axis=0, return_counts=True)[1],
                                  np.unique(everything, axis=0, return_counts=True)[1])
    labels = np.concatenate([digits.train_labels, digits.test_labels])
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(bunch.target))


def test_n_keeps_the_first_training_images(digits):
    small = load_dataset("digits", n=100)
    np.testing.assert_array_equal(small.train, digits.train[:100])
    assert len(small.train_labels) == 100 and len(small.test) == 297


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        load_dataset("cifar11")
    message = str(error.value)
    assert message.startswith("unknown dataset 'cifar11'; known: ")
    for name in KNOWN_DATASETS:
        assert name in message
    assert ".npy / .npz" in message and "PNG" in message


# --- toy distributions ------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_data_is_a_fixed_sample_for_a_seed(name):
    first, again, other = (load_dataset(name, seed=s) for s in (0, 0, 1))
    assert first.kind == "points" and first.train.dtype == np.float32
    assert first.train.shape == (TOY_TRAIN_SIZE, first.shape[0])
    assert first.test.shape == (TOY_TEST_SIZE, first.shape[0])
    np.testing.assert_array_equal(first.train, again.train)
    assert not np.array_equal(first.train, other.train)
    assert not np.array_equal(first.train[:TOY_TEST_SIZE], first.test)
    assert len(load_dataset(name, n=300).train) == 300


def test_gauss1d_is_normal_with_mean_4_and_std_half():
    data = load_dataset("gauss1d")
    assert data.shape == (1,)
    assert abs(data.train.mean() - 4.0) < 0.02 and abs(data.train.std() - 0.5) < 0.02
    np.testing.assert_array_equal(data.centres, [[4.0]])
    assert data.std == 0.5


@pytest.mark.parametrize("name, modes, std", [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_mixture_points_sit_within_5_std_of_their_labelled_mode(name, modes, std):
    data = load_dataset(name)
    assert data.centres.shape == (modes, 2) and data.std == std and data.num_classes == modes
    offsets = data.train - data.centres[data.train_labels]
    assert np.abs(offsets).max() < 5 * std
    assert abs(offsets.std() - std) < 0.05 * std
    share = np.bincount(data.train_labels, minlength=modes) / len(data.train)
    np.testing.assert_allclose(share, 1 / modes, atol=0.02)


def test_ring8_modes_lie_on_a_circle_of_radius_2():
    data = load_dataset("ring8")
    np.testing.assert_allclose(np.linalg.norm(data.centres, axis=1), 2.0, rtol=1e-6)
    assert np.abs(np.linalg.norm(data.train, axis=1) - 2.0).max() < 0.1
    angles = np.sort(np.arctan2(data.centres[:, 1], data.centres[:, 0]))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / 8, rtol=1e-5)


def test_grid25_modes_are_the_points_of_minus4_to_4_in_steps_of_2():
    data = load_dataset("grid25")
    axis = [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert sorted(map(tuple, data.centres.tolist())) == [(x, y) for x in axis for y in axis]


def test_swissroll_spirals_within_a_few_units():
    data = load_dataset("swissroll")
    radius = np.linalg.norm(data.train, axis=1)
    assert 0.7 < radius.min() and radius.max() < 3.2
    assert data.train_labels is None and data.centres is None


# --- .npy / .npz files and PNG folders --------------------------------------------------
def test_npy_of_uint8_images_hw_becomes_nchw_in_unit_range(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "faces.npy", images)
    data = load_dataset(tmp_path / "faces.npy")  # a Path works as well as a str
    assert data.name == "faces" and data.kind == "images" and data.shape == (1, 5, 6)
    assert len(data.train) == 45 and len(data.test) == 5 and data.train_labels is None
    together = np.concatenate([data.train, data.test])[:, 0]
    np.testing.assert_allclose(np.sort(together.ravel()), np.sort(images.ravel() / 127.5 - 1),
                               atol=1e-6)


def test_npz_with_nhwc_floats_in_0_1_labels_and_a_test_split(tmp_path):
    rng = np.random.default_rng(1)
    x, x_test = rng.random((20, 4, 4, 3)), rng.random((6, 4, 4, 3))
    np.savez(tmp_path / "set.npz", x=x, y=np.arange(20) % 3, x_test=x_test,
             y_test=np.arange(6) % 3)
    data = load_dataset(str(tmp_path / "set.npz"))
    assert data.train.shape == (20, 3, 4, 4) and data.test.shape == (6, 3, 4, 4)
    np.testing.assert_allclose(data.train, x.transpose(0, 3, 1, 2) * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(data.test_labels, np.arange(6) % 3)
    assert data.num_classes == 3 and data.train_labels.dtype == np.int64


def test_npy_of_points_stays_points(tmp_path):
    points = np.random.default_rng(2).normal(size=(30, 2)) * 10
    np.save(tmp_path / "cloud.npy", points)
    data = load_dataset(str(tmp_path / "cloud.npy"))
    assert data.kind == "points" and data.shape == (2,)
    assert data.train.max() > 1.0, "points are not rescaled"


@pytest.mark.parametrize("content, match", [
    (dict(x=np.full((4, 3, 3), 7.0)), r"image values span \[7, 7\]"),
    (dict(pictures=np.zeros((4, 3, 3))), r"no array named x / images .* holds pictures"),
    (dict(x=np.zeros((4, 3, 3, 5, 2))), r"neither points"),
    (dict(x=np.zeros((4, 3, 3)), y=np.zeros(3)), r"4 samples but 3 labels"),
])
def test_npz_problems_are_named(tmp_path, content, match):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(ValueError, match=match):
        load_dataset(str(tmp_path / "bad.npz"))


def test_missing_array_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.npz: no such file"):
        load_dataset(str(tmp_path / "nothere.npz"))


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_png_folder_of_grayscale_images(tmp_path):
    for i in range(10):
        save_png(tmp_path / "pngs" / f"{i:02d}.png", np.full((6, 7), i * 25, dtype=np.uint8))
    data = load_dataset(str(tmp_path / "pngs"))
    assert data.kind == "images" and data.shape == (1, 6, 7)
    assert len(data.train) == 9 and len(data.test) == 1 and data.train_labels is None
    values = sorted(np.concatenate([data.train, data.test])[:, 0, 0, 0].tolist())
    np.testing.assert_allclose(values, np.arange(10) * 25 / 127.5 - 1, atol=1e-6)


def test_png_subfolders_are_classes_and_mixed_modes_become_rgb(tmp_path):
    for i in range(10):
        save_png(tmp_path / "cats" / f"{i}.png", np.zeros((4, 4), dtype=np.uint8))
        save_png(tmp_path / "dogs" / f"{i}.png", np.full((4, 4, 3), 255, dtype=np.uint8))
    data = load_dataset(str(tmp_path))
    assert data.shape == (3, 4, 4) and data.num_classes == 2
    images = np.concatenate([data.train, data.test])
    labels = np.concatenate([data.train_labels, data.test_labels])
    np.testing.assert_array_equal(images[:, 0, 0, 0], np.where(labels == 0, -1.0, 1.0))


def test_png_of_another_size_is_named(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    save_png(tmp_path / "b.png", np.zeros((5, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"b\.png: size \(4, 5\) differs from \(4, 4\)"):
        load_dataset(str(tmp_path))


# --- Dataset.to -------------------------------------------------------------------------
def test_dataset_to_cpu_is_a_copy_with_the_same_arrays(digits):
    moved = digits.to("cpu")
    assert moved is not digits and moved.device == "cpu"
    np.testing.assert_array_equal(moved.train, digits.train)


@pytest.mark.cuda
def test_dataset_on_the_gpu_gives_the_same_batches_as_on_the_cpu(digits, cuda_backend):
    on_gpu = digits.to("cuda")
    assert on_gpu.device == "cuda" and backend.device_of(on_gpu.train_labels) == "cuda"
    gpu_batcher = Batcher((on_gpu.train, on_gpu.train_labels), 64, seed=5)
    cpu_batcher = Batcher((digits.train, digits.train_labels), 64, seed=5)
    for step in (0, 1, 30):
        for gpu_array, cpu_array in zip(gpu_batcher.batch(step), cpu_batcher.batch(step)):
            assert backend.device_of(gpu_array) == "cuda"
            np.testing.assert_array_equal(backend.to_numpy(gpu_array), cpu_array)


# --- mini-batches -----------------------------------------------------------------------
def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_same_seed_gives_the_same_batches_and_another_seed_others():
    data = np.arange(100)
    first, again, other = (take(batches(data, 10, seed=s), 25) for s in (3, 3, 4))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("start_step", [0, 7, 10, 23])
def test_resuming_at_step_k_continues_the_straight_sequence(start_step):
    data = np.arange(100)
    straight = take(batches(data, 10, seed=1), 30)
    resumed = take(batches(data, 10, seed=1, start_step=start_step), 30 - start_step)
    for a, b in zip(straight[start_step:], resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("count, batch_size", [(100, 10), (103, 10), (12, 12)])
def test_each_epoch_visits_every_sample_once_in_a_new_order(count, batch_size):
    batcher = Batcher(np.arange(count), batch_size, seed=0)
    assert batcher.batches_per_epoch == count // batch_size
    epochs = [np.concatenate(list(batcher.epoch(e))) for e in range(3)]
    for seen in epochs:
        assert len(seen) == batcher.batches_per_epoch * batch_size
        assert len(np.unique(seen)) == len(seen)
    if count > batch_size:
        assert not np.array_equal(epochs[0], epochs[1])


def test_drop_last_false_ends_each_epoch_with_the_remainder():
    batcher = Batcher(np.arange(23), 10, seed=0, drop_last=False)
    sizes = [len(batch) for batch in batcher.epoch(0)]
    assert sizes == [10, 10, 3]
    assert sorted(np.concatenate(list(batcher.epoch(1))).tolist()) == list(range(23))


def test_samples_and_labels_stay_paired():
    samples = np.arange(50) * 10
    labels = np.arange(50)
    for batch_samples, batch_labels in take(iter(Batcher((samples, labels), 8, seed=2)), 12):
        np.testing.assert_array_equal(batch_samples, batch_labels * 10)


@pytest.mark.parametrize("arrays, batch_size, match", [
    (np.arange(10), 11, r"batch_size 11 does not fit a dataset of 10 samples"),
    (np.arange(10), 0, r"batch_size 0 does not fit"),
    ((np.arange(10), np.arange(9)), 2, r"arrays of different lengths \[10, 9\]"),
])
def test_batcher_rejects_what_cannot_be_batched(arrays, batch_size, match):
    with pytest.raises(ValueError, match=match):
        Batcher(arrays, batch_size)
