"""Denoising diffusion: noise schedules, the forward process, the training loss, samplers.

Notation follows Ho et al. (2020, "DDPM"): beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod
alpha_s. `NoiseSchedule` precomputes every coefficient in float64 (NumPy); `q_sample` is Eq. 4,
`diffusion_loss` is Algorithm 1 (with x0- and v-prediction as options), `ddpm_sample` is
Algorithm 2 and `ddim_sample` is Eq. 12 of Song et al. (2021, "DDIM"). A denoiser is any
callable `denoiser(x_t, t) -> output` on Tensors (x_t (N, ...), t int64 (N,)); models with a
class label are wrapped by the caller, so guidance can later wrap the same callable.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

import minigen
from minigen import backend
from minigen.tensor import Tensor, no_grad

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
SPACINGS = ("leading", "trailing", "linspace")
Denoiser = Callable[[Tensor, Tensor], Tensor]


class NoiseSchedule:
    """The T betas of a schedule and every coefficient derived from them, in float64.

    kind "linear": beta from beta_start to beta_end (DDPM: 1e-4 to 0.02, T = 1000).
    kind "cosine": alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2)
    (Nichol and Dhariwal, 2021, Eq. 17), betas clipped at 0.999 so the last step stays finite.
    Index i = 0 .. T-1 is the paper's t = i + 1.
    """

    def __init__(self, kind: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, cosine_offset: float = 0.008):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
        if num_timesteps < 2:
            raise ValueError(f"a noise schedule needs at least 2 timesteps, got {num_timesteps}")
        self.kind, self.num_timesteps = kind, int(num_timesteps)
        T = self.num_timesteps
        if kind == "linear":
            betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
        else:
            steps = np.arange(T + 1, dtype=np.float64) / T
            f = np.cos((steps + cosine_offset) / (1 + cosine_offset) * math.pi / 2) ** 2
            betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = np.cumprod(self.alphas)
        self.alpha_bar_prev = np.append(1.0, self.alpha_bar[:-1])
        self.sqrt_alpha_bar = np.sqrt(self.alpha_bar)
        self.sqrt_one_minus_alpha_bar = np.sqrt(1.0 - self.alpha_bar)
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde) (DDPM Eq. 6-7)
        self.posterior_variance = betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        # beta_tilde_1 = 0: its log is clipped to that of beta_tilde_2 (as in the DDPM code)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef_x0 = betas * np.sqrt(self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        self.posterior_mean_coef_xt = (1.0 - self.alpha_bar_prev) * np.sqrt(self.alphas) \
            / (1.0 - self.alpha_bar)

    def snr(self) -> np.ndarray:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep, shape (T,)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    def config(self) -> dict:
        return {"kind": self.kind, "num_timesteps": self.num_timesteps}

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.kind!r}, T={self.num_timesteps})"


def _per_sample(coefficients: np.ndarray, t: Tensor, like: Tensor) -> Tensor:
    """coefficients[t] as a constant of like's dtype and device, shaped (N, 1, 1, ...)."""
    values = coefficients[backend.to_numpy(t.data).astype(np.int64)]
    values = values.reshape((-1,) + (1,) * (like.ndim - 1)).astype(like.dtype)
    return Tensor(backend.to_device(values, like.device))


def _check_timesteps(schedule: NoiseSchedule, t: Tensor) -> None:
    t_values = backend.to_numpy(t.data)
    if t_values.size and (t_values.min() < 0 or t_values.max() >= schedule.num_timesteps):
        raise ValueError(f"timesteps must lie in 0..{schedule.num_timesteps - 1}, got values "
                         f"from {t_values.min()} to {t_values.max()}")


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (DDPM Eq. 4).

    x0 (N, ...), t int (N,), noise like x0 (drawn from the default generator if None).
    """
    _check_timesteps(schedule, t)
    if noise is None:
        noise = minigen.randn(x0.shape, dtype=x0.dtype, device=x0.device)
    return _per_sample(schedule.sqrt_alpha_bar, t, x0) * x0 \
        + _per_sample(schedule.sqrt_one_minus_alpha_bar, t, x0) * noise


def prediction_target(schedule: NoiseSchedule, prediction: str, x0: Tensor, noise: Tensor,
                      t: Tensor) -> Tensor:
    """What the network is trained to output: eps, x0, or v = sqrt(ab) eps - sqrt(1-ab) x0
    (Salimans and Ho, 2022)."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return _per_sample(schedule.sqrt_alpha_bar, t, x0) * noise \
            - _per_sample(schedule.sqrt_one_minus_alpha_bar, t, x0) * x0
    raise ValueError(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")


def x0_and_eps(schedule: NoiseSchedule, prediction: str, output: Tensor, x_t: Tensor,
               t: Tensor) -> tuple[Tensor, Tensor]:
    """Turn a network output (of any parameterisation) into the pair (x0_hat, eps_hat)."""
    sqrt_ab = _per_sample(schedule.sqrt_alpha_bar, t, x_t)
    sqrt_one_minus_ab = _per_sample(schedule.sqrt_one_minus_alpha_bar, t, x_t)
    if prediction == "eps":
        return (x_t - sqrt_one_minus_ab * output) / sqrt_ab, output
    if prediction == "x0":
        return output, (x_t - sqrt_ab * output) / sqrt_one_minus_ab
    if prediction == "v":
        x0 = sqrt_ab * x_t - sqrt_one_minus_ab * output
        return x0, sqrt_one_minus_ab * x_t + sqrt_ab * output
    raise ValueError(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")


def eps_from_x0(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The noise that takes x0 to x_t: (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    return (x_t - _per_sample(schedule.sqrt_alpha_bar, t, x_t) * x0) \
        / _per_sample(schedule.sqrt_one_minus_alpha_bar, t, x_t)


def diffusion_loss(denoiser: Denoiser, schedule: NoiseSchedule, x0: Tensor,
                   prediction: str = "eps") -> Tensor:
    """The simple DDPM loss (Algorithm 1): t ~ U{0..T-1}, eps ~ N(0, I),
    mean of (target - denoiser(x_t, t))^2 over every element; target as `prediction`."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")
    t = minigen.randint(0, schedule.num_timesteps, (x0.shape[0],), device=x0.device)
    noise = minigen.randn(x0.shape, dtype=x0.dtype, device=x0.device)
    x_t = q_sample(schedule, x0, t, noise)
    target = prediction_target(schedule, prediction, x0, noise, t)
    return minigen.functional.mse_loss(denoiser(x_t, t), target)


def _timesteps(value: int, n: int, device: str) -> Tensor:
    return Tensor(backend.xp_for(device).full((n,), value, dtype=np.int64))


def _snapshot_steps(total: int, length: int | None) -> set:
    """Which of the states 0..total (0 = the starting noise) a trajectory keeps."""
    if length is None or length >= total + 1:
        return set(range(total + 1))
    return set(np.linspace(0, total, max(length, 2)).round().astype(int).tolist())


def ddpm_sample(denoiser: Denoiser, schedule: NoiseSchedule, shape: tuple, device: str = "cpu",
                prediction: str = "eps", variance: str = "beta", clip_x0: bool = True,
                return_trajectory: bool = False, trajectory_length: int | None = None,
                x_T: Tensor | None = None):
    """Ancestral sampling, DDPM Algorithm 2: T steps from x_T ~ N(0, I) to x_0.

    Each step: x0_hat from the network (clipped to [-1, 1] if clip_x0), then
    x_{t-1} = posterior mean(x0_hat, x_t) + sigma_t z, with sigma_t^2 = beta_t ("beta") or
    beta_tilde_t ("beta_tilde"); no noise on the last step. shape = (N, ...).
    Returns x_0 (N, ...) as a Tensor, or (x_0, trajectory) where the trajectory is a list of
    (t, array) pairs from the starting noise to x_0 (`trajectory_length` evenly spaced ones).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"unknown variance {variance!r}; use 'beta' or 'beta_tilde'")
    log_variance = np.log(schedule.betas) if variance == "beta" \
        else schedule.posterior_log_variance_clipped
    T = schedule.num_timesteps
    x = minigen.randn(tuple(shape), device=device) if x_T is None else x_T
    keep = _snapshot_steps(T, trajectory_length) if return_trajectory else set()
    trajectory = [(T, backend.to_numpy(x.data).copy())] if 0 in keep else []
    with no_grad():
        for done, i in enumerate(reversed(range(T)), start=1):
            t = _timesteps(i, x.shape[0], x.device)
            x0_hat, _ = x0_and_eps(schedule, prediction, denoiser(x, t), x, t)
            if clip_x0:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            mean = x0_hat * float(schedule.posterior_mean_coef_x0[i]) \
                + x * float(schedule.posterior_mean_coef_xt[i])
            if i > 0:
                noise = minigen.randn(x.shape, dtype=x.dtype, device=x.device)
                x = mean + noise * float(math.exp(0.5 * log_variance[i]))
            else:
                x = mean
            if done in keep:
                trajectory.append((i, backend.to_numpy(x.data).copy()))
    return (x, trajectory) if return_trajectory else x


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The `steps` timesteps DDIM visits, evenly spaced from 0 (ascending, int64)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must lie in 1..{num_timesteps}, got {steps}")
    return (np.arange(steps, dtype=np.int64) * num_timesteps) // steps


def sampling_timesteps(num_timesteps: int, steps: int, spacing: str = "leading") -> np.ndarray:
    """The `steps` timestep indices a few-step sampler visits, in the order visited (descending,
    int64), laid over 0..T-1 as Lin et al. (2024, Table 2) and diffusers name the choices:

    leading:  0, T/S, 2T/S, ... (what ddim_timesteps gives): starts at T - T/S, ends at t = 0.
    trailing: T - 1, T - 1 - T/S, ...: starts at the last trained step, so the first step sees
              the pure-noise level the network was trained on, and stops above t = 0.
    linspace: S points evenly from 0 to T - 1, both ends included, rounded.

    diffusers computes leading as k * (T // S) where this uses (k * T) // S: the same whenever
    S divides T, and spread over the whole range when not. diffusers' Euler and Heun keep the
    linspace points unrounded (fractional timesteps); the denoisers here take integers, so they
    are rounded as diffusers' DDIM rounds them. diffusers' DPM-Solver lays leading and linspace
    over S + 1 points and drops the smallest; here every sampler shares one grid per name.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"--sampling-steps must lie in 1..{num_timesteps}, got {steps}")
    if spacing == "leading":
        return ddim_timesteps(num_timesteps, steps)[::-1].copy()
    if spacing == "trailing":
        return np.round(num_timesteps - np.arange(steps) * (num_timesteps / steps)).astype(np.int64) - 1
    return np.linspace(0, num_timesteps - 1, steps).round()[::-1].astype(np.int64)


def ddim_step(denoiser: Denoiser, schedule: NoiseSchedule, x: Tensor, i: int, i_prev: int,
              eta: float = 0.0, prediction: str = "eps", clip_x0: bool = True) -> Tensor:
    """One DDIM update (Song et al. 2021, Eq. 12) from x at timestep index i to index i_prev < i
    (i_prev = -1: the clean image, alpha_bar_prev = 1). x (N, ...) -> (N, ...).

    The building block of ddim_sample, and of samplers that start part-way (image-to-image) or
    interleave other moves (inpainting); with eta = 1 and i_prev = i - 1 it is the ancestral
    step with sigma^2 = beta_tilde.
    """
    alpha_bar = schedule.alpha_bar[i]
    alpha_bar_prev = schedule.alpha_bar[i_prev] if i_prev >= 0 else 1.0
    t = _timesteps(i, x.shape[0], x.device)
    x0_hat, eps_hat = x0_and_eps(schedule, prediction, denoiser(x, t), x, t)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = eps_from_x0(schedule, x0_hat, x, t)
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) \
        * math.sqrt(1 - alpha_bar / alpha_bar_prev)
    direction = math.sqrt(max(1 - alpha_bar_prev - sigma ** 2, 0.0))
    x = x0_hat * float(math.sqrt(alpha_bar_prev)) + eps_hat * float(direction)
    if sigma > 0:
        x = x + minigen.randn(x.shape, dtype=x.dtype, device=x.device) * float(sigma)
    return x


def ddim_sample(denoiser: Denoiser, schedule: NoiseSchedule, shape: tuple, steps: int = 50,
                eta: float = 0.0, device: str = "cpu", prediction: str = "eps",
                clip_x0: bool = True, return_trajectory: bool = False,
                trajectory_length: int | None = None, x_T: Tensor | None = None,
                timestep_spacing: str = "leading"):
    """DDIM sampling (Song et al. 2021, Eq. 12) over `steps` timesteps, tau_S > ... > tau_1:

    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev).
    eta = 0 is deterministic; eta = 1 over all T steps is ancestral sampling with beta_tilde.
    When x0_hat is clipped, eps_hat is recomputed from it so both stay consistent. The
    timesteps are sampling_timesteps(T, steps, timestep_spacing); each step lands on the next
    of them (diffusers' DDIMScheduler steps to t - T // steps instead, the same point for
    leading and trailing when steps divides T, off the grid for linspace). Returns as ddpm_sample.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must lie in [0, 1], got {eta}")
    sequence = sampling_timesteps(schedule.num_timesteps, steps, timestep_spacing)[::-1]
    x = minigen.randn(tuple(shape), device=device) if x_T is None else x_T
    keep = _snapshot_steps(len(sequence), trajectory_length) if return_trajectory else set()
    trajectory = [(schedule.num_timesteps, backend.to_numpy(x.data).copy())] if 0 in keep else []
    with no_grad():
        for done, position in enumerate(reversed(range(len(sequence))), start=1):
            i, i_prev = int(sequence[position]), int(sequence[position - 1]) if position else -1
            x = ddim_step(denoiser, schedule, x, i, i_prev, eta, prediction, clip_x0)
            if done in keep:
                trajectory.append((i, backend.to_numpy(x.data).copy()))
    return (x, trajectory) if return_trajectory else x
