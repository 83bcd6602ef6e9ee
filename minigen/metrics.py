"""Measures of sample quality: feature FID, KID, precision and recall and a copy detector on
images, mode coverage on the 2D mixtures.

`frechet_distance` is the distance between two Gaussians, computed in float64 with NumPy;
`feature_fid` fits those Gaussians to the penultimate features of a small classifier trained
with minigen itself (minigen.models.classifier), and `fid_floor` measures real against real.
`kernel_inception_distance`, `precision_recall` and `memorization` work on the same features
(memorization on pixels). `mode_coverage` is the VEEGAN rule for mixtures of Gaussians.
`evaluate` picks the measures that fit a dataset and returns a JSON-able dict (what `minigen
eval` prints), `class_measures` those of samples asked for one class, and `headline` says either
in a few words.
"""
from __future__ import annotations

import numpy as np

from minigen import backend
from minigen.models.classifier import classify, load_classifier, predict_in_batches

HIGH_QUALITY_STD = 3.0   # a sample within 3 std of a mode centre is high quality (VEEGAN)
MODE_MIN_SHARE = 0.008   # a mode is covered when it holds at least 0.8% of the samples
PRECISION_RECALL_K = 3   # neighbours that set the radius of each ball (Kynkaanniemi et al.)
MEMORIZATION_QUANTILE = 0.05  # held-out images closer than this to the training set: copies
DISTANCE_BLOCK = 1024    # rows of a distance matrix computed at once


# --- mode coverage on mixtures of Gaussians ----------------------------------------------
def mode_coverage(points, centres, std: float, threshold_std: float = HIGH_QUALITY_STD,
                  min_share: float = MODE_MIN_SHARE) -> dict:
    """Modes covered and share of high-quality samples, the rule of VEEGAN (Srivastava et
    al., 2017) also used by Unrolled GAN and PacGAN.

    points (N, D), centres (K, D), std: the common standard deviation of the modes. A sample
    is high quality when it lies within `threshold_std` * std of its nearest centre; a mode is
    covered when at least `min_share` * N high-quality samples fall to it (for 2,500 samples
    and 0.8%, 20 samples). Returns {"modes_covered", "num_modes", "high_quality_fraction",
    "samples_per_mode"} as plain Python numbers.
    """
    points = np.asarray(backend.to_numpy(points), dtype=np.float64)
    centres = np.asarray(backend.to_numpy(centres), dtype=np.float64)
    if points.ndim != 2 or centres.ndim != 2 or points.shape[1] != centres.shape[1]:
        raise ValueError(f"mode_coverage: points {points.shape} and centres {centres.shape} "
                         "must be (N, D) and (K, D) with the same D")
    if len(points) == 0:
        raise ValueError("mode_coverage: no points; pass at least one sample")
    distances = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2)  # (N, K)
    nearest = distances.argmin(axis=1)
    high_quality = distances[np.arange(len(points)), nearest] <= threshold_std * std
    counts = np.bincount(nearest[high_quality], minlength=len(centres))
    covered = counts >= min_share * len(points)
    return {"modes_covered": int(covered.sum()), "num_modes": int(len(centres)),
            "high_quality_fraction": float(high_quality.mean()),
            "samples_per_mode": [int(count) for count in counts]}


# --- Frechet distance ------------------------------------------------------------------
def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix through eigh; eigenvalues
    that round-off makes slightly negative are clipped to zero."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1^1/2 sigma2 sigma1^1/2)^1/2)

    mu (D,), sigma (D, D). The cross term uses the symmetric form, so both square roots are
    of symmetric matrices and eigh is exact where sqrtm of sigma1 sigma2 would be complex.
    """
    mu1, mu2 = (np.asarray(mu, dtype=np.float64) for mu in (mu1, mu2))
    sigma1, sigma2 = (np.asarray(sigma, dtype=np.float64) for sigma in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: means {mu1.shape}, {mu2.shape} and covariances "
                         f"{sigma1.shape}, {sigma2.shape} must be (D,) and (D, D)")
    root1 = _symmetric_sqrt(sigma1)
    cross = _symmetric_sqrt(root1 @ sigma2 @ root1)
    difference = mu1 - mu2
    distance = difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(cross)
    return float(max(distance, 0.0))


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64 (unbiased, N - 1)."""
    features = np.asarray(backend.to_numpy(features), dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"gaussian_fit: features of shape {features.shape}; pass (N, D) "
                         "with N >= 2")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fid_from_features(features1, features2) -> float:
    """Frechet distance between the Gaussian fits of two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_fit(features1), *gaussian_fit(features2))


# --- KID, precision and recall, memorization -------------------------------------------------
def _as_features(features, name: str) -> np.ndarray:
    features = np.asarray(backend.to_numpy(features), dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"{name}: features of shape {features.shape}; pass (N, D) with N >= 2")
    return features


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_i - b_j|^2 for a (N, D) and b (M, D): (N, M), in float64, never negative."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    result = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(result, 0.0)


def kernel_inception_distance(features1, features2) -> float:
    """The unbiased estimate of the squared MMD between two feature sets (N, D) and (M, D) under
    the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018, "KID"):

        1/(N(N-1)) sum_{i!=j} k(x_i, x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i, y_j)
            - 2/(NM) sum_{i,j} k(x_i, y_j)

    Its expectation is the population MMD^2, zero when both sets come from one distribution
    whatever N and M (FID is biased upwards at small N), so it can come out slightly negative.
    """
    x = _as_features(features1, "kernel_inception_distance")
    y = _as_features(features2, "kernel_inception_distance")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kernel_inception_distance: features of {x.shape[1]} and {y.shape[1]} "
                         "dimensions; pass two sets from the same feature space")
    n, m, dim = len(x), len(y), x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within_x = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def _row_blocks(points: np.ndarray):
    """(start, block) pairs of at most DISTANCE_BLOCK rows: distance matrices stay bounded."""
    for start in range(0, len(points), DISTANCE_BLOCK):
        yield start, points[start:start + DISTANCE_BLOCK]


def _kth_neighbour_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    radii = []
    for start, block in _row_blocks(features):
        distances = squared_distances(block, features)
        distances[np.arange(len(block)), start + np.arange(len(block))] = np.inf  # not itself
        radii.append(np.sqrt(np.partition(distances, k - 1, axis=1)[:, k - 1]))
    return np.concatenate(radii)


def _inside_manifold(points: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Whether each point lies in some ball around a reference point whose radius is that
    point's k-th neighbour distance within the reference set."""
    radii = _kth_neighbour_radii(reference, k)
    return np.concatenate([(np.sqrt(squared_distances(block, reference)) <= radii).any(axis=1)
                           for _, block in _row_blocks(points)])


def _nearest(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest point of `reference`."""
    return np.concatenate([np.sqrt(squared_distances(block, reference).min(axis=1))
                           for _, block in _row_blocks(points)])


def precision_recall(real_features, fake_features, k: int = PRECISION_RECALL_K) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the manifold of a set is the
    union of balls around its points, each as wide as the distance to its k-th nearest
    neighbour. precision: the share of fakes inside the real manifold (are the samples
    realistic?); recall: the share of reals inside the fake manifold (is the data covered?).
    real (N, D), fake (M, D), both with more than k points. Returns {"precision", "recall"}."""
    real = _as_features(real_features, "precision_recall")
    fake = _as_features(fake_features, "precision_recall")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision_recall: {len(real)} real and {len(fake)} fake points; "
                         f"each set needs more than k = {k}")
    return {"precision": float(_inside_manifold(fake, real, k).mean()),
            "recall": float(_inside_manifold(real, fake, k).mean())}


def memorization(samples, train, held_out, quantile: float = MEMORIZATION_QUANTILE) -> float:
    """The share of samples closer to their nearest training image than all but the closest
    `quantile` of held-out real images are to theirs: a copy detector. Held-out images are
    fresh draws from the data, so a generator that draws fresh images scores about `quantile`
    (5%); one that copies its training images scores near 1. Distances are Euclidean in pixel
    space, where a copy is a copy. samples (N, ...), train (M, ...), held_out (K, ...)."""
    flat = [np.asarray(backend.to_numpy(a), dtype=np.float64).reshape(len(a), -1)
            for a in (samples, train, held_out)]
    nearest_sample, nearest_held_out = (_nearest(part, flat[1]) for part in (flat[0], flat[2]))
    threshold = np.quantile(nearest_held_out, quantile)
    return float((nearest_sample < threshold).mean())


# --- feature FID on images -------------------------------------------------------------
def _features(images, classifier) -> np.ndarray:
    return predict_in_batches(classifier, images, method="features")


def feature_fid(samples, real, classifier) -> float:
    """FID between images `samples` (N, C, H, W) and `real` (M, C, H, W), both in [-1, 1], in
    the penultimate feature space of `classifier` (minigen.models.classifier)."""
    return fid_from_features(_features(samples, classifier), _features(real, classifier))


def _floor_choice(dataset, n: int) -> np.ndarray:
    """The n training images the floors use: a fixed random choice (seed 0)."""
    if not 2 <= n <= len(dataset.train):
        raise ValueError(f"fid_floor: n = {n}, but the training split of {dataset.name} has "
                         f"{len(dataset.train)} images; pass 2 <= n <= {len(dataset.train)}")
    chosen = np.sort(np.random.default_rng(0).permutation(len(dataset.train))[:n])
    return dataset.train[backend.array_module(dataset.train).asarray(chosen)]


def fid_floor(dataset, n: int, classifier=None) -> float:
    """The FID of n real training images against the held-out split: what a perfect generator
    of n samples would score, since the FID of a finite sample is biased upwards (more so with
    few samples). Compare a model's FID with the floor at the same n. The n training images are
    a fixed random choice (seed 0), so the floor is the same number on every run."""
    if classifier is None:
        classifier, _ = load_classifier(dataset)
    return feature_fid(_floor_choice(dataset, n), dataset.test, classifier)


def class_histogram(samples, dataset, classifier=None) -> list[int]:
    """How many of `samples` the classifier puts in each class (length num_classes): a
    generator that has collapsed onto a few modes leaves classes (nearly) empty."""
    predicted = classify(samples, dataset, classifier)
    return [int(count) for count in np.bincount(predicted, minlength=dataset.num_classes)]


# --- everything that fits a dataset -------------------------------------------------------
def _nearest_distance(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean over `points` of the Euclidean distance to the nearest point of `reference`."""
    nearest = []
    for start in range(0, len(points), 1000):  # bounded memory: 1000 x len(reference)
        block = points[start:start + 1000, None, :] - reference[None, :, :]
        nearest.append(np.sqrt((block ** 2).sum(axis=2).min(axis=1)))
    return float(np.concatenate(nearest).mean())


def _point_measures(samples: np.ndarray, dataset) -> dict:
    test = np.asarray(backend.to_numpy(dataset.test), dtype=np.float64)
    train = np.asarray(backend.to_numpy(dataset.train), dtype=np.float64)
    chosen = np.random.default_rng(0).permutation(len(train))[:len(samples)]
    result = {"distance_to_data": _nearest_distance(samples, test),
              "distance_to_data_floor": _nearest_distance(train[chosen], test)}
    if dataset.centres is not None:
        result.update(mode_coverage(samples, dataset.centres, dataset.std))
    if samples.shape[1] == 1:  # the 1D Gaussian: compare the first two moments
        result.update({"mean": float(samples.mean()), "std": float(samples.std()),
                       "data_mean": float(test.mean()), "data_std": float(test.std())})
    return result


def _image_measures(samples: np.ndarray, dataset) -> dict:
    if dataset.train_labels is None or not dataset.num_classes:
        # No labels, no classifier: no feature space to measure in.
        return {"note": f"{dataset.name} has no labels, so there is no classifier and no "
                        "feature FID"}
    classifier, held_out = load_classifier(dataset)
    histogram = class_histogram(samples, dataset, classifier)
    fake, real = _features(samples, classifier), _features(dataset.test, classifier)
    floor = _features(_floor_choice(dataset, len(samples)), classifier)
    return {"fid": fid_from_features(fake, real),
            "fid_floor": fid_from_features(floor, real),
            "kid": kernel_inception_distance(fake, real),
            "kid_floor": kernel_inception_distance(floor, real),
            **precision_recall(real, fake),
            "memorization": memorization(samples, dataset.train, dataset.test),
            "class_histogram": histogram,
            "classes_covered": int(sum(count >= MODE_MIN_SHARE * len(samples)
                                       for count in histogram)),
            "classifier_accuracy": held_out}


def class_measures(samples, dataset, class_label: int) -> dict:
    """The measures of samples asked to be of one class: the share the classifier reads as
    that class, and feature FID against the held-out images of that class, with its floor
    (that many training images of the class against the same held-out ones).

    samples: images (N, C, H, W) in [-1, 1]; all of them are classified, the first as many
    as the class has training images go into the FID (the floor needs that many). With a few
    dozen held-out images per class (digits: about 30) the FID is noisy: compare it with the
    floor, not across datasets.
    """
    samples = np.asarray(backend.to_numpy(samples), dtype=np.float32)
    if len(samples) < 2:
        raise ValueError(f"{len(samples)} sample(s); pass at least 2 for a feature FID")
    if dataset.kind != "images" or dataset.train_labels is None or not dataset.num_classes:
        raise ValueError(f"{dataset.name} has no labelled images, so there are no classes to "
                         "measure; drop --class")
    if not 0 <= class_label < dataset.num_classes:
        raise ValueError(f"class {class_label}: {dataset.name} has classes 0 to "
                         f"{dataset.num_classes - 1}")
    classifier, held_out_accuracy = load_classifier(dataset)
    histogram = class_histogram(samples, dataset, classifier)
    train_labels, test_labels = (backend.to_numpy(labels) for labels in
                                 (dataset.train_labels, dataset.test_labels))
    train_of_class = np.flatnonzero(train_labels == class_label)
    test_of_class = np.flatnonzero(test_labels == class_label)
    xp = backend.array_module(dataset.train)
    real_test = dataset.test[xp.asarray(test_of_class)]
    fid_samples = samples[:len(train_of_class)]
    chosen = np.sort(np.random.default_rng(0).permutation(train_of_class)[:len(fid_samples)])
    return {"n": int(len(samples)), "class": int(class_label),
            "read_as_class": histogram[class_label] / len(samples),
            "class_histogram": histogram,
            "fid": feature_fid(fid_samples, real_test, classifier),
            "fid_floor": feature_fid(dataset.train[xp.asarray(chosen)], real_test, classifier),
            "fid_n": int(len(fid_samples)),
            "fid_against": f"the {len(test_of_class)} held-out images of class {class_label}",
            "classifier_accuracy": held_out_accuracy}


def evaluate(samples, dataset, n: int | None = None) -> dict:
    """The quality measures that fit `dataset`, as a JSON-able dict of plain Python values.

    samples: images (N, C, H, W) in [-1, 1] or points (N, D), the first n of them used (all by
    default; images: at most as many as the training split holds). Images: fid (against the
    whole held-out split) and fid_floor (n training images against the same split: compare the
    two at equal n), kid and kid_floor likewise (unbiased: the floor is near 0 at any n),
    precision and recall (k = 3) against the held-out split, memorization (about 0.05 for
    fresh images, near 1 for copies), class_histogram, classes_covered, classifier_accuracy. Points:
    distance_to_data (mean distance from a sample to the nearest held-out point) and its floor
    (training points instead of samples); on mixtures modes_covered, num_modes,
    high_quality_fraction, samples_per_mode; on 1D data the mean and std beside the data's.
    """
    samples = backend.to_numpy(samples)
    samples = samples if n is None else samples[:n]
    if dataset.kind == "images":  # the floor needs as many real training images
        samples = samples[:len(dataset.train)]
    if tuple(samples.shape[1:]) != dataset.shape:
        raise ValueError(f"evaluate: samples of shape {tuple(samples.shape[1:])} but "
                         f"{dataset.name} holds {dataset.kind} of shape {dataset.shape}; pass "
                         "samples of a model trained on this dataset")
    if len(samples) < 2:
        raise ValueError(f"evaluate: {len(samples)} sample(s); pass at least 2")
    if dataset.kind == "images":
        measures = _image_measures(samples.astype(np.float32), dataset)
    else:
        measures = _point_measures(samples.astype(np.float64), dataset)
    return {"n": int(len(samples)), **measures}


def headline(measures: dict | None) -> str:
    """The measures of `evaluate` (or class_measures) in a few words, for the last line of a
    run (empty when there are none)."""
    if not measures:
        return ""
    parts = []
    if measures.get("read_as_class") is not None:
        parts.append(f"{100 * measures['read_as_class']:.1f}% read as class {measures['class']}")
    if measures.get("fid") is not None:
        floor = measures.get("fid_floor")
        parts.append(f"FID {measures['fid']:.1f}" + (f" (floor {floor:.1f})" if floor else ""))
    if measures.get("class_histogram") and "classes_covered" in measures:
        parts.append(f"{measures['classes_covered']}/{len(measures['class_histogram'])} classes")
    if measures.get("num_modes"):
        parts.append(f"{measures['modes_covered']}/{measures['num_modes']} modes, "
                     f"{100 * measures['high_quality_fraction']:.1f}% high quality")
    if "data_mean" in measures:
        parts.append(f"mean {measures['mean']:.3f}, std {measures['std']:.3f} (data "
                     f"{measures['data_mean']:.3f}, {measures['data_std']:.3f})")
    if not parts and measures.get("distance_to_data") is not None:
        parts.append(f"distance to data {measures['distance_to_data']:.3g} (floor "
                     f"{measures['distance_to_data_floor']:.3g})")
    if not parts:
        return ""
    return ", ".join(parts) + (f" on {measures['n']} samples" if "n" in measures else "")
