"""The small CNN whose penultimate features the feature FID is measured in.

It is trained with minigen itself (its layers, cross-entropy and Adam) on the training split
of a labelled image dataset, once: the weights go to an HDF5 checkpoint in the cache folder
($MINIGEN_CACHE/classifiers, else ~/.cache/minigen/classifiers), named by the dataset and a
hash of its training data, with the held-out accuracy in the checkpoint's config.
`load_classifier` trains on first use and loads afterwards; `classify` reads labels.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

import minigen
from minigen import backend, nn, optim
from minigen import functional as F
from minigen.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minigen.tensor import Tensor

# Bump when the architecture or the training recipe changes, so old cache files are not used.
RECIPE_VERSION = 2
SEED = 0                  # the classifier is the same on every run and every machine
WIDTH = 32                # channels of the first convolution; doubled at each downsampling
FEATURE_DIM = 64          # the penultimate layer: the space the feature FID is measured in
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
EXAMPLES_SEEN = 15_000    # epochs = this / training-set size, between 2 and 10
MAX_EPOCHS, MIN_EPOCHS = 10, 2
EVAL_BATCH = 500


class ImageClassifier(nn.Module):
    """conv3x3 -> ReLU -> (conv3x3 stride 2 -> ReLU) x k -> Linear -> ReLU -> Linear.

    k halves the image until it is at most 7 pixels high (8x8 digits: 1, 28x28 MNIST: 2).
    x (N, C, H, W) in [-1, 1] -> logits (N, num_classes); `features(x)` is the (N, feature_dim)
    output of the ReLU before the last Linear.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 width: int = WIDTH, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.config = {"in_channels": int(in_channels), "image_size": [int(s) for s in image_size],
                       "num_classes": int(num_classes), "width": int(width),
                       "feature_dim": int(feature_dim)}
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
        height, width_px, channels = int(image_size[0]), int(image_size[1]), width
        while height > 7:
            layers += [nn.Conv2d(channels, min(2 * channels, 128), 3, stride=2, padding=1),
                       nn.ReLU()]
            channels = min(2 * channels, 128)
            height, width_px = (height + 1) // 2, (width_px + 1) // 2
        layers += [nn.Flatten(), nn.Linear(channels * height * width_px, feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """x (N, C, H, W) -> penultimate features (N, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_folder() -> Path:
    """$MINIGEN_CACHE/classifiers, else $XDG_CACHE_HOME (or ~/.cache)/minigen/classifiers."""
    root = os.environ.get("MINIGEN_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "minigen"
    return Path(root).expanduser() / "classifiers"


def _check_labelled_images(dataset) -> None:
    if dataset.kind != "images" or dataset.train_labels is None or not dataset.num_classes:
        raise ValueError(f"{dataset.name}: a classifier needs labelled images, and this dataset "
                         f"holds {dataset.kind} {'with' if dataset.num_classes else 'without'} "
                         "labels; use digits, mnist, fashion-mnist or a labelled .npz / folder")


def cache_path(dataset) -> Path:
    """The cache file of `dataset`'s classifier: <name>-<hash of training data and recipe>.h5."""
    digest = hashlib.sha256(f"recipe {RECIPE_VERSION} shape {dataset.train.shape}".encode())
    digest.update(np.ascontiguousarray(backend.to_numpy(dataset.train)).tobytes())
    digest.update(np.ascontiguousarray(backend.to_numpy(dataset.train_labels)).tobytes())
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset.name)
    return cache_folder() / f"{safe_name}-{digest.hexdigest()[:16]}.h5"


def predict_in_batches(model: ImageClassifier, images, method: str = "forward") -> np.ndarray:
    """model(images) or model.features(images) in batches, without a graph: a NumPy array."""
    device = next(iter(model.parameters())).device
    outputs = []
    with minigen.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            batch = Tensor(backend.to_device(images[start:start + EVAL_BATCH], device))
            outputs.append(backend.to_numpy(getattr(model, method)(batch).data))
    return np.concatenate(outputs)


def accuracy(model: ImageClassifier, images, labels) -> float:
    """The share of `images` whose predicted class is `labels`."""
    predicted = predict_in_batches(model, images).argmax(axis=1)
    return float((predicted == backend.to_numpy(labels)).mean())


def train_classifier(dataset, device: str = "cpu",
                     say=_say) -> tuple[ImageClassifier, float, float]:
    """Train an ImageClassifier on dataset.train with Adam, the learning rate falling linearly
    to zero; returns (model, held-out accuracy, seconds). Seeded, and the default generators are
    put back afterwards, so training a classifier never changes a run's randomness."""
    _check_labelled_images(dataset)
    state = backend.get_rng_state()
    started = time.perf_counter()
    try:
        minigen.manual_seed(SEED)
        channels, height, width = dataset.shape
        model = ImageClassifier(channels, (height, width), dataset.num_classes).to(device)
        optimizer = optim.Adam(model.parameters(), lr=LEARNING_RATE)
        images, labels = dataset.train, dataset.train_labels
        count = len(images)
        epochs = int(np.clip(EXAMPLES_SEEN // count, MIN_EPOCHS, MAX_EPOCHS))
        steps_per_epoch = count // BATCH_SIZE
        total_steps, step = epochs * steps_per_epoch, 0
        shuffle = np.random.default_rng(SEED)
        xp = backend.array_module(images)
        for epoch in range(epochs):
            order = xp.asarray(shuffle.permutation(count))
            for position in range(steps_per_epoch):
                index = order[position * BATCH_SIZE:(position + 1) * BATCH_SIZE]
                logits = model(Tensor(backend.to_device(images[index], device)))
                loss = F.cross_entropy(logits, Tensor(backend.to_device(labels[index], device)))
                optimizer.zero_grad()
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = LEARNING_RATE * (1 - step / total_steps)
                optimizer.step()
                step += 1
        model.eval()
        held_out = accuracy(model, dataset.test, dataset.test_labels)
    finally:
        backend.set_rng_state(state)
    seconds = time.perf_counter() - started
    say(f"classifier for {dataset.name}: {epochs} epochs in {seconds:.1f} s, "
        f"held-out accuracy {held_out:.2%}")
    return model, held_out, seconds


def load_classifier(dataset, device: str | None = None, say=_say) -> tuple[ImageClassifier, float]:
    """(model in eval mode, held-out accuracy) for a labelled image dataset: read from the cache
    folder, or trained (seconds on digits, a minute or two on MNIST on a CPU) and cached."""
    _check_labelled_images(dataset)
    device = dataset.device if device is None else device
    path = cache_path(dataset)
    if path.is_file():
        channels, height, width = dataset.shape
        model = ImageClassifier(channels, (height, width), dataset.num_classes)
        try:
            state = load_checkpoint(path, models={"classifier": model}, restore_rng=False)
            return model.to(device).eval(), float(state["config"]["accuracy"])
        except (CheckpointError, KeyError) as error:
            say(f"{path}: unreadable cached classifier ({error}); training a new one")
    say(f"training a classifier for {dataset.name} (once; cached in {path})")
    model, held_out, seconds = train_classifier(dataset, device, say)
    try:
        save_checkpoint(path, models={"classifier": model},
                        config={"dataset": dataset.name, "accuracy": held_out,
                                "train_seconds": seconds, "recipe_version": RECIPE_VERSION,
                                **model.config})
    except OSError as error:  # a read-only home still gets its measures, just not the cache
        say(f"could not cache the classifier in {path} ({error}); it will be trained again")
    return model, held_out


def classify(samples, dataset, model: ImageClassifier | None = None) -> np.ndarray:
    """Predicted class (N,) int64 of images (N, C, H, W) in [-1, 1], by the dataset's classifier."""
    if model is None:
        model, _ = load_classifier(dataset)
    return predict_in_batches(model, samples).argmax(axis=1).astype(np.int64)
