"""Pictures: each function writes a PNG of the size its docstring promises, with the pixels
where they should be, and plotting leaves matplotlib's global state (pyplot) alone."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minigen.viz import (GRID_MIN_PIXELS, LABEL_HEIGHT, make_grid, save_image_grid,
                         save_loss_curves, save_scatter, save_strip, save_trajectory)


def open_png(path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    image.load()
    return image


def grid_side(count: int, pixels: int, scale: int, padding: int) -> int:
    return count * (pixels * scale + padding) + padding


@pytest.mark.parametrize("count, channels, nrow, padding, scale", [
    (16, 1, None, 1, 2), (10, 3, 4, 2, 1), (1, 1, None, 0, 3), (7, 1, 7, 1, 1),
])
def test_grid_size_is_cells_plus_padding(tmp_path, count, channels, nrow, padding, scale):
    images = np.zeros((count, channels, 5, 6), dtype=np.float32)
    save_image_grid(images, tmp_path / "grid.png", nrow=nrow, padding=padding, scale=scale)
    image = open_png(tmp_path / "grid.png")
    columns = nrow or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    assert image.size == (grid_side(columns, 6, scale, padding), grid_side(rows, 5, scale, padding))
    assert image.mode == ("L" if channels == 1 else "RGB")


def test_small_images_are_enlarged_by_repeating_pixels():
    image = np.full((1, 1, 8, 8), -1.0, dtype=np.float32)
    image[0, 0, 0, 0] = 1.0
    grid = make_grid(image, padding=0)
    scale = GRID_MIN_PIXELS // 8
    assert grid.shape == (8 * scale, 8 * scale)
    assert (grid[:scale, :scale] == 255).all() and (grid[scale:, :] == 0).all()


def test_grid_maps_minus1_to_black_plus1_to_white_and_pads_in_grey():
    images = np.stack([np.full((3, 2, 2), -1.0), np.full((3, 2, 2), 5.0)])  # 5 is clipped
    grid = make_grid(images, nrow=2, padding=1, scale=1)
    assert grid.shape == (4, 7, 3)
    assert (grid[1:3, 1:3] == 0).all() and (grid[1:3, 4:6] == 255).all()
    assert (grid[0] == 128).all() and (grid[:, 3] == 128).all()


def test_grid_rejects_images_that_are_not_nchw():
    with pytest.raises(ValueError, match=r"make_grid: expected images \(N, C, H, W\) with C = 1 "
                                         r"or 3, got shape \(2, 2, 4, 4\)"):
        make_grid(np.zeros((2, 2, 4, 4)))


def test_strip_is_one_row(tmp_path):
    save_strip(np.zeros((9, 1, 8, 8)), tmp_path / "strip.png", padding=1, scale=2)
    assert open_png(tmp_path / "strip.png").size == (grid_side(9, 8, 2, 1), grid_side(1, 8, 2, 1))


@pytest.mark.parametrize("dims", [1, 2])
def test_scatter_writes_a_square_png_over_the_true_data(tmp_path, dims):
    rng = np.random.default_rng(0)
    true_points = rng.normal(size=(500, dims))
    samples = rng.normal(size=(200, dims)) + 0.5
    centres = np.zeros((1, dims))
    save_scatter(samples, tmp_path / "s.png", true_points=true_points, centres=centres,
                 std=0.1, title="samples", size=300)
    assert open_png(tmp_path / "s.png").size == (300, 300)


def test_scatter_of_samples_alone_and_far_outliers(tmp_path):
    samples = np.concatenate([np.zeros((50, 2)), np.full((2, 2), 1e6)])
    save_scatter(samples, tmp_path / "s.png", centres=np.ones((3, 2)))
    assert open_png(tmp_path / "s.png").size == (500, 500)


def test_scatter_rejects_points_of_more_than_two_dimensions(tmp_path):
    with pytest.raises(ValueError, match=r"save_scatter: expected points \(N, 1\) or \(N, 2\), "
                                         r"got shape \(4, 3\)"):
        save_scatter(np.zeros((4, 3)), tmp_path / "s.png")


@pytest.mark.parametrize("log", [
    [{"step": 10 * i, "loss": 1.0 / (i + 1), "lr": 1e-3} for i in range(60)],
    {"d_loss": np.linspace(1, 0.5, 40), "g_loss": (np.arange(0, 80, 2), np.linspace(2, 1, 40))},
    {"loss": (0.9, 0.5)},
], ids=["rows", "dict", "two-values"])
def test_loss_curves_write_an_800_by_400_png(tmp_path, log):
    save_loss_curves(log, tmp_path / "loss.png", log_scale=True, title="run")
    assert open_png(tmp_path / "loss.png").size == (800, 400)


def test_loss_curves_name_a_missing_column(tmp_path):
    with pytest.raises(ValueError, match=r"no values for \['g_loss'\]; the log has \['loss'\]"):
        save_loss_curves([{"step": 0, "loss": 1.0}], tmp_path / "loss.png", keys=["g_loss"])


def test_plots_never_import_pyplot():
    # pyplot holds global figure state and picks a GUI backend; viz draws on Agg without it.
    script = ("import sys, tempfile, os, numpy as np; from minigen.viz import save_scatter, "
              "save_loss_curves; d = tempfile.mkdtemp(); "
              "save_scatter(np.zeros((5, 2)), os.path.join(d, 'a.png')); "
              "save_loss_curves({'loss': [1.0, 0.5]}, os.path.join(d, 'b.png')); "
              "print('matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_grid_images_never_touch_by_default():
    # 8x8 digits enlarged 6 times get 3 pixels of grey between them, so columns do not read as
    # strips; larger images get at least 2
    grid = make_grid(np.full((4, 1, 8, 8), -1.0), nrow=2)
    assert grid.shape == (2 * 51 + 3, 2 * 51 + 3)
    assert (grid[:, 48 + 3:51 + 3] == 128).all() and (grid[48 + 3:51 + 3, :] == 128).all()
    assert make_grid(np.zeros((2, 1, 28, 28)), nrow=2).shape == (28 + 4, 2 * 30 + 2)


def test_trajectory_is_labelled_with_the_timestep_of_each_column(tmp_path):
    states = np.full((2, 3, 1, 8, 8), -1.0)
    save_trajectory(states, [1000, 500, 0], tmp_path / "strip.png")
    picture = np.asarray(open_png(tmp_path / "strip.png"))
    assert picture.shape == (LABEL_HEIGHT + 2 * 51 + 3, 3 * 51 + 3)
    band = picture[:LABEL_HEIGHT]
    for column in range(3):  # dark text over each column of the white band
        cell = band[:, 3 + column * 51:3 + column * 51 + 48]
        assert (cell < 100).sum() > 10, column
    assert (band[:, 48 + 3:51 + 3] == 255).all()  # and nothing between the columns


def test_trajectory_needs_one_timestep_per_column(tmp_path):
    with pytest.raises(ValueError, match=r"save_trajectory: expected states \(R, S, C, H, W\) "
                                         r"and S timesteps, got shape \(2, 3, 1, 8, 8\) and 2"):
        save_trajectory(np.zeros((2, 3, 1, 8, 8)), [10, 0], tmp_path / "strip.png")
