"""Specification of the few-step samplers (minigen.samplers, and DDIM's timestep spacings): each
one step by step against diffusers' scheduler of the same name, both fed the same network (a
fixed smooth function of x_t and t standing in for a trained eps-predictor), in float64.

diffusers keeps its schedule in float32 (its betas are a float32 tensor); the tests hand it
minigen's float64 alpha_bar and sigmas instead, so both sides use the same coefficients. Its
Euler and DPM-Solver steps cast the sample to float32 and back ("upcast"), so those two agree
to float32 rounding; Heun and DDIM compute in float64 and agree to float64 rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import minigen
from minigen import diffusion, samplers
from minigen.diffusion import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

T = 1000
SHAPE = (4, 3)


def network(x_t: np.ndarray, t: float) -> np.ndarray:
    """A stand-in eps-predictor: smooth in x_t and t, different at every timestep."""
    return np.tanh(0.8 * x_t + 0.5 * np.sin(t / 97.0)) + 0.1 * x_t


def minigen_denoiser(x_t, t):
    t_value = float(np.asarray(t.data)[0])
    return minigen.Tensor(network(np.asarray(x_t.data), t_value))


def start_noise() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(SHAPE)


def minigen_states(sample_fn, schedule, steps, spacing) -> list[np.ndarray]:
    """Every state of a minigen sampler in x_t, from the start to x_0."""
    _, path = sample_fn(minigen_denoiser, schedule, SHAPE, steps=steps, clip_x0=False,
                        return_trajectory=True, x_T=minigen.Tensor(start_noise()),
                        timestep_spacing=spacing)
    return [state for _, state in path]


def as_float64(scheduler, sigmas=None, alpha_bar=None):
    if sigmas is not None:
        scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float64)
    if alpha_bar is not None:
        scheduler.alphas_cumprod = torch.tensor(alpha_bar, dtype=torch.float64)
    return scheduler


def karras_sigmas(schedule, sequence) -> np.ndarray:
    alpha_bar = schedule.alpha_bar[sequence]
    return np.append(np.sqrt((1 - alpha_bar) / alpha_bar), 0.0)


SCHEDULES = [NoiseSchedule("linear", T), NoiseSchedule("cosine", T)]
SPACINGS = ["leading", "trailing", "linspace"]


# ---- the timestep grids ----------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_timestep_grids_are_diffusers_ddim_grids(spacing, steps):
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    np.testing.assert_array_equal(diffusion.sampling_timesteps(T, steps, spacing),
                                  scheduler.timesteps.numpy())


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler"])
def test_karras_samplers_visit_diffusers_timesteps(name, spacing):
    scheduler = getattr(diffusers, name)(num_train_timesteps=T, timestep_spacing=spacing)
    scheduler.set_timesteps(20)
    visited = np.unique(scheduler.timesteps.numpy())[::-1]
    np.testing.assert_array_equal(diffusion.sampling_timesteps(T, 20, spacing), visited)


def test_linspace_is_diffusers_euler_linspace_where_that_is_whole():
    """diffusers' Euler keeps linspace points fractional; with 10 steps over 0..999 they are
    whole (multiples of 111), and then the grids are the same."""
    scheduler = diffusers.EulerDiscreteScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    np.testing.assert_array_equal(diffusion.sampling_timesteps(T, 10, "linspace"),
                                  scheduler.timesteps.numpy())


def test_trailing_is_diffusers_dpm_solver_trailing():
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T,
                                                      timestep_spacing="trailing")
    scheduler.set_timesteps(20)
    np.testing.assert_array_equal(diffusion.sampling_timesteps(T, 20, "trailing"),
                                  scheduler.timesteps.numpy())


def test_trailing_visits_the_last_trained_timestep_and_leading_reaches_zero():
    assert diffusion.sampling_timesteps(T, 10, "trailing")[0] == T - 1
    assert diffusion.sampling_timesteps(T, 10, "leading")[-1] == 0
    linspace = diffusion.sampling_timesteps(T, 7, "linspace")
    assert linspace[0] == T - 1 and linspace[-1] == 0


def test_an_unknown_spacing_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown timestep spacing 'middle'; use one of leading"):
        diffusion.sampling_timesteps(T, 10, "middle")


# ---- the samplers, step by step ------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers_ddim_step_by_step(schedule, spacing):
    steps = 20
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=schedule.betas,
                                        timestep_spacing=spacing, clip_sample=False)
    scheduler.set_timesteps(steps)
    as_float64(scheduler, alpha_bar=schedule.alpha_bar)
    sample = torch.tensor(start_noise())
    theirs = [sample.numpy().copy()]
    for t in scheduler.timesteps:
        output = torch.tensor(network(sample.numpy(), float(t)))
        sample = scheduler.step(output, t, sample, eta=0.0).prev_sample
        theirs.append(sample.numpy().copy())
    ours = minigen_states(diffusion.ddim_sample, schedule, steps, spacing)
    np.testing.assert_allclose(np.stack(ours), np.stack(theirs), rtol=1e-10, atol=1e-12)


def _euler_reference(schedule, sequence, heun: bool) -> list[np.ndarray]:
    """diffusers' Euler / Heun scheduler on minigen's timesteps, states turned back into x_t."""
    name = "HeunDiscreteScheduler" if heun else "EulerDiscreteScheduler"
    scheduler = getattr(diffusers, name)(num_train_timesteps=T, trained_betas=schedule.betas)
    scheduler.set_timesteps(timesteps=[int(t) for t in sequence])
    sigmas = karras_sigmas(schedule, sequence)
    if heun:  # diffusers' Heun walks each interior sigma twice
        sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
    as_float64(scheduler, sigmas=sigmas)
    sample = torch.tensor(start_noise() / np.sqrt(schedule.alpha_bar[sequence[0]]))
    sigma_after = list(karras_sigmas(schedule, sequence)[1:])
    states = [start_noise()]
    for call, t in enumerate(scheduler.timesteps, start=1):
        model_input = scheduler.scale_model_input(sample, t)
        output = torch.tensor(network(model_input.numpy(), float(t)))
        sample = scheduler.step(output, t, sample).prev_sample
        # a whole step is done: Heun's correction, or the last (Euler) step to sigma = 0
        if not heun or scheduler.state_in_first_order or call == len(scheduler.timesteps):
            sigma = sigma_after.pop(0)
            states.append(sample.numpy() / np.sqrt(1 + sigma ** 2))
    return states


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [10, 25])
def test_euler_matches_diffusers_euler_step_by_step(schedule, spacing, steps):
    sequence = diffusion.sampling_timesteps(T, steps, spacing)
    ours = minigen_states(samplers.euler_sample, schedule, steps, spacing)
    theirs = _euler_reference(schedule, sequence, heun=False)
    assert len(ours) == len(theirs) == steps + 1
    np.testing.assert_allclose(np.stack(ours), np.stack(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [10, 25])
def test_heun_matches_diffusers_heun_step_by_step(schedule, spacing, steps):
    sequence = diffusion.sampling_timesteps(T, steps, spacing)
    ours = minigen_states(samplers.heun_sample, schedule, steps, spacing)
    theirs = _euler_reference(schedule, sequence, heun=True)
    assert len(ours) == len(theirs) == steps + 1
    np.testing.assert_allclose(np.stack(ours), np.stack(theirs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "cosine"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [10, 25])
def test_dpm_solver_matches_diffusers_dpm_solver_pp_2m_step_by_step(schedule, spacing, steps):
    sequence = diffusion.sampling_timesteps(T, steps, spacing)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=schedule.betas, algorithm_type="dpmsolver++",
        solver_order=2)
    scheduler.set_timesteps(timesteps=[int(t) for t in sequence])
    as_float64(scheduler, sigmas=karras_sigmas(schedule, sequence))
    sample = torch.tensor(start_noise())
    theirs = [sample.numpy().copy()]
    for t in scheduler.timesteps:
        output = torch.tensor(network(sample.numpy(), float(t)))
        sample = scheduler.step(output, t, sample).prev_sample
        theirs.append(sample.numpy().copy())
    ours = minigen_states(samplers.dpm_solver_sample, schedule, steps, spacing)
    np.testing.assert_allclose(np.stack(ours), np.stack(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_euler_is_ddim_with_eta_zero(spacing):
    """Karras et al. (2022), Section 3: DDIM is Euler's method in x = x_t / sqrt(alpha_bar); so
    this also checks DDIM on the linspace grid, where diffusers' DDIM leaves the grid."""
    schedule = NoiseSchedule("cosine", T)
    ddim = minigen_states(diffusion.ddim_sample, schedule, 15, spacing)
    euler = minigen_states(samplers.euler_sample, schedule, 15, spacing)
    np.testing.assert_allclose(np.stack(ddim), np.stack(euler), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sample_fn", [samplers.euler_sample, samplers.heun_sample,
                                       samplers.dpm_solver_sample])
def test_clipped_samplers_end_inside_the_data_range(sample_fn):
    schedule = NoiseSchedule("cosine", T)
    result = sample_fn(lambda x, t: x * 0.0 + 3.0, schedule, (5, 1, 4, 4), steps=6)
    assert result.shape == (5, 1, 4, 4)
    assert float(result.data.max()) <= 1.0 and float(result.data.min()) >= -1.0
