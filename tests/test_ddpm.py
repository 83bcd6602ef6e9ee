"""Specification of DDPMLoop through the run harness: exact resumption with a tiny U-Net, the
sampling options (samplers, trajectory strip, EMA weights), option errors, and a short run on
the ring of 8 Gaussians that must find every mode."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import minigen
from minigen import run, viz
from minigen.checkpoint import load_checkpoint
from minigen.data import load_dataset
from minigen.ddpm import DDPMLoop
from tiny_loop import cheap_plots  # noqa: F401

pytestmark = pytest.mark.usefixtures("cheap_plots")

TINY_UNET = dict(base_channels=8, timesteps=100, batch_size=8, eval_samples=0, warmup_steps=2,
                 sample_every=0)


def tiny_ddpm_config(out, **overrides) -> dict:
    return run.default_config(DDPMLoop, **{"out": str(out), **TINY_UNET, **overrides})


def built_loop(**overrides) -> DDPMLoop:
    config = run.default_config(DDPMLoop, **{**TINY_UNET, **overrides})
    config.update(loop="ddpm", data_kind="images", data_shape=[1, 8, 8], num_classes=10)
    minigen.manual_seed(0)
    return DDPMLoop(config, "cpu")


def restored(path) -> tuple[DDPMLoop, dict]:
    config, _ = run.read_checkpoint_config(str(path))
    loop = DDPMLoop(config, "cpu")
    state = load_checkpoint(path, models=loop.models(), optimizers=loop.optimizers(),
                            ema=loop.emas(), restore_rng=False)
    return loop, state


def test_resume_equals_a_straight_run_bit_for_bit(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    quiet = dict(say=lambda _: None)
    run.train(DDPMLoop, tiny_ddpm_config(straight, steps=6, checkpoint_every=3), **quiet)
    run.train(DDPMLoop, tiny_ddpm_config(split, steps=3), **quiet)
    run.train(DDPMLoop, tiny_ddpm_config(split, steps=6, resume=str(split / "checkpoint.h5")),
              **quiet)
    (loop_a, state_a), (loop_b, state_b) = restored(straight / "checkpoint.h5"), \
        restored(split / "checkpoint.h5")
    assert state_a["step"] == state_b["step"] == 6
    for name, value in loop_a.model.state_dict().items():
        np.testing.assert_array_equal(value.data, loop_b.model.state_dict()[name].data, err_msg=name)
    for name, shadow in loop_a.ema.shadow.items():
        np.testing.assert_array_equal(shadow, loop_b.ema.shadow[name], err_msg=f"EMA {name}")
    assert loop_a.lr_schedule.last_epoch == loop_b.lr_schedule.last_epoch == 6
    assert state_a["rng_state"] == state_b["rng_state"]
    pictures = [np.asarray(Image.open(folder / "samples.png")) for folder in (straight, split)]
    np.testing.assert_array_equal(pictures[0], pictures[1])


@pytest.mark.parametrize("options", [dict(sampler="ddim", sampling_steps=5, eta=0.0),
                                     dict(sampler="ddim", sampling_steps=4, eta=1.0),
                                     dict(sampler="ddpm", variance="beta_tilde"),
                                     dict(sampler="euler", sampling_steps=4),
                                     dict(sampler="heun", sampling_steps=3,
                                          timestep_spacing="trailing"),
                                     dict(sampler="dpm-solver++", sampling_steps=5,
                                          timestep_spacing="linspace")])
def test_sample_gives_images_in_minus_one_to_one_deterministic_under_a_seed(options):
    loop = built_loop(timesteps=20)
    draws = []
    for _ in range(2):
        minigen.manual_seed(3)
        draws.append(loop.sample(5, **options))
    assert draws[0].shape == (5, 1, 8, 8) and np.abs(draws[0]).max() <= 1.0
    np.testing.assert_array_equal(draws[0], draws[1])


def test_sample_uses_the_ema_weights_and_leaves_the_trained_ones_in_place():
    loop = built_loop(timesteps=20)
    trained = {name: p.data.copy() for name, p in loop.model.named_parameters()}
    for name in loop.ema.shadow:  # an average that differs from the trained weights
        loop.ema.shadow[name] = loop.ema.shadow[name] * 0.5
    minigen.manual_seed(0)
    with_ema = loop.sample(4, sampling_steps=3)
    for name, p in loop.model.named_parameters():
        np.testing.assert_array_equal(p.data, trained[name], err_msg=name)
    loop.ema.copy_to(loop.model)
    loop.ema.shadow = {name: p.data.copy() for name, p in loop.model.named_parameters()}
    minigen.manual_seed(0)
    np.testing.assert_array_equal(loop.sample(4, sampling_steps=3), with_ema)


def test_trajectory_strip_runs_from_noise_to_the_samples(tmp_path):
    loop = built_loop(timesteps=20)
    strip = tmp_path / "strip.png"
    minigen.manual_seed(0)
    loop.sample(3, sampling_steps=10, trajectory=str(strip))
    picture = np.asarray(Image.open(strip))
    # a band of timestep labels over 3 rows of 11 states, each 8x8 enlarged 6 times, with
    # 3-pixel borders
    assert picture.shape == (viz.LABEL_HEIGHT + 3 * 51 + 3, 11 * 51 + 3)


@pytest.mark.parametrize("overrides,message", [
    (dict(channel_mults="1,x"), "--channel-mults"),
    (dict(channel_mults="1,2,2,2,2"), "cannot be halved 4 times"),
])
def test_bad_model_options_name_the_option(overrides, message):
    with pytest.raises(ValueError, match=message):
        built_loop(**overrides)


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="ddpm, ddim, euler, heun, dpm-solver"):
        built_loop(timesteps=20).sample(2, sampler="unipc")


@pytest.mark.slow
def test_a_short_run_on_the_ring_of_8_gaussians_puts_samples_on_the_ring_near_every_mode(tmp_path):
    """600 steps learn the ring and spread the samples over all 8 modes; the modes' full
    sharpness (std 0.02) takes longer (demos/ddpm_2d.py measures it)."""
    config = run.default_config(DDPMLoop, out=str(tmp_path), dataset="ring8", steps=600,
                                batch_size=128, eval_samples=0, checkpoint_every=600,
                                sample_every=0)
    run.train(DDPMLoop, config, say=lambda _: None)
    loop, _, _ = run.load_trained(str(tmp_path / "checkpoint.h5"), DDPMLoop)
    minigen.manual_seed(0)
    samples = loop.sample(1000, sampling_steps=20)
    ring = load_dataset("ring8")
    radius = np.linalg.norm(samples, axis=1)
    assert np.mean(np.abs(radius - 2.0) < 0.2) > 0.9
    nearest = np.linalg.norm(samples[:, None] - ring.centres[None], axis=2).argmin(axis=1)
    shares = np.bincount(nearest, minlength=8) / len(samples)
    assert shares.min() > 0.06, f"modes' shares of the samples: {shares}"
