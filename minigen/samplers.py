"""Few-step samplers of a trained diffusion model: Euler and Heun (Karras et al. 2022) on the
model's discrete sigmas, and DPM-Solver++(2M) (Lu et al. 2022), multistep in data prediction.

They share the denoisers, schedules and timestep grids of minigen.diffusion (whose
`sampling_timesteps` names the spacings) and return what ddpm_sample and ddim_sample return.
Each is checked step by step against diffusers' EulerDiscreteScheduler, HeunDiscreteScheduler
and DPMSolverMultistepScheduler in tests/test_samplers.py, given the same network outputs.
"""
from __future__ import annotations

import math

import numpy as np

import minigen
from minigen import backend
from minigen.diffusion import Denoiser, NoiseSchedule, _snapshot_steps, _timesteps, \
    sampling_timesteps, x0_and_eps
from minigen.tensor import Tensor, no_grad


def _denoised(denoiser: Denoiser, schedule: NoiseSchedule, prediction: str, clip_x0: bool,
              x_t: Tensor, i: int) -> Tensor:
    """The network's estimate of x_0 from x_t at timestep index i (clipped to [-1, 1])."""
    t = _timesteps(i, x_t.shape[0], x_t.device)
    x0_hat, _ = x0_and_eps(schedule, prediction, denoiser(x_t, t), x_t, t)
    return x0_hat.clamp(-1.0, 1.0) if clip_x0 else x0_hat


def _karras_sample(denoiser: Denoiser, schedule: NoiseSchedule, shape: tuple, steps: int,
                   second_order: bool, device: str, prediction: str, clip_x0: bool,
                   return_trajectory: bool, trajectory_length: int | None,
                   x_T: Tensor | None, timestep_spacing: str):
    """Euler (first order) or Heun (second order) on the probability-flow ODE
    dx/dsigma = (x - D(x; sigma)) / sigma in Karras et al.'s variables x = x_t / sqrt(ab_t),
    sigma_t = sqrt((1 - ab_t) / ab_t), over the sigmas of the visited timesteps and then 0
    (their Algorithm 1 with S_churn = 0). The network sees x_t = x / sqrt(1 + sigma^2).
    """
    sequence = sampling_timesteps(schedule.num_timesteps, steps, timestep_spacing)
    alpha_bar = schedule.alpha_bar[sequence]
    sigmas = np.append(np.sqrt((1 - alpha_bar) / alpha_bar), 0.0)
    x_vp = minigen.randn(tuple(shape), device=device) if x_T is None else x_T
    x = x_vp * float(1 / math.sqrt(alpha_bar[0]))   # x_T taken as x_t at the first timestep

    def slope_and_denoised(x_sigma: Tensor, k: int) -> tuple[Tensor, Tensor]:
        scale = float(1 / math.sqrt(1 + sigmas[k] ** 2))
        x0_hat = _denoised(denoiser, schedule, prediction, clip_x0, x_sigma * scale,
                           int(sequence[k]))
        return (x_sigma - x0_hat) / float(sigmas[k]), x0_hat

    keep = _snapshot_steps(len(sequence), trajectory_length) if return_trajectory else set()
    trajectory = [(schedule.num_timesteps, backend.to_numpy(x_vp.data).copy())] if 0 in keep else []
    with no_grad():
        for k in range(len(sequence)):
            d, x0_hat = slope_and_denoised(x, k)
            dt = float(sigmas[k + 1] - sigmas[k])
            if sigmas[k + 1] == 0:
                x = x0_hat               # Euler's step to sigma = 0, without its rounding
            elif second_order:           # Heun: Euler, then again with the mean slope
                x_euler = x + d * dt
                x = x + (d + slope_and_denoised(x_euler, k + 1)[0]) * (0.5 * dt)
            else:
                x = x + d * dt
            if k + 1 in keep:
                vp = x * float(1 / math.sqrt(1 + sigmas[k + 1] ** 2))
                trajectory.append((int(sequence[k]), backend.to_numpy(vp.data).copy()))
    return (x, trajectory) if return_trajectory else x


def euler_sample(denoiser: Denoiser, schedule: NoiseSchedule, shape: tuple, steps: int = 50,
                 device: str = "cpu", prediction: str = "eps", clip_x0: bool = True,
                 return_trajectory: bool = False, trajectory_length: int | None = None,
                 x_T: Tensor | None = None, timestep_spacing: str = "leading"):
    """Euler's method on the probability-flow ODE, one network evaluation per step:
    x_{k+1} = x_k + (sigma_{k+1} - sigma_k) (x_k - D(x_k)) / sigma_k.

    In x_t it is DDIM with eta = 0 (Karras et al. 2022, Section 3), so without clipping the two
    agree to rounding. diffusers' EulerDiscreteScheduler starts from noise of std sigma_max
    (trailing, linspace) where this starts from x_T ~ N(0, I) in x_t, std sqrt(1 + sigma^2)
    in x; the steps are the same. shape (N, ...); returns as ddpm_sample.
    """
    return _karras_sample(denoiser, schedule, shape, steps, False, device, prediction, clip_x0,
                          return_trajectory, trajectory_length, x_T, timestep_spacing)


def heun_sample(denoiser: Denoiser, schedule: NoiseSchedule, shape: tuple, steps: int = 50,
                device: str = "cpu", prediction: str = "eps", clip_x0: bool = True,
                return_trajectory: bool = False, trajectory_length: int | None = None,
                x_T: Tensor | None = None, timestep_spacing: str = "leading"):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, deterministic): an Euler
    step to sigma_{k+1}, then the step again with the mean of the slopes at both ends; the
    last step, to sigma = 0, is Euler alone. 2 * steps - 1 network evaluations.
    shape (N, ...); returns as ddpm_sample.
    """
    return _karras_sample(denoiser, schedule, shape, steps, True, device, prediction, clip_x0,
                          return_trajectory, trajectory_length, x_T, timestep_spacing)


def dpm_solver_sample(denoiser: Denoiser, schedule: NoiseSchedule, shape: tuple, steps: int = 20,
                      device: str = "cpu", prediction: str = "eps", clip_x0: bool = True,
                      return_trajectory: bool = False, trajectory_length: int | None = None,
                      x_T: Tensor | None = None, timestep_spacing: str = "leading"):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): the exact solution of the diffusion ODE's
    linear part with the data prediction x0_hat extrapolated linearly in lambda = log(alpha /
    sigma) from the last two steps (alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t)):

        h = lambda_next - lambda_k,  r = (lambda_k - lambda_{k-1}) / h
        x_next = (sigma_next / sigma_k) x_k - alpha_next (e^{-h} - 1) (D_k + (D_k - D_{k-1}) / (2 r))

    The first step (no history) and the last one, to sigma = 0 where x_next = D_k, are first
    order (DPM-Solver++(1), which is DDIM), as in diffusers with its defaults (midpoint,
    lower_order_final, final_sigmas_type "zero"). One network evaluation per step.
    shape (N, ...); returns as ddpm_sample.
    """
    sequence = sampling_timesteps(schedule.num_timesteps, steps, timestep_spacing)
    alphas = np.append(schedule.sqrt_alpha_bar[sequence], 1.0)
    sigmas = np.append(schedule.sqrt_one_minus_alpha_bar[sequence], 0.0)
    with np.errstate(divide="ignore"):
        lambdas = np.log(alphas) - np.log(sigmas)             # +inf at the final sigma = 0
    x = minigen.randn(tuple(shape), device=device) if x_T is None else x_T
    keep = _snapshot_steps(len(sequence), trajectory_length) if return_trajectory else set()
    trajectory = [(schedule.num_timesteps, backend.to_numpy(x.data).copy())] if 0 in keep else []
    previous = None
    with no_grad():
        for k in range(len(sequence)):
            x0_hat = _denoised(denoiser, schedule, prediction, clip_x0, x, int(sequence[k]))
            if sigmas[k + 1] == 0:
                x = x0_hat                                    # the limit h -> infinity
            else:
                h = lambdas[k + 1] - lambdas[k]
                data = x0_hat
                if previous is not None:
                    r = (lambdas[k] - lambdas[k - 1]) / h
                    data = x0_hat + (x0_hat - previous) * float(0.5 / r)
                x = x * float(sigmas[k + 1] / sigmas[k]) + data * float(-alphas[k + 1] * math.expm1(-h))
            previous = x0_hat
            if k + 1 in keep:
                trajectory.append((int(sequence[k]), backend.to_numpy(x.data).copy()))
    return (x, trajectory) if return_trajectory else x
