"""Specifications of the quality measures: the Frechet distance, VEEGAN's mode coverage, the
classifier that gives the FID its feature space (trained once per session into a temporary
cache), the feature FID and its floor, and what `evaluate` reports for each kind of data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

import minigen
from minigen import metrics
from minigen.data import load_dataset
from minigen.models import classifier as classifier_module


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.standard_normal((dim, dim + 3))
    return factor @ factor.T / dim


# --- Frechet distance ------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 5, 64])
def test_frechet_distance_of_a_gaussian_with_itself_is_zero(dim):
    rng = np.random.default_rng(dim)
    mean, covariance = rng.standard_normal(dim), random_covariance(rng, dim)
    assert abs(metrics.frechet_distance(mean, covariance, mean, covariance)) < 1e-8 * dim


@pytest.mark.parametrize("dim, seed", [(2, 0), (8, 1), (32, 2)])
def test_frechet_distance_agrees_with_scipy_sqrtm(dim, seed):
    rng = np.random.default_rng(seed)
    mean1, mean2 = rng.standard_normal(dim), rng.standard_normal(dim)
    cov1, cov2 = random_covariance(rng, dim), random_covariance(rng, dim)
    cross = scipy.linalg.sqrtm(cov1 @ cov2).real  # the textbook form, not symmetric
    expected = ((mean1 - mean2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * cross)
    assert metrics.frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    # Commuting covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2.
    variances1, variances2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    shift = np.array([3.0, 0.0, -4.0])
    expected = 25.0 + ((np.sqrt(variances1) - np.sqrt(variances2)) ** 2).sum()
    distance = metrics.frechet_distance(np.zeros(3), np.diag(variances1), shift,
                                        np.diag(variances2))
    assert distance == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_names_mismatched_shapes():
    with pytest.raises(ValueError, match="must be \\(D,\\) and \\(D, D\\)"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- mode coverage ---------------------------------------------------------------------
@pytest.mark.parametrize("name, modes", [("ring8", 8), ("grid25", 25)])
def test_mode_coverage_of_real_data_covers_every_mode(name, modes):
    dataset = load_dataset(name)
    result = metrics.mode_coverage(dataset.test, dataset.centres, dataset.std)
    assert result["modes_covered"] == result["num_modes"] == modes
    # Within 3 std in 2D holds 1 - exp(-4.5) = 98.9% of a Gaussian.
    assert result["high_quality_fraction"] == pytest.approx(1 - np.exp(-4.5), abs=0.01)


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_mode_coverage_sees_a_collapse_onto_two_modes(name):
    dataset = load_dataset(name)
    collapsed = dataset.test[dataset.test_labels < 2]
    result = metrics.mode_coverage(collapsed, dataset.centres, dataset.std)
    assert result["modes_covered"] == 2
    assert result["high_quality_fraction"] > 0.97


def test_mode_coverage_counts_off_mode_noise_as_low_quality():
    dataset = load_dataset("ring8")
    noise = np.random.default_rng(0).uniform(-3, 3, size=(2500, 2))
    result = metrics.mode_coverage(noise, dataset.centres, dataset.std)
    # 8 discs of radius 0.06 cover 0.25% of the 6 x 6 box.
    assert result["high_quality_fraction"] < 0.01
    assert result["modes_covered"] == 0


@pytest.mark.parametrize("samples_on_last_mode, covered", [(19, 7), (20, 8)])
def test_a_mode_counts_as_covered_from_point_8_percent_of_the_samples(samples_on_last_mode,
                                                                      covered):
    dataset = load_dataset("ring8")
    counts = [(2500 - samples_on_last_mode) // 7] * 7
    counts[0] += 2500 - samples_on_last_mode - sum(counts)
    modes = np.repeat(np.arange(8), counts + [samples_on_last_mode])
    points = dataset.centres[modes]  # exactly on the centres: all high quality
    result = metrics.mode_coverage(points, dataset.centres, dataset.std)
    assert result["modes_covered"] == covered
    assert result["samples_per_mode"][7] == samples_on_last_mode


# --- KID -------------------------------------------------------------------------------
def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel_written_out():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.4
    kernel = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    within_x = sum(kernel(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    within_y = sum(kernel(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    across = sum(kernel(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    expected = within_x + within_y - 2 * across
    assert metrics.kernel_inception_distance(x, y) == pytest.approx(expected, rel=1e-12)


def test_kid_is_unbiased_on_two_small_draws_from_one_gaussian_where_fid_is_not():
    """Two sets of 20 points from the same 8-D Gaussian: over 300 repeats the KIDs average to
    0 within their standard error; the FIDs of the same pairs sit far above 0."""
    rng = np.random.default_rng(1)
    kids, fids = [], []
    for _ in range(300):
        x, y = rng.standard_normal((20, 8)), rng.standard_normal((20, 8))
        kids.append(metrics.kernel_inception_distance(x, y))
        fids.append(metrics.fid_from_features(x, y))
    standard_error = np.std(kids) / np.sqrt(len(kids))
    assert abs(np.mean(kids)) < 3 * standard_error
    assert min(kids) < 0 < max(kids)
    assert np.mean(fids) > 20 * standard_error and min(fids) > 0


def test_kid_grows_with_the_shift_between_the_sets():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 4))
    kids = [metrics.kernel_inception_distance(x, rng.standard_normal((200, 4)) + shift)
            for shift in (0.0, 0.5, 1.0, 2.0)]
    assert kids == sorted(kids) and abs(kids[0]) < 0.1 * kids[1]


# --- precision and recall ----------------------------------------------------------------
def _precision_recall_written_out(real, fake, k):
    def radius(point_set, i):
        others = sorted(np.linalg.norm(point_set[i] - point_set[j])
                        for j in range(len(point_set)) if j != i)
        return others[k - 1]

    def inside(point, reference):
        return any(np.linalg.norm(point - reference[j]) <= radius(reference, j)
                   for j in range(len(reference)))
    return (np.mean([inside(f, real) for f in fake]), np.mean([inside(r, fake) for r in real]))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_the_definition_written_out(k):
    rng = np.random.default_rng(k)
    real, fake = rng.standard_normal((15, 2)), 1.3 * rng.standard_normal((12, 2)) + 0.5
    precision, recall = _precision_recall_written_out(real, fake, k)
    result = metrics.precision_recall(real, fake, k=k)
    assert result == {"precision": pytest.approx(precision), "recall": pytest.approx(recall)}


def test_a_collapsed_sample_set_is_precise_but_recalls_little():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((400, 4))
    collapsed = real[0] + 0.05 * rng.standard_normal((400, 4))  # all near one real point
    result = metrics.precision_recall(real, collapsed)
    assert result["precision"] > 0.95 and result["recall"] < 0.05


def test_a_noisy_sample_set_recalls_the_data_but_is_imprecise():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((400, 4))
    noisy = 3.0 * rng.standard_normal((400, 4))  # covers the data, mostly off it
    result = metrics.precision_recall(real, noisy)
    assert result["recall"] > 0.9 and result["precision"] < 0.5
    same = metrics.precision_recall(real, rng.standard_normal((400, 4)))
    assert same["precision"] > 0.8 and same["recall"] > 0.8


def test_precision_recall_need_more_points_than_neighbours():
    with pytest.raises(ValueError, match="each set needs more than k = 3"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# --- memorization --------------------------------------------------------------------------
def test_memorization_is_the_share_closer_than_the_held_out_quantile_written_out():
    rng = np.random.default_rng(5)
    train, held_out = rng.standard_normal((30, 2, 2)), rng.standard_normal((20, 2, 2))
    samples = rng.standard_normal((25, 2, 2))
    nearest = lambda a: np.array([min(np.linalg.norm(x - t) for t in train) for x in a])  # noqa
    threshold = np.quantile(nearest(held_out), 0.05)
    expected = np.mean(nearest(samples) < threshold)
    assert metrics.memorization(samples, train, held_out) == pytest.approx(expected)


def test_memorization_tells_copies_from_fresh_draws():
    rng = np.random.default_rng(6)
    train, held_out = rng.standard_normal((500, 6)), rng.standard_normal((500, 6))
    copies = train[:300] + 1e-3 * rng.standard_normal((300, 6))
    fresh = rng.standard_normal((2000, 6))
    assert metrics.memorization(copies, train, held_out) == 1.0
    assert 0.02 < metrics.memorization(fresh, train, held_out) < 0.09


# --- the classifier and the feature FID ------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """(classifier, accuracy, cache folder): trained once for this file into a fresh cache."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("cache")
        patch.setenv("MINIGEN_CACHE", str(cache))
        model, accuracy = metrics.load_classifier(digits)
        yield model, accuracy, cache


def test_classifier_reaches_97_percent_on_held_out_digits(trained, digits):
    model, accuracy, _ = trained
    assert accuracy >= 0.97
    assert classifier_module.accuracy(model, digits.test, digits.test_labels) == accuracy


def test_classifier_is_cached_and_loads_with_the_same_predictions(trained, digits):
    model, accuracy, cache = trained
    files = list((cache / "classifiers").glob("digits-*.h5"))
    assert len(files) == 1
    reloaded, reloaded_accuracy = metrics.load_classifier(digits)
    assert reloaded is not model and reloaded_accuracy == accuracy
    np.testing.assert_array_equal(metrics.classify(digits.test, digits, reloaded),
                                  metrics.classify(digits.test, digits, model))


def test_classifier_training_leaves_the_default_generator_where_it_was(digits):
    small = load_dataset("digits", n=64)  # a different training set: a fresh, quick training
    minigen.manual_seed(7)
    expected = minigen.randn(3).numpy()
    minigen.manual_seed(7)
    classifier_module.train_classifier(small, say=lambda message: None)
    np.testing.assert_array_equal(minigen.randn(3).numpy(), expected)


def test_a_classifier_needs_labelled_images():
    with pytest.raises(ValueError, match="needs labelled images"):
        metrics.load_classifier(load_dataset("ring8"))


def test_feature_fid_of_a_set_against_itself_is_zero(trained, digits):
    assert metrics.feature_fid(digits.test, digits.test, trained[0]) < 1e-6


def test_feature_fid_grows_as_noise_is_added(trained, digits):
    rng = np.random.default_rng(0)
    real = digits.train[:len(digits.test)]
    fids = []
    for noise_std in (0.0, 0.5, 1.0, 2.0):
        noisy = real + noise_std * rng.standard_normal(real.shape).astype(np.float32)
        fids.append(metrics.feature_fid(np.clip(noisy, -1, 1), digits.test, trained[0]))
    assert fids == sorted(fids) and fids[-1] > 3 * fids[0]


def test_fid_floor_is_far_below_the_fid_of_noise(trained, digits):
    noise = np.random.default_rng(0).uniform(-1, 1, size=(300, 1, 8, 8)).astype(np.float32)
    floor = metrics.fid_floor(digits, 300, trained[0])
    assert 0 < floor < metrics.feature_fid(noise, digits.test, trained[0]) / 5


def test_kid_of_real_digits_against_held_out_averages_to_zero_far_below_noise(trained, digits):
    """Real training digits against the held-out split, over 40 random choices of 300: the
    mean KID is 0 within its standard error (the FID of the same sets is not), and one KID
    of noise is many standard deviations away."""
    real = metrics._features(digits.test, trained[0])
    train = metrics._features(digits.train, trained[0])
    rng = np.random.default_rng(0)
    kids, fids = [], []
    for _ in range(40):
        chosen = train[rng.permutation(len(train))[:300]]
        kids.append(metrics.kernel_inception_distance(chosen, real))
        fids.append(metrics.fid_from_features(chosen, real))
    standard_error = np.std(kids) / np.sqrt(len(kids))
    assert abs(np.mean(kids)) < 3 * standard_error and min(fids) > 0
    noise = np.random.default_rng(0).uniform(-1, 1, size=(300, 1, 8, 8)).astype(np.float32)
    noisy = metrics.kernel_inception_distance(metrics._features(noise, trained[0]), real)
    assert noisy > 10 * np.std(kids)


def test_class_histogram_shows_the_classes_a_collapsed_generator_misses(trained, digits):
    collapsed = digits.test[digits.test_labels < 3]
    histogram = metrics.class_histogram(collapsed, digits, trained[0])
    assert len(histogram) == 10 and sum(histogram) == len(collapsed)
    assert sum(histogram[3:]) <= 0.05 * len(collapsed)


# --- evaluate ---------------------------------------------------------------------------
def test_evaluate_on_images_reports_fid_floor_and_classes(trained, digits):
    result = metrics.evaluate(digits.train[:200], digits)
    assert set(result) == {"n", "fid", "fid_floor", "kid", "kid_floor", "precision", "recall",
                           "memorization", "class_histogram", "classes_covered",
                           "classifier_accuracy"}
    assert result["n"] == 200 and result["classes_covered"] == 10
    assert result["classifier_accuracy"] == trained[1]
    json.dumps(result)  # plain Python values only


def test_class_measures_read_the_asked_class_and_compare_with_its_held_out_images(trained,
                                                                                 digits):
    sevens = digits.train[np.flatnonzero(digits.train_labels == 7)]
    ones = digits.train[np.flatnonzero(digits.train_labels == 1)]
    as_seven = metrics.class_measures(sevens[:100], digits, 7)
    held_out_sevens = int((digits.test_labels == 7).sum())
    assert as_seven["class"] == 7 and as_seven["n"] == 100 and as_seven["fid_n"] == 100
    assert as_seven["read_as_class"] >= 0.95 and sum(as_seven["class_histogram"]) == 100
    assert as_seven["fid_against"] == f"the {held_out_sevens} held-out images of class 7"
    # real 7s score near the floor of real 7s against held-out 7s; 1s asked to be 7s do not
    not_seven = metrics.class_measures(ones[:100], digits, 7)
    assert not_seven["read_as_class"] <= 0.05
    assert not_seven["fid"] > 3 * as_seven["fid"] and as_seven["fid"] < 2 * as_seven["fid_floor"]


def test_class_measures_use_at_most_the_class_training_images_for_the_fid(trained, digits):
    many = np.repeat(digits.train[np.flatnonzero(digits.train_labels == 3)], 3, axis=0)
    measures = metrics.class_measures(many, digits, 3)
    assert measures["n"] == len(many)
    assert measures["fid_n"] == int((digits.train_labels == 3).sum())


@pytest.mark.parametrize("label, message", [(10, "class 10: digits has classes 0 to 9"),
                                            (-1, "class -1: digits has classes 0 to 9")])
def test_class_measures_name_a_class_the_data_does_not_have(trained, digits, label, message):
    with pytest.raises(ValueError, match=message):
        metrics.class_measures(digits.train[:10], digits, label)


def test_the_headline_of_image_measures_names_fid_floor_and_classes():
    line = metrics.headline({"n": 500, "fid": 16.71, "fid_floor": 11.24,
                              "class_histogram": [50] * 10, "classes_covered": 10})
    assert line == "FID 16.7 (floor 11.2), 10/10 classes on 500 samples"
    assert metrics.headline(None) == ""


def test_the_headline_of_class_measures_names_the_share_read_as_the_class():
    line = metrics.headline({"n": 100, "class": 7, "read_as_class": 0.984, "fid": 30.0,
                             "fid_floor": 25.0, "class_histogram": [1] * 10})
    assert line == "98.4% read as class 7, FID 30.0 (floor 25.0) on 100 samples"


@pytest.mark.parametrize("name, extra", [("ring8", {"modes_covered", "high_quality_fraction"}),
                                         ("grid25", {"modes_covered", "num_modes"}),
                                         ("gauss1d", {"mean", "std", "data_mean", "data_std"}),
                                         ("swissroll", set())])
def test_evaluate_on_points_reports_the_measures_of_the_data(name, extra):
    dataset = load_dataset(name)
    result = metrics.evaluate(dataset.train[:2500], dataset)
    assert {"n", "distance_to_data", "distance_to_data_floor"} | extra <= set(result)
    assert result["n"] == 2500
    if "modes_covered" in result:
        assert result["modes_covered"] == result["num_modes"]
    json.dumps(result)


def test_evaluate_uses_only_the_first_n_samples():
    dataset = load_dataset("ring8")
    assert metrics.evaluate(dataset.train, dataset, n=100)["n"] == 100


def test_evaluate_names_samples_of_the_wrong_shape():
    with pytest.raises(ValueError, match="samples of shape \\(3,\\) but ring8 holds points"):
        metrics.evaluate(np.zeros((10, 3)), load_dataset("ring8"))
