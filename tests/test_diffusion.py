"""Specification of minigen.diffusion: schedule coefficients against their closed forms, the
statistics of q_sample, the parameterisations, and the samplers on a toy whose exact denoiser
is known (a 1D mixture of two Gaussians), so sampler tests need no training."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minigen
from minigen import diffusion
from minigen.diffusion import NoiseSchedule


# ---- schedules --------------------------------------------------------------------------
def test_linear_schedule_runs_from_1e_4_to_0_02_over_1000_steps_in_float64():
    schedule = NoiseSchedule("linear")
    assert schedule.num_timesteps == 1000 and schedule.betas.dtype == np.float64
    assert schedule.betas[0] == pytest.approx(1e-4) and schedule.betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(schedule.betas), (0.02 - 1e-4) / 999, rtol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_is_the_running_product_of_one_minus_beta(kind):
    schedule = NoiseSchedule(kind)
    expected = [1.0]
    for beta in schedule.betas:
        expected.append(expected[-1] * (1 - beta))
    np.testing.assert_allclose(schedule.alpha_bar, expected[1:], rtol=1e-12)
    np.testing.assert_allclose(schedule.alpha_bar_prev, expected[:-1], rtol=1e-12)
    assert np.all(np.diff(schedule.alpha_bar) < 0), "alpha_bar must fall at every step"


def test_cosine_schedule_follows_squared_cosine_until_the_beta_clip():
    schedule, s, T = NoiseSchedule("cosine"), 0.008, 1000
    f = np.cos((np.arange(1, T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    unclipped = schedule.betas < 0.999
    assert unclipped[:-1].all() and schedule.betas.max() <= 0.999
    np.testing.assert_allclose(schedule.alpha_bar[:-1], (f / f0)[:-1], rtol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_matches_the_product_of_the_two_gaussians(kind):
    """q(x_{t-1} | x_t, x_0) ~ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(ab_{t-1}) x_0,
    1 - ab_{t-1}): its precision and mean weights, derived independently of DDPM Eq. 7."""
    schedule = NoiseSchedule(kind)
    beta, alpha, ab_prev = schedule.betas[1:], schedule.alphas[1:], schedule.alpha_bar_prev[1:]
    precision = alpha / beta + 1 / (1 - ab_prev)
    np.testing.assert_allclose(schedule.posterior_variance[1:], 1 / precision, rtol=1e-9)
    np.testing.assert_allclose(schedule.posterior_mean_coef_xt[1:],
                               np.sqrt(alpha) / beta / precision, rtol=1e-9)
    np.testing.assert_allclose(schedule.posterior_mean_coef_x0[1:],
                               np.sqrt(ab_prev) / (1 - ab_prev) / precision, rtol=1e-9)
    # at the first step x_0 is known exactly
    assert schedule.posterior_variance[0] == 0
    assert schedule.posterior_mean_coef_x0[0] == pytest.approx(1, rel=1e-12)
    assert schedule.posterior_mean_coef_xt[0] == 0


def test_clipped_log_posterior_variance_replaces_the_zero_first_entry():
    schedule = NoiseSchedule("linear")
    log_var = schedule.posterior_log_variance_clipped
    assert log_var[0] == log_var[1] == pytest.approx(math.log(schedule.posterior_variance[1]))
    np.testing.assert_allclose(log_var[1:], np.log(schedule.posterior_variance[1:]), rtol=1e-12)


def test_snr_falls_from_large_to_almost_zero():
    for kind in ("linear", "cosine"):
        snr = NoiseSchedule(kind).snr()
        assert snr[0] > 1e3 and snr[-1] < 1e-4 and np.all(np.diff(snr) < 0)


def test_unknown_schedule_is_named_in_the_error():
    with pytest.raises(ValueError, match="'quadratic'.*linear, cosine"):
        NoiseSchedule("quadratic")


# ---- forward process -----------------------------------------------------------------------
@pytest.mark.parametrize("kind,step", [("linear", 0), ("linear", 300), ("cosine", 600), ("cosine", 999)])
def test_q_sample_has_mean_sqrt_alpha_bar_x0_and_variance_one_minus_alpha_bar(kind, step):
    minigen.manual_seed(0)
    schedule, count = NoiseSchedule(kind), 200_000
    x0 = minigen.full((count, 1), 0.7, dtype=np.float64)
    t = minigen.full((count,), step, dtype=np.int64)
    x_t = diffusion.q_sample(schedule, x0, t).numpy()
    alpha_bar = schedule.alpha_bar[step]
    assert x_t.mean() == pytest.approx(math.sqrt(alpha_bar) * 0.7, abs=5 * math.sqrt(1 / count))
    assert x_t.var() == pytest.approx(1 - alpha_bar, rel=0.02, abs=1e-6)


def test_q_sample_rejects_timesteps_outside_the_schedule():
    schedule = NoiseSchedule("linear", num_timesteps=10)
    with pytest.raises(ValueError, match="0..9"):
        diffusion.q_sample(schedule, minigen.zeros(2, 3), minigen.tensor([3, 10]))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_each_parameterisation_recovers_x0_and_eps_from_its_target(prediction):
    minigen.manual_seed(1)
    schedule = NoiseSchedule("cosine")
    x0, noise = minigen.randn(5, 3, dtype=np.float64), minigen.randn(5, 3, dtype=np.float64)
    t = minigen.tensor([0, 10, 500, 900, 999])
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    target = diffusion.prediction_target(schedule, prediction, x0, noise, t)
    x0_hat, eps_hat = diffusion.x0_and_eps(schedule, prediction, target, x_t, t)
    np.testing.assert_allclose(x0_hat.numpy(), x0.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(eps_hat.numpy(), noise.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_an_oracle_and_positive_otherwise(prediction):
    """An oracle that reads the drawn noise back gives loss 0, so the loss really compares the
    output with the target of the chosen parameterisation."""
    schedule = NoiseSchedule("linear", num_timesteps=50)
    x0 = minigen.tensor(np.linspace(-1, 1, 24).reshape(4, 6), dtype=np.float64)

    def oracle(x_t, t):
        eps = diffusion.eps_from_x0(schedule, x0, x_t, t)
        return diffusion.prediction_target(schedule, prediction, x0, eps, t)

    assert diffusion.diffusion_loss(oracle, schedule, x0, prediction).item() < 1e-12
    assert diffusion.diffusion_loss(lambda x_t, t: x_t * 0, schedule, x0, prediction).item() > 1e-3


# ---- samplers on a toy with an exact denoiser ---------------------------------------------------
MODE_MEANS, MODE_STD = np.array([-0.5, 0.5]), 0.1


def exact_mixture_eps(schedule: NoiseSchedule):
    """eps*(x_t, t) = -sqrt(1 - ab) grad log p_t(x_t) for data = 1/2 N(-0.5, 0.1^2) +
    1/2 N(0.5, 0.1^2); p_t is the mixture of N(sqrt(ab) mu_k, ab s^2 + 1 - ab)."""
    def denoiser(x_t, t):
        x = x_t.numpy()
        alpha_bar = schedule.alpha_bar[t.numpy()].reshape(-1, 1)
        means = np.sqrt(alpha_bar) * MODE_MEANS                      # (N, 2)
        variances = alpha_bar * MODE_STD ** 2 + 1 - alpha_bar        # (N, 1)
        log_density = -(x - means) ** 2 / (2 * variances)
        weights = np.exp(log_density - log_density.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        score = (weights * -(x - means) / variances).sum(axis=1, keepdims=True)
        return minigen.tensor(-np.sqrt(1 - alpha_bar) * score, dtype=x.dtype)
    return denoiser


def _sample(sampler, seed, schedule, count=2000, **options):
    minigen.manual_seed(seed)
    x_T = minigen.randn(count, 1, dtype=np.float64)
    return sampler(exact_mixture_eps(schedule), schedule, (count, 1), x_T=x_T, **options).numpy()


def _assert_is_the_mixture(samples):
    left = samples[samples < 0]
    assert abs(len(left) / len(samples) - 0.5) < 0.05
    assert left.mean() == pytest.approx(-0.5, abs=0.02) and left.std() == pytest.approx(0.1, rel=0.15)


@pytest.mark.parametrize("sampler,options", [
    (diffusion.ddpm_sample, dict(variance="beta")),
    (diffusion.ddpm_sample, dict(variance="beta_tilde")),
    (diffusion.ddim_sample, dict(steps=50, eta=0.0)),
    (diffusion.ddim_sample, dict(steps=100, eta=0.5)),
])
def test_sampler_with_the_exact_denoiser_reproduces_the_data_distribution(sampler, options):
    schedule = NoiseSchedule("linear")
    _assert_is_the_mixture(_sample(sampler, 0, schedule, clip_x0=False, **options))


def test_ddim_with_eta_1_over_all_steps_is_ancestral_sampling_with_beta_tilde():
    """With the same noise, DDIM(eta=1, S=T) and DDPM(sigma^2 = beta_tilde) take the same
    steps, so they agree sample by sample, hence in distribution."""
    schedule = NoiseSchedule("cosine", num_timesteps=200)
    ancestral = _sample(diffusion.ddpm_sample, 3, schedule, variance="beta_tilde")
    ddim = _sample(diffusion.ddim_sample, 3, schedule, steps=200, eta=1.0)
    np.testing.assert_allclose(ddim, ancestral, rtol=1e-7, atol=1e-7)
    _assert_is_the_mixture(ddim)


@pytest.mark.parametrize("sampler,options", [(diffusion.ddpm_sample, {}),
                                             (diffusion.ddim_sample, dict(steps=10, eta=0.7))])
def test_sampling_is_deterministic_under_a_seed(sampler, options):
    schedule = NoiseSchedule("linear", num_timesteps=100)
    first, second = (_sample(sampler, 7, schedule, count=50, **options) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, _sample(sampler, 8, schedule, count=50, **options))


@pytest.mark.parametrize("sampler,options", [(diffusion.ddpm_sample, {}),
                                             (diffusion.ddim_sample, dict(steps=20))])
def test_clipping_keeps_samples_in_minus_one_to_one(sampler, options):
    schedule = NoiseSchedule("linear", num_timesteps=100)

    def wild(x_t, t):  # an untrained network's large outputs
        return x_t * 0 - 5.0

    minigen.manual_seed(0)
    samples = sampler(wild, schedule, (64, 2), clip_x0=True, **options).numpy()
    assert np.abs(samples).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("sampler,options,states", [(diffusion.ddpm_sample, {}, 101),
                                                    (diffusion.ddim_sample, dict(steps=25), 26)])
def test_trajectory_runs_from_the_starting_noise_to_the_returned_sample(sampler, options, states):
    schedule = NoiseSchedule("linear", num_timesteps=100)
    minigen.manual_seed(0)
    x_T = minigen.randn(8, 1, dtype=np.float64)
    samples, trajectory = sampler(exact_mixture_eps(schedule), schedule, (8, 1), x_T=x_T,
                                  return_trajectory=True, **options)
    assert len(trajectory) == states and trajectory[0][0] == 100 and trajectory[-1][0] == 0
    np.testing.assert_array_equal(trajectory[0][1], x_T.numpy())
    np.testing.assert_array_equal(trajectory[-1][1], samples.numpy())
    minigen.manual_seed(0)
    _, short = sampler(exact_mixture_eps(schedule), schedule, (8, 1), return_trajectory=True,
                       trajectory_length=5, **options)
    assert len(short) == 5


def test_ddim_timesteps_are_evenly_spaced_and_all_of_them_for_s_equal_t():
    np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 4), [0, 250, 500, 750])
    np.testing.assert_array_equal(diffusion.ddim_timesteps(10, 10), np.arange(10))
    with pytest.raises(ValueError, match="1..10"):
        diffusion.ddim_timesteps(10, 11)
