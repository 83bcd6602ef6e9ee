"""The whole `device="cuda"` path, end to end, on every machine: on a GPU where one can be used,
else on the strict CuPy stand-in (tests/cuda_on_cpu/), whose arrays refuse implicit conversion
to NumPy as CuPy's do and whose kernels are the real CUDA C run on CPU threads. A DDPM and a GAN
train, sample, save, load and resume on device "cuda"; a stray NumPy call on device data fails.
The runs are tiny (and the pictures few) because the CUDA C runs on two CPU cores here.
"""
from __future__ import annotations

import numpy as np
import pytest

import minigen
from minigen import backend, cli, diffusion, run
from minigen.checkpoint import load_checkpoint
from minigen.ddpm import DDPMLoop
from minigen.gan import GANLoop
from tiny_loop import cheap_plots  # noqa: F401

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("cheap_plots", "few_pictures")]
quiet = dict(say=lambda _: None, progress=False)


@pytest.fixture
def few_pictures(monkeypatch):
    """samples.png from 4 samples and 3 DDIM steps instead of 64 and 50."""
    defaults = run.sample_defaults
    monkeypatch.setattr(run, "PICTURE_COUNT", 4)
    monkeypatch.setattr(run, "sample_defaults", lambda loop_cls: {
        **defaults(loop_cls), **({"sampling_steps": 3} if loop_cls is DDPMLoop else {})})


def ddpm_config(out, **overrides) -> dict:
    return run.default_config(DDPMLoop, **{
        "out": str(out), "device": "cuda", "base_channels": 8, "timesteps": 10, "batch_size": 4,
        "eval_samples": 0, "warmup_steps": 1, "sample_every": 0, **overrides})


def gan_config(out, **overrides) -> dict:
    return run.default_config(GANLoop, **{
        "out": str(out), "device": "cuda", "batch_size": 8, "width": 8, "latent_dim": 4,
        "d_steps": 2, "eval_samples": 0, "checkpoint_every": 100, **overrides})


def weights_and_state(path, loop_cls, config_of):
    """Every model's weights (as NumPy, loaded on the CPU) and the saved state of a checkpoint."""
    config, _ = run.read_checkpoint_config(str(path))
    loop = loop_cls(config, "cpu")
    state = load_checkpoint(path, models=loop.models(), optimizers=loop.optimizers(),
                            ema=loop.emas(), restore_rng=False)
    weights = {f"{key}.{name}": tensor.data for key, model in loop.models().items()
               for name, tensor in model.state_dict().items()}
    return weights, state


def assert_resume_equals_straight(tmp_path, loop_cls, config_of, steps):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run.train(loop_cls, config_of(straight, steps=steps), **quiet)
    run.train(loop_cls, config_of(split, steps=steps // 2), **quiet)
    run.train(loop_cls, config_of(split, steps=steps, resume=str(split / "checkpoint.h5")),
              **quiet)
    (weights_a, state_a), (weights_b, state_b) = (
        weights_and_state(folder / "checkpoint.h5", loop_cls, config_of)
        for folder in (straight, split))
    assert state_a["step"] == state_b["step"] == steps
    assert list(weights_a) == list(weights_b)
    for name in weights_a:
        np.testing.assert_array_equal(weights_a[name], weights_b[name], err_msg=name)
    assert state_a["rng_state"] == state_b["rng_state"]
    assert state_a["rng_state"]["cuda"]["offset"] > 0  # the noise was drawn on the device
    return straight / "checkpoint.h5"


def test_ddpm_trains_saves_and_resumes_on_the_device_bit_for_bit(cuda_backend, tmp_path):
    checkpoint = assert_resume_equals_straight(tmp_path, DDPMLoop, ddpm_config, steps=2)
    loop, _, step = run.load_trained(str(checkpoint), DDPMLoop, device="cuda")
    assert step == 2 and all(p.device == "cuda" for p in loop.model.parameters())


@pytest.mark.parametrize("dataset, loss", [("ring8", "wgan-gp"), ("digits", "nonsaturating")])
def test_gan_trains_saves_and_resumes_on_the_device_bit_for_bit(cuda_backend, tmp_path, dataset,
                                                                 loss):
    # wgan-gp takes second derivatives (create_graph=True) on the device; digits runs DCGAN's
    # transposed convolutions and batch norm.
    checkpoint = assert_resume_equals_straight(
        tmp_path, GANLoop, lambda out, **options: gan_config(out, dataset=dataset, loss=loss,
                                                             **options), steps=2)
    loop, _, _ = run.load_trained(str(checkpoint), GANLoop, device="cuda")
    samples = loop.sample(5)
    assert isinstance(samples, np.ndarray) and len(samples) == 5 and np.all(np.isfinite(samples))


@pytest.fixture
def trained_ddpm(cuda_backend, tmp_path):
    run.train(DDPMLoop, ddpm_config(tmp_path, steps=1), **quiet)
    return tmp_path / "checkpoint.h5"


def test_deterministic_ddim_on_the_device_matches_the_cpu(trained_ddpm):
    # Same weights, same x_T, eta = 0: the device path computes what the CPU path does.
    x_T = np.random.default_rng(4).standard_normal((3, 1, 8, 8)).astype(np.float32)
    samples = {}
    for device in ("cuda", "cpu"):
        loop, _, _ = run.load_trained(str(trained_ddpm), DDPMLoop, device=device)
        with loop.guided() as denoiser:
            result = diffusion.ddim_sample(denoiser, loop.schedule, x_T.shape, steps=3, eta=0.0,
                                           device=device, prediction=loop.prediction,
                                           x_T=minigen.Tensor(backend.to_device(x_T, device)))
        samples[device] = backend.to_numpy(result.data)
    np.testing.assert_allclose(samples["cuda"], samples["cpu"], rtol=1e-4, atol=1e-4)


def test_ancestral_sampling_runs_on_the_device(trained_ddpm):
    loop, _, _ = run.load_trained(str(trained_ddpm), DDPMLoop, device="cuda")
    samples = loop.sample(2, sampler="ddpm")
    assert isinstance(samples, np.ndarray) and samples.shape == (2, 1, 8, 8)
    assert np.all(np.isfinite(samples)) and np.all(np.abs(samples) <= 1)


def test_minigen_sample_writes_samples_drawn_on_the_device(trained_ddpm, tmp_path):
    out = tmp_path / "samples.npy"
    assert cli.main(["sample", str(trained_ddpm), "--n", "2", "--sampling-steps", "2",
                     "--device", "cuda", "--out", str(out)]) == 0
    samples = np.load(out)
    assert samples.shape == (2, 1, 8, 8) and np.all(np.abs(samples) <= 1)


def test_a_stray_numpy_call_on_device_data_fails_as_on_a_gpu(cuda_backend):
    x = minigen.randn(2, 3, device="cuda")
    assert x.device == "cuda" and not isinstance(x.data, np.ndarray)
    if not cuda_backend.on_gpu:  # CuPy itself answers NumPy's ufuncs; the stand-in refuses them
        with pytest.raises(TypeError):
            np.exp(x.data)
    with pytest.raises(TypeError):
        np.asarray(x.data)
    with pytest.raises(TypeError):
        float(x.data)
    assert x.numpy().shape == (2, 3)  # the explicit way out
