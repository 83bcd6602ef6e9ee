"""Specification of minigen.editing: the classifier-free guidance mix, RePaint inpainting and
SDEdit image-to-image. The mechanics are tested with hand-made denoisers: a recorder that
returns zeros and keeps what it saw, and the exact noise predictor of a two-class toy
(class 0 = N((-0.5, -0.5), 0.1^2 I), class 1 = N((0.5, 0.5), 0.1^2 I)), so no test trains."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minigen
from minigen import cli, diffusion, editing, run, viz
from minigen.data import load_dataset
from minigen.ddpm import DDPMLoop
from minigen.diffusion import NoiseSchedule
from minigen.models.unet import UNet
from tiny_loop import cheap_plots  # noqa: F401

pytestmark = pytest.mark.usefixtures("cheap_plots")

CLASS_MEANS, CLASS_STD = np.array([[-0.5, -0.5], [0.5, 0.5]]), 0.1


class ExactTwoClassModel:
    """eps*(x_t, t, labels) for the two-class toy; labels None gives the unconditional eps*
    of the equal mixture (the score of p_t averaged with posterior class weights)."""

    num_classes = 2

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def __call__(self, x_t, t, labels=None):
        x = x_t.numpy()                                                    # (N, 2)
        alpha_bar = self.schedule.alpha_bar[t.numpy()].reshape(-1, 1)
        variance = alpha_bar * CLASS_STD ** 2 + 1 - alpha_bar              # (N, 1)
        means = np.sqrt(alpha_bar)[:, None] * CLASS_MEANS[None]            # (N, 2 classes, 2)
        scores = -(x[:, None, :] - means) / variance[:, None]              # (N, 2, 2)
        if labels is None:
            log_density = -((x[:, None, :] - means) ** 2).sum(axis=2) / (2 * variance)
            weights = np.exp(log_density - log_density.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            score = (weights[:, :, None] * scores).sum(axis=1)
        else:
            score = scores[np.arange(len(x)), labels.numpy()]
        return minigen.tensor(-np.sqrt(1 - alpha_bar) * score, dtype=x.dtype)


class Recorder:
    """A denoiser that predicts zero noise and records every (x_t, t) it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t):
        self.calls.append((x_t.numpy().copy(), t.numpy().copy()))
        return x_t * 0


class LabelEcho:
    """A stand-in network whose output tells which labels it got: 10 + label, or -1 for none."""

    num_classes = 10

    def __init__(self):
        self.calls = 0

    def __call__(self, x_t, t, labels=None):
        self.calls += 1
        fill = -1.0 if labels is None else labels.numpy().astype(np.float64) + 10
        return x_t * 0 + minigen.tensor(np.reshape(fill, (-1, 1)), dtype=np.float64)


# ---- guidance ------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance,expected,calls", [(0.0, -1.0, 1), (1.0, 13.0, 1),
                                                     (3.0, -1.0 + 3 * 14.0, 2)])
def test_guidance_0_is_unconditional_1_is_conditional_and_more_extrapolates(guidance, expected,
                                                                            calls):
    model = LabelEcho()
    denoiser = editing.guided_denoiser(model, 3, guidance)
    output = denoiser(minigen.zeros(4, 2, dtype=np.float64), minigen.tensor([5, 5, 5, 5]))
    np.testing.assert_allclose(output.numpy(), expected)
    assert model.calls == calls


def test_guidance_mix_is_eps_uncond_plus_w_times_the_difference():
    uncond = minigen.tensor([[1.0, -2.0]], dtype=np.float64)
    cond = minigen.tensor([[3.0, 0.5]], dtype=np.float64)
    np.testing.assert_allclose(editing.guidance_mix(uncond, cond, 2.5).numpy(),
                               [[1 + 2.5 * 2, -2 + 2.5 * 2.5]])


def test_one_label_per_sample_reaches_the_model_unchanged():
    denoiser = editing.guided_denoiser(LabelEcho(), [0, 4, 9], 1.0)
    output = denoiser(minigen.zeros(3, 1, dtype=np.float64), minigen.tensor([1, 1, 1]))
    np.testing.assert_allclose(output.numpy().ravel(), [10, 14, 19])


def test_asking_an_unconditional_model_for_a_class_names_the_fix():
    unconditional = UNet(base_channels=8, channel_mults=(1,), attention=False)
    denoiser = editing.guided_denoiser(unconditional, 7, 3.0)
    with pytest.raises(ValueError, match="unconditional.*--conditional"):
        denoiser(minigen.zeros(1, 1, 8, 8), minigen.tensor([3]))


@pytest.mark.parametrize("labels", [10, -1, [1, 2]])
def test_a_class_the_model_does_not_know_or_a_wrong_count_is_refused(labels):
    denoiser = editing.guided_denoiser(LabelEcho(), labels, 2.0)
    with pytest.raises(ValueError, match="0..9|one per sample"):
        denoiser(minigen.zeros(3, 1, dtype=np.float64), minigen.tensor([1, 1, 1]))


@pytest.mark.parametrize("guidance,share_of_class_1", [(0.0, 0.5), (1.0, 1.0), (3.0, 1.0)])
def test_guided_sampling_with_the_exact_model_draws_the_asked_class(guidance, share_of_class_1):
    """w = 0 ignores the label (half of each class); w = 1 samples class 1 exactly, and w = 3
    stays on it."""
    schedule = NoiseSchedule("cosine", num_timesteps=200)
    minigen.manual_seed(0)
    denoiser = editing.guided_denoiser(ExactTwoClassModel(schedule), 1, guidance)
    samples = diffusion.ddim_sample(denoiser, schedule, (1000, 2), steps=50, clip_x0=False,
                                    x_T=minigen.randn(1000, 2, dtype=np.float64)).numpy()
    in_class_1 = samples.sum(axis=1) > 0
    assert in_class_1.mean() == pytest.approx(share_of_class_1, abs=0.05)
    if guidance == 1.0:
        np.testing.assert_allclose(samples.mean(axis=0), CLASS_MEANS[1], atol=0.02)
        np.testing.assert_allclose(samples.std(axis=0), CLASS_STD, rtol=0.15)


# ---- inpainting ------------------------------------------------------------------------------
def test_repaint_schedule_moves_one_state_at_a_time_and_jumps_back_at_each_jump_point():
    states = editing.repaint_schedule(12, jump_length=3, resamplings=3)
    assert states[0] == 12 and states[-1] == 0
    assert set(np.abs(np.diff(states))) == {1}
    downs = [state for state, target in zip(states[:-1], states[1:]) if target < state]
    # each of the jump points 3, 6, 9 adds (3 - 1) extra walks down its 3 states
    assert len(downs) == 12 + 3 * (3 - 1) * 3
    assert editing.repaint_schedule(5, jump_length=2, resamplings=1) == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("mask", editing.MASKS)
def test_inpainting_returns_the_known_pixels_exactly_with_any_network(mask):
    """An untrained conditional U-Net with guidance: whatever it predicts, the kept pixels of
    the result are the image's own; the regenerated ones are new."""
    minigen.manual_seed(0)
    model = UNet(base_channels=8, channel_mults=(1,), attention=False, num_classes=10)
    image = minigen.rand(2, 1, 8, 8) * 2 - 1
    hidden = editing.region_mask(mask, 8, 8)
    result = editing.inpaint(editing.guided_denoiser(model, 8, 2.0), NoiseSchedule("cosine", 20),
                             image, known=1 - hidden, steps=5, jump_length=2, resamplings=2)
    kept = np.broadcast_to(hidden == 0, image.shape)
    np.testing.assert_array_equal(result.numpy()[kept], image.numpy()[kept])
    assert np.all(result.numpy()[~kept] != image.numpy()[~kept])


def test_the_network_always_sees_the_known_pixels_noised_to_its_own_timestep():
    """RePaint's constraint: before every reverse step from timestep s, the known pixels are a
    draw of q(x_s | x_0) = N(sqrt(ab_s) x_0, 1 - ab_s), including after each jump back up."""
    schedule, recorder = NoiseSchedule("cosine", num_timesteps=50), Recorder()
    image = minigen.full((64, 1, 8, 8), 0.7, dtype=np.float64)
    known = np.zeros((8, 8))
    known[:4] = 1
    minigen.manual_seed(0)
    editing.inpaint(recorder, schedule, image, known, steps=10, jump_length=2, resamplings=3)
    assert len(recorder.calls) == 10 + 4 * 2 * 2
    for x_t, t in recorder.calls:
        alpha_bar = schedule.alpha_bar[t[0]]
        standardised = (x_t[:, :, :4] - math.sqrt(alpha_bar) * 0.7) / math.sqrt(1 - alpha_bar)
        assert standardised.mean() == pytest.approx(0, abs=0.1)
        assert standardised.std() == pytest.approx(1, abs=0.1)


@pytest.mark.parametrize("known_value", [-0.5, 0.5])
def test_inpainting_completes_the_hidden_coordinate_in_the_mode_the_known_one_implies(known_value):
    """Knowing one coordinate of the toy tells the class; the exact unconditional model fills
    the other one in from the same class. Without RePaint's jumps back up, some completions
    disagree with the known coordinate; with them, (almost) none do."""
    schedule = NoiseSchedule("cosine", num_timesteps=100)
    denoiser = editing.guided_denoiser(ExactTwoClassModel(schedule))
    image = minigen.full((400, 2), known_value, dtype=np.float64)
    wrong_share, mean_error = {}, {}
    for resamplings in (1, 5):
        minigen.manual_seed(1)
        result = editing.inpaint(denoiser, schedule, image, known=[1.0, 0.0], jump_length=10,
                                 resamplings=resamplings, clip_x0=False).numpy()
        np.testing.assert_array_equal(result[:, 0], known_value)
        same_mode = np.sign(result[:, 1]) == np.sign(known_value)
        wrong_share[resamplings] = 1 - same_mode.mean()
        mean_error[resamplings] = abs(result[same_mode, 1].mean() - known_value)
    assert wrong_share[5] <= 0.005 < wrong_share[1]
    assert mean_error[5] < 0.015 < mean_error[1]


# ---- image-to-image ------------------------------------------------------------------------
@pytest.mark.parametrize("strength,start_index", [(0.3, 29), (0.6, 59), (1.0, 99)])
def test_img2img_starts_from_the_image_noised_to_strength_times_t(strength, start_index):
    schedule = NoiseSchedule("cosine", num_timesteps=100)
    minigen.manual_seed(0)
    image = minigen.full((100_000, 1), 0.8, dtype=np.float64)
    x_start, index = editing.img2img_start(schedule, image, strength)
    alpha_bar = schedule.alpha_bar[start_index]
    assert index == start_index
    assert x_start.numpy().mean() == pytest.approx(math.sqrt(alpha_bar) * 0.8, abs=0.01)
    assert x_start.numpy().var() == pytest.approx(1 - alpha_bar, rel=0.03, abs=1e-4)


@pytest.mark.parametrize("steps,expected", [(None, list(range(59, -1, -1))),
                                            (10, [59, 50, 40, 30, 20, 10, 0])])
def test_img2img_denoises_from_t0_down_to_zero(steps, expected):
    recorder = Recorder()
    image = minigen.zeros(2, 1, dtype=np.float64)
    editing.img2img(recorder, NoiseSchedule("cosine", 100), image, strength=0.6, steps=steps)
    assert [int(t[0]) for _, t in recorder.calls] == expected


def test_img2img_at_strength_0_returns_the_image_and_refuses_strength_above_1():
    image = minigen.randn(3, 2)
    assert editing.img2img(Recorder(), NoiseSchedule("cosine", 100), image, 0.0) is image
    with pytest.raises(ValueError, match="from 0.*to 1"):
        editing.img2img(Recorder(), NoiseSchedule("cosine", 100), image, 1.5)


def test_img2img_keeps_the_class_at_low_strength_and_forgets_it_at_full_strength():
    """Points of class 0 through the exact unconditional model: little noise keeps them in
    their class, full noise gives back the data distribution (half in each class), and full
    noise with class 1 asked for moves them all."""
    schedule = NoiseSchedule("cosine", num_timesteps=100)
    model, image = ExactTwoClassModel(schedule), minigen.tensor(np.tile(CLASS_MEANS[0], (400, 1)))
    minigen.manual_seed(2)

    def share_in_class_1(labels, strength):
        edited = editing.img2img(editing.guided_denoiser(model, labels), schedule, image,
                                 strength, steps=25, clip_x0=False)
        return np.mean(edited.numpy().sum(axis=1) > 0)

    assert share_in_class_1(None, 0.1) < 0.01
    assert share_in_class_1(None, 1.0) == pytest.approx(0.5, abs=0.08)
    assert share_in_class_1(1, 1.0) > 0.98


# ---- masks and files ----------------------------------------------------------------------
@pytest.mark.parametrize("name,hidden_pixel,kept_pixel", [
    ("top", (0, 4), (7, 4)), ("bottom", (7, 4), (0, 4)), ("left", (4, 0), (4, 7)),
    ("right", (4, 7), (4, 0)), ("center", (4, 4), (0, 0))])
def test_named_masks_hide_their_region(name, hidden_pixel, kept_pixel):
    mask = editing.region_mask(name, 8, 8)
    assert mask[hidden_pixel] == 1 and mask[kept_pixel] == 0
    assert mask.sum() == (16 if name == "center" else 32)


def test_mask_png_regenerates_white_pixels_and_images_read_into_minus_one_to_one(tmp_path):
    from PIL import Image

    pixels = np.zeros((8, 8), dtype=np.uint8)
    pixels[2:5, 1:3] = 255
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(editing.read_mask(str(tmp_path / "mask.png"), 8, 8),
                                  pixels / 255)
    image = editing.read_image(tmp_path / "mask.png", (1, 8, 8))
    assert image.shape == (1, 8, 8) and image.min() == -1 and image.max() == 1
    with pytest.raises(ValueError, match="top, bottom"):
        editing.read_mask("diagonal", 8, 8)


# ---- the conditional DDPM loop ---------------------------------------------------------------
TINY_CONDITIONAL = dict(base_channels=8, channel_mults="1", timesteps=50, batch_size=8,
                        eval_samples=0, warmup_steps=1, sample_every=0, conditional=True)


def conditional_loop(num_classes=10, **overrides) -> DDPMLoop:
    config = run.default_config(DDPMLoop, **{**TINY_CONDITIONAL, **overrides})
    config.update(loop="ddpm", dataset="digits", data_kind="images", data_shape=[1, 8, 8],
                  num_classes=num_classes)
    minigen.manual_seed(0)
    return DDPMLoop(config, "cpu")


@pytest.mark.parametrize("label_dropout", [0.0, 0.5])
def test_training_drops_labels_to_the_null_class_at_the_label_dropout_rate(label_dropout):
    loop = conditional_loop(label_dropout=label_dropout)
    seen, forward = [], loop.model.forward
    def recording_forward(x, t, labels=None):
        seen.append(labels.numpy())
        return forward(x, t, labels)

    loop.model.forward = recording_forward
    labels = np.arange(200) % 10
    loop.train_step(minigen.zeros(200, 1, 8, 8), minigen.tensor(labels), step=0)
    null = seen[0] == 10
    assert null.mean() == pytest.approx(label_dropout, abs=0.1)
    np.testing.assert_array_equal(seen[0][~null], labels[~null])


def test_conditional_needs_labels_and_guidance_needs_a_class():
    with pytest.raises(ValueError, match="--conditional needs class labels"):
        conditional_loop(num_classes=None)
    with pytest.raises(ValueError, match="pass --class C"):
        conditional_loop().sample(2, guidance=3.0)


def saved_checkpoint(loop: DDPMLoop, folder) -> str:
    """The loop saved as `minigen train` saves it (models, EMAs, its config), without training."""
    path = str(folder / "checkpoint.h5")
    minigen.save_checkpoint(path, models=loop.models(), optimizers=loop.optimizers(),
                            ema=loop.emas(), step=0, config=loop.config)
    return path


def test_a_conditional_checkpoint_says_so_and_samples_the_asked_class(tmp_path):
    loop, config, _ = run.load_trained(saved_checkpoint(conditional_loop(), tmp_path), DDPMLoop)
    assert config["conditional"] is True and loop.model.num_classes == 10
    minigen.manual_seed(0)
    samples = loop.sample(3, sampling_steps=4, class_label=7, guidance=3.0)
    assert samples.shape == (3, 1, 8, 8) and np.abs(samples).max() <= 1


def test_asking_an_unconditional_checkpoint_for_a_class_is_one_line_naming_the_fix(tmp_path,
                                                                                  capsys):
    path = saved_checkpoint(conditional_loop(conditional=False), tmp_path)
    code = cli.main(["sample", path, "--class", "3", "--out", str(tmp_path / "s.png")])
    error = capsys.readouterr().err
    assert code == 2 and "unconditional" in error and "--conditional" in error
    assert "Traceback" not in error and not (tmp_path / "s.png").exists()


# ---- the inpaint and img2img commands ----------------------------------------------------------
FAST_EDIT = ["--n", "2", "--sampling-steps", "5"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Untrained tiny DDPMs on the digits, conditional or not, saved as train saves them."""
    folder = tmp_path_factory.mktemp("editing_checkpoints")
    (folder / "unconditional").mkdir()
    return {"conditional": saved_checkpoint(conditional_loop(), folder),
            "unconditional": saved_checkpoint(conditional_loop(conditional=False),
                                              folder / "unconditional")}


def test_inpaint_command_keeps_the_unmasked_half_of_the_test_image(checkpoints, tmp_path):
    out = tmp_path / "edits.npy"
    assert cli.main(["inpaint", checkpoints["conditional"], "--index", "3", "--mask", "bottom",
                     "--class", "8", "--jump-length", "2", "--resamplings", "2",
                     "--out", str(out), *FAST_EDIT]) == 0
    edits, original = np.load(out), load_dataset("digits").test[3]
    assert edits.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(edits[:, :, :4], np.broadcast_to(original[:, :4], (2, 1, 4, 8)))
    assert not np.array_equal(edits[:, :, 4:], np.broadcast_to(original[:, 4:], (2, 1, 4, 8)))


def test_an_edit_that_cannot_be_written_is_one_line_and_keeps_the_previous_file(
        checkpoints, tmp_path, monkeypatch, capsys):
    import errno
    import os
    import minigen.files

    out = tmp_path / "edits.npy"
    out.write_bytes(b"the previous edits")

    class FailingWrites:  # os, except that writing fails as a failing disk does
        def __getattr__(self, name):
            if name == "write":
                def fail(*args):
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                return fail
            return getattr(os, name)

    monkeypatch.setattr(minigen.files, "os", FailingWrites())
    code = cli.main(["inpaint", checkpoints["conditional"], "--index", "3", "--mask", "bottom",
                     "--out", str(out), *FAST_EDIT])
    monkeypatch.undo()
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert f"cannot write {out}: the disk reported an input/output error (EIO)" in error
    assert out.read_bytes() == b"the previous edits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edits.npy"]


def test_img2img_command_writes_the_input_then_the_edits_in_one_strip(checkpoints, tmp_path):
    from PIL import Image

    digit = ((load_dataset("digits").test[0, 0] + 1) * 127.5).astype(np.uint8)
    Image.fromarray(digit).resize((16, 16)).save(tmp_path / "digit.png")
    out = tmp_path / "strip.png"
    assert cli.main(["img2img", checkpoints["conditional"], "--image", str(tmp_path / "digit.png"),
                     "--strength", "0.5", "--out", str(out), *FAST_EDIT]) == 0
    padding = 3  # viz's default between 8x8 digits enlarged 6 times
    strip, cell = np.asarray(Image.open(out)), 8 * viz.GRID_MIN_PIXELS // 8 + padding
    assert strip.shape == (cell + padding, 3 * cell + padding)


@pytest.mark.parametrize("which,arguments,message", [
    ("unconditional", ["inpaint", "--mask", "top", "--class", "3"], "unconditional"),
    ("conditional", ["inpaint", "--mask", "diagonal"], "top, bottom"),
    ("conditional", ["img2img", "--strength", "2"], "from 0"),
    ("conditional", ["img2img", "--class", "12"], "0..9"),
])
def test_editing_commands_refuse_bad_input_in_one_line(checkpoints, tmp_path, capsys, which,
                                                       arguments, message):
    command, *options = arguments
    code = cli.main([command, checkpoints[which], "--index", "0", *options,
                     "--out", str(tmp_path / "x.png"), *FAST_EDIT])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1


def test_editing_commands_name_the_valid_indices_and_unreadable_images(checkpoints, tmp_path,
                                                                       capsys):
    assert cli.main(["img2img", checkpoints["conditional"], "--index", "5000",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "pass 0 to 296" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not a picture")
    assert cli.main(["img2img", checkpoints["conditional"], "--image", str(tmp_path / "bad.png"),
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "cannot read the image" in capsys.readouterr().err
