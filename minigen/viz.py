"""Pictures of what a model does: image grids, scatter plots of 2D samples, loss curves.

Images go straight to PNG with Pillow; plots are drawn with matplotlib on an Agg canvas
attached to each figure, so neither pyplot nor the user's chosen backend is touched.
Inputs may be NumPy or CuPy arrays (or anything with `.numpy()`, such as a Tensor). Each
picture is rendered in memory and written whole (minigen.files), so a full disk is one line
naming the file and the previous picture stays as it was.
"""
from __future__ import annotations

import io
import math
import os
from typing import Iterable, Mapping

import numpy as np

from minigen import backend
from minigen.files import write_atomically

GRID_MIN_PIXELS = 48  # small images are enlarged until a side has at least this many pixels


def _extension(path: str | os.PathLike) -> str:
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if not extension:
        raise ValueError(f"{os.fspath(path)}: no file extension to choose the picture format "
                         "by; end the name in .png")
    return extension


def _write_figure(figure, path: str | os.PathLike, dpi: int) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format=_extension(path)[1:])
    write_atomically(path, buffer.getvalue())


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach") and hasattr(array, "numpy"):  # a Tensor
        array = array.detach().numpy()
    return backend.to_numpy(array)


def _scale(height: int, width: int, scale: int | None) -> int:
    return scale or max(1, GRID_MIN_PIXELS // max(height, width))


def _padding(scale: int, padding: int | None) -> int:
    """Default: half an enlarged pixel and at least 2, so neighbouring images never touch."""
    return max(2, scale // 2) if padding is None else padding


def make_grid(images, nrow: int | None = None, padding: int | None = None,
              scale: int | None = None, pad_value: float = 0.0) -> np.ndarray:
    """Tile images (N, C, H, W) in [-1, 1], C in {1, 3}, into one uint8 picture.

    nrow images per row (default: a square-ish grid); each image enlarged `scale` times
    by repeating pixels (default: up to GRID_MIN_PIXELS); `padding` pixels of `pad_value`
    (in [-1, 1]; 0 is mid grey) between and around them (default: max(2, scale // 2), 3 for
    the 8x8 digits). Returns (H', W') or (H', W', 3).
    """
    images = _as_numpy(images).astype(np.float32)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"make_grid: expected images (N, C, H, W) with C = 1 or 3, got shape "
                         f"{images.shape}")
    count, channels, height, width = images.shape
    scale = _scale(height, width, scale)
    padding = _padding(scale, padding)
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    cell_h, cell_w = height * scale + padding, width * scale + padding
    grid = np.full((channels, rows * cell_h + padding, nrow * cell_w + padding),
                   pad_value, dtype=np.float32)
    enlarged = images.repeat(scale, axis=2).repeat(scale, axis=3)
    for index in range(count):
        row, col = divmod(index, nrow)
        top, left = padding + row * cell_h, padding + col * cell_w
        grid[:, top:top + height * scale, left:left + width * scale] = enlarged[index]
    pixels = np.round((np.clip(grid, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return pixels[0] if channels == 1 else pixels.transpose(1, 2, 0)


def save_image_grid(images, path: str | os.PathLike, nrow: int | None = None,
                    padding: int | None = None, scale: int | None = None,
                    pad_value: float = 0.0) -> None:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid (see make_grid)."""
    from PIL import Image

    extension = _extension(path)
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError(f"{os.fspath(path)}: Pillow cannot write {extension} files; end the "
                         "name in .png")
    buffer = io.BytesIO()
    Image.fromarray(make_grid(images, nrow, padding, scale, pad_value)).save(buffer,
                                                                             image_format)
    write_atomically(path, buffer.getvalue())


def save_strip(images, path: str | os.PathLike, padding: int | None = None,
               scale: int | None = None) -> None:
    """Write images (N, C, H, W) in [-1, 1] side by side in one row (e.g. a trajectory)."""
    save_image_grid(images, path, nrow=len(images), padding=padding, scale=scale)


LABEL_HEIGHT = 14  # pixels of the band above a trajectory that names each column's timestep


def save_trajectory(states, timesteps, path: str | os.PathLike, padding: int | None = None,
                    scale: int | None = None) -> None:
    """Write a denoising trajectory: states (R, S, C, H, W) in [-1, 1], one row per sample and
    one column per state, under a band that labels each column with its timestep (S values,
    e.g. t=1000 for the starting noise down to t=0 for the sample)."""
    from PIL import Image, ImageDraw, ImageFont

    states = _as_numpy(states)
    timesteps = [int(t) for t in timesteps]
    if states.ndim != 5 or len(timesteps) != states.shape[1]:
        raise ValueError(f"save_trajectory: expected states (R, S, C, H, W) and S timesteps, "
                         f"got shape {states.shape} and {len(timesteps)} timesteps")
    rows, columns, channels, height, width = states.shape
    scale = _scale(height, width, scale)
    padding = _padding(scale, padding)
    grid = make_grid(np.clip(states.reshape(rows * columns, channels, height, width), -1, 1),
                     nrow=columns, padding=padding, scale=scale)
    picture = Image.new(Image.fromarray(grid).mode,
                        (grid.shape[1], grid.shape[0] + LABEL_HEIGHT), "white")
    picture.paste(Image.fromarray(grid), (0, LABEL_HEIGHT))
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    cell = width * scale + padding
    for column, t in enumerate(timesteps):
        label = f"t={t}"
        if draw.textlength(label, font=font) > cell:
            label = str(t)
        left = padding + column * cell + (width * scale - draw.textlength(label, font=font)) / 2
        draw.text((left, 1), label, fill="black", font=font)
    picture.save(path)


def _figure(width_inches: float, height_inches: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_inches, height_inches), dpi=dpi)
    FigureCanvasAgg(figure)  # the Agg canvas, chosen here rather than through pyplot
    return figure


def save_scatter(points, path: str | os.PathLike, true_points=None, centres=None,
                 std: float | None = None, title: str | None = None, size: int = 500) -> None:
    """Plot samples (N, 2) over the true distribution; (N, 1) samples as a histogram.

    true_points: samples of the data, drawn faintly as the density; centres (K, D): the
    modes, marked with crosses, with a circle of 3 std (the mode-coverage radius) when
    `std` is given. The view is fitted to the true data; samples outside it are counted in
    the title. The PNG is `size` pixels square.
    """
    points = _as_numpy(points).astype(np.float64)
    true_points = None if true_points is None else _as_numpy(true_points).astype(np.float64)
    centres = None if centres is None else _as_numpy(centres).astype(np.float64)
    if points.ndim == 1:
        points = points[:, None]
    if points.ndim != 2 or points.shape[1] not in (1, 2):
        raise ValueError(f"save_scatter: expected points (N, 1) or (N, 2), got shape "
                         f"{points.shape}; project higher-dimensional data to 2D first")
    dpi = 100
    figure = _figure(size / dpi, size / dpi, dpi)
    axes = figure.add_subplot()
    reference = [array for array in (true_points, centres) if array is not None]
    reference = np.concatenate([r.reshape(-1, points.shape[1]) for r in reference]) \
        if reference else points
    low, high = reference.min(axis=0), reference.max(axis=0)
    margin = 0.1 * np.maximum(high - low, 1e-3) + (3 * std if std else 0.0)
    low, high = low - margin, high + margin
    outside = int(np.sum(np.any((points < low) | (points > high), axis=1)))

    if points.shape[1] == 1:
        bins = np.linspace(low[0], high[0], 80)
        if true_points is not None:
            axes.hist(true_points.ravel(), bins=bins, density=True, histtype="stepfilled",
                      color="0.8", label="data")
        axes.hist(np.clip(points.ravel(), low[0], high[0]), bins=bins, density=True,
                  histtype="step", color="tab:blue", linewidth=1.5, label="samples")
        for centre in ([] if centres is None else centres.ravel()):
            axes.axvline(centre, color="tab:red", linestyle="--", linewidth=1)
        axes.set_xlim(low[0], high[0])
        axes.legend(loc="upper right")
    else:
        if true_points is not None:
            axes.scatter(true_points[:, 0], true_points[:, 1], s=1, color="0.75",
                         alpha=0.3, linewidths=0, label="data")
        axes.scatter(points[:, 0], points[:, 1], s=4, color="tab:blue", alpha=0.6,
                     linewidths=0, label="samples")
        if centres is not None:
            axes.scatter(centres[:, 0], centres[:, 1], marker="x", color="tab:red", s=30,
                         linewidths=1, label="modes")
            if std:
                from matplotlib.patches import Circle
                for centre in centres:
                    axes.add_patch(Circle(tuple(centre), 3 * std, fill=False,
                                          color="tab:red", linewidth=0.5, alpha=0.6))
        axes.set_xlim(low[0], high[0])
        axes.set_ylim(low[1], high[1])
        axes.set_aspect("equal", adjustable="box")
    heading = title or ""
    if outside:
        heading += f"{' - ' if heading else ''}{outside} of {len(points)} samples outside view"
    if heading:
        axes.set_title(heading, fontsize=10)
    figure.tight_layout()
    _write_figure(figure, path, dpi)


def _series(log) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (steps, values) from rows [{'step': s, 'loss': v, ...}] or {name: values}."""
    if isinstance(log, Mapping):
        series = {}
        for name, values in log.items():
            if isinstance(values, tuple) and len(values) == 2 and np.ndim(values[0]) == 1:
                steps, values = values
            else:
                steps = np.arange(len(values))
            series[name] = (np.asarray(steps, dtype=np.float64),
                            np.asarray(values, dtype=np.float64))
        return series
    collected: dict[str, tuple[list, list]] = {}
    for index, row in enumerate(log):
        step = row.get("step", index)
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float, np.number)) \
                    and not isinstance(value, bool):
                collected.setdefault(name, ([], []))
                collected[name][0].append(step)
                collected[name][1].append(value)
    return {name: (np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64))
            for name, (steps, values) in collected.items()}


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values (fewer at the start), NaN-free input assumed."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def save_loss_curves(log, path: str | os.PathLike, keys: Iterable[str] | None = None,
                     window: int | None = None, log_scale: bool = False,
                     title: str | None = None) -> None:
    """Plot one line per loss against the step: the raw values faint, a moving average bold.

    log: rows of a training log [{'step': 0, 'loss': 0.9, ...}, ...] or {name: values} or
    {name: (steps, values)}. keys: which columns to draw (default: those whose name contains
    'loss', else every numeric column). window: moving-average length (default: 1/25 of
    the run). The PNG is 800 x 400 pixels.
    """
    series = _series(log)
    if keys is None:
        keys = [name for name in series if "loss" in name] or list(series)
    keys = list(keys)
    missing = [key for key in keys if key not in series]
    if missing or not keys:
        raise ValueError(f"save_loss_curves: no values for {missing or 'any column'}; the log "
                         f"has {sorted(series) or 'no numeric columns'}")
    figure = _figure(8, 4, 100)
    axes = figure.add_subplot()
    for index, name in enumerate(keys):
        steps, values = series[name]
        finite = np.isfinite(values)
        steps, values = steps[finite], values[finite]
        colour = f"C{index % 10}"
        axes.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        length = window or max(1, len(values) // 25)
        axes.plot(steps, _moving_average(values, length), color=colour, linewidth=1.8,
                  label=name)
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.legend(loc="upper right")
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    _write_figure(figure, path, 100)


def save_array(array: np.ndarray, path: str | os.PathLike) -> None:
    """`array` as a .npy file, written whole and renamed into place (files.write_atomically):
    a failing write leaves the previous file as it was."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomically(path, buffer.getvalue())


def write_samples(samples: np.ndarray, path: str | os.PathLike, dataset=None) -> None:
    """.npy: the raw array; .png: an image grid, or points scattered over the data (first two
    coordinates) when `dataset` (a minigen.data.Dataset) holds points."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        save_array(samples, path)
    elif samples.ndim == 2:
        reference = dataset if dataset is not None and dataset.kind == "points" else None
        save_scatter(samples[:, :2], path,
                     true_points=None if reference is None else reference.test[:, :2],
                     centres=None if reference is None or reference.centres is None
                     else reference.centres[:, :2],
                     std=None if reference is None else reference.std)
    else:
        save_image_grid(samples, path)
