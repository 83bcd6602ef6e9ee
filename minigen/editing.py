"""Conditional generation and editing with a trained diffusion model: classifier-free guidance,
inpainting (RePaint) and image-to-image (SDEdit).

`guided_denoiser` turns a class-conditional network into the plain `denoiser(x_t, t)` that the
samplers of minigen.diffusion take, so guidance works with every sampler and editor. `inpaint`
and `img2img` are reverse processes assembled from `diffusion.ddim_step` and the forward
process; they never train anything and work with any denoiser. Masks and image files for the
`minigen inpaint` / `minigen img2img` commands are read here too.
"""
from __future__ import annotations

import math
import os

import numpy as np

import minigen
from minigen import backend
from minigen.diffusion import Denoiser, NoiseSchedule, ddim_step, ddim_timesteps, q_sample
from minigen.tensor import Tensor, no_grad

MASKS = ("top", "bottom", "left", "right", "center")


# ---- classifier-free guidance (Ho and Salimans, 2022) -----------------------------------------
def guidance_mix(uncond: Tensor, cond: Tensor, guidance: float) -> Tensor:
    """eps = eps_uncond + w (eps_cond - eps_uncond): w = 0 is the unconditional model, w = 1
    the conditional one, w > 1 pushes further toward the class. Any shape, both alike.

    Mixing the raw outputs is the same as mixing eps for x0- and v-prediction too: for fixed
    x_t and t, eps is an affine function of the output, and the weights sum to one.
    """
    return uncond + (cond - uncond) * float(guidance)


def class_labels(labels, count: int, num_classes: int | None, device: str = "cpu") -> Tensor:
    """Labels as an int64 Tensor (count,): an int is repeated, a sequence / array / Tensor of
    length count is taken as it is. Checks that the model is conditional and the classes exist."""
    if num_classes is None:
        raise ValueError("this model is unconditional (trained without --conditional), so it "
                         "cannot be asked for a class; drop --class, or train a conditional "
                         "model with `minigen train ddpm --conditional`")
    if isinstance(labels, Tensor):
        labels = labels.data
    values = np.asarray(backend.to_numpy(labels)).astype(np.int64).reshape(-1)
    if values.size == 1:
        values = np.full(count, values[0], dtype=np.int64)
    if values.shape != (count,):
        raise ValueError(f"got {values.size} class labels for {count} samples; pass one label, "
                         "or one per sample")
    if values.min() < 0 or values.max() >= num_classes:
        raise ValueError(f"class {values.min() if values.min() < 0 else values.max()} does not "
                         f"exist; this model knows classes 0..{num_classes - 1}")
    return Tensor(backend.to_device(values, device))


def guided_denoiser(model, labels=None, guidance: float = 1.0) -> Denoiser:
    """The denoiser(x_t, t) that classifier-free guidance samples with.

    model(x_t, t, labels) is a network trained with label dropout (labels=None: the null class).
    labels: None (unconditional sampling; guidance is then meaningless and ignored), one class,
    or one per sample. guidance w: 0 gives model(x_t, t), 1 gives model(x_t, t, labels), others
    guidance_mix of the two (two network calls per step).
    """
    if labels is None:
        return lambda x_t, t: model(x_t, t)
    num_classes = getattr(model, "num_classes", None)
    guidance = float(guidance)
    if guidance < 0:
        raise ValueError(f"guidance scale is {guidance}; pass 0 (unconditional), 1 "
                         "(conditional) or more (stronger)")

    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        label_tensor = class_labels(labels, x_t.shape[0], num_classes, x_t.device)
        if guidance == 1.0:
            return model(x_t, t, label_tensor)
        uncond = model(x_t, t)
        if guidance == 0.0:
            return uncond
        return guidance_mix(uncond, model(x_t, t, label_tensor), guidance)
    return denoiser


# ---- inpainting: RePaint (Lugmayr et al., 2022) ------------------------------------------------
def repaint_schedule(num_states: int, jump_length: int = 10, resamplings: int = 10) -> list[int]:
    """The states the RePaint sampler visits, from num_states (pure noise) down to 0 (clean).

    Each move is one state down (a reverse step) or up (a forward noising step). At every
    state j > 0 that is a multiple of jump_length, with j + jump_length <= num_states, the
    sampler goes back up jump_length states, resamplings - 1 times (RePaint's "jumps"), so
    the generated part gets more steps to agree with the known part.
    """
    if num_states < 1 or jump_length < 1 or resamplings < 1:
        raise ValueError(f"RePaint needs states, jump length and resamplings >= 1, got "
                         f"{num_states}, {jump_length}, {resamplings}")
    jumps_left = {j: resamplings - 1 for j in range(jump_length, num_states - jump_length + 1,
                                                    jump_length)}
    states, j = [num_states], num_states
    while j > 0:
        j -= 1
        states.append(j)
        if jumps_left.get(j, 0) > 0:
            jumps_left[j] -= 1
            for _ in range(jump_length):
                j += 1
                states.append(j)
    return states


def _as_tensor(array, like: Tensor) -> Tensor:
    if isinstance(array, Tensor):
        array = array.data
    values = np.asarray(backend.to_numpy(array), dtype=like.dtype)
    return Tensor(backend.to_device(values, like.device))


def inpaint(denoiser: Denoiser, schedule: NoiseSchedule, image: Tensor, known,
            steps: int | None = None, jump_length: int = 10, resamplings: int = 10,
            eta: float = 1.0, prediction: str = "eps", clip_x0: bool = True) -> Tensor:
    """Fill in the unknown pixels of `image` so that they agree with the known ones (RePaint).

    image (N, C, H, W) or (N, D) in [-1, 1]; known: 1 where a pixel is kept, 0 where it is
    generated, broadcastable to image. The reverse process runs over `steps` evenly spaced
    timesteps (None: all T) with DDIM steps of noise `eta` (1: ancestral). After every reverse
    step to timestep s, the known pixels are replaced by a fresh draw of q(x_s | image), so the
    network always sees them at its own noise level; the last step pastes the image itself.
    RePaint's jumps back up (repaint_schedule) let the generated part harmonise with them.
    Returns the completed images, known pixels equal to `image`.
    """
    T = schedule.num_timesteps
    sequence = ddim_timesteps(T, steps or T)          # state j >= 1 is noisy at sequence[j - 1]
    known = _as_tensor(known, image).clamp(0.0, 1.0)
    unknown = 1.0 - known

    def alpha_bar(state: int) -> float:
        return 1.0 if state == 0 else float(schedule.alpha_bar[sequence[state - 1]])

    def with_known(x: Tensor, state: int) -> Tensor:
        if state == 0:
            return known * image + unknown * x
        noise = minigen.randn(image.shape, dtype=image.dtype, device=image.device)
        noisy = image * math.sqrt(alpha_bar(state)) + noise * math.sqrt(1.0 - alpha_bar(state))
        return known * noisy + unknown * x

    states = repaint_schedule(len(sequence), jump_length, resamplings)
    x = with_known(minigen.randn(image.shape, dtype=image.dtype, device=image.device), states[0])
    with no_grad():
        for state, target in zip(states[:-1], states[1:]):
            if target < state:  # reverse step, then the known part at the new noise level
                i_prev = int(sequence[target - 1]) if target > 0 else -1
                x = ddim_step(denoiser, schedule, x, int(sequence[state - 1]), i_prev, eta,
                              prediction, clip_x0)
                x = with_known(x, target)
            else:  # forward: q(x_target | x_state) = N(sqrt(ab_t / ab_s) x, (1 - ab_t / ab_s) I)
                ratio = alpha_bar(target) / alpha_bar(state)
                noise = minigen.randn(x.shape, dtype=x.dtype, device=x.device)
                x = x * math.sqrt(ratio) + noise * math.sqrt(1.0 - ratio)
    return x


# ---- image-to-image: SDEdit (Meng et al., 2022) --------------------------------------------
def img2img_start(schedule: NoiseSchedule, image: Tensor, strength: float) -> tuple[Tensor, int]:
    """(x_t0, i0): the image noised to timestep t0 = strength * T, i.e. index i0 = t0 - 1
    (DDPM Eq. 4), where SDEdit starts its reverse process. strength 0 gives (image, -1):
    nothing to undo; strength 1 starts from (almost) pure noise at i0 = T - 1."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength is {strength}; pass a number from 0 (keep the image) to 1 "
                         "(start from pure noise)")
    i0 = int(round(strength * schedule.num_timesteps)) - 1
    if i0 < 0:
        return image, -1
    t = Tensor(backend.xp_for(image.device).full((image.shape[0],), i0, dtype=np.int64))
    return q_sample(schedule, image, t), i0


def img2img(denoiser: Denoiser, schedule: NoiseSchedule, image: Tensor, strength: float = 0.6,
            steps: int | None = None, eta: float = 1.0, prediction: str = "eps",
            clip_x0: bool = True) -> Tensor:
    """SDEdit: noise `image` (N, ...) in [-1, 1] to t0 = strength * T, then denoise back to 0.

    The noise drowns the details and keeps the coarse layout, so low strength stays close to the
    input and high strength follows the model (and its class, with a guided denoiser) more.
    steps: the number of steps the whole range 0..T would take (None: all T); the walk from t0
    takes about strength * steps of them. eta as in DDIM (1: ancestral). Returns (N, ...).
    """
    x, i0 = img2img_start(schedule, image, strength)
    if i0 < 0:
        return image
    below = ddim_timesteps(schedule.num_timesteps, steps or schedule.num_timesteps)
    sequence = [i0] + [int(i) for i in below[::-1] if i < i0] + [-1]
    with no_grad():
        for i, i_prev in zip(sequence[:-1], sequence[1:]):
            x = ddim_step(denoiser, schedule, x, i, i_prev, eta, prediction, clip_x0)
    return x


# ---- masks and image files ----------------------------------------------------------------
def region_mask(name: str, height: int, width: int) -> np.ndarray:
    """(H, W) float32, 1 over the named region to regenerate: top / bottom / left / right half,
    or the center (the middle half in each direction)."""
    hidden = np.zeros((height, width), dtype=np.float32)
    if name == "top":
        hidden[:height // 2] = 1
    elif name == "bottom":
        hidden[height // 2:] = 1
    elif name == "left":
        hidden[:, :width // 2] = 1
    elif name == "right":
        hidden[:, width // 2:] = 1
    elif name == "center":
        hidden[height // 4:height - height // 4, width // 4:width - width // 4] = 1
    else:
        raise ValueError(f"unknown mask {name!r}; use one of {', '.join(MASKS)} or a PNG file")
    return hidden


def read_image(path: str | os.PathLike, shape) -> np.ndarray:
    """A PNG (or any picture Pillow reads) as a (C, H, W) float32 array in [-1, 1], converted
    to C = 1 (grey) or 3 (RGB) channels and resized to shape (C, H, W) if it differs."""
    from PIL import Image

    channels, height, width = shape
    try:
        picture = Image.open(path)
        picture.load()
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the image {path}: {error}; pass a PNG file") from None
    picture = picture.convert("L" if channels == 1 else "RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.LANCZOS)
    pixels = np.asarray(picture, dtype=np.float32).reshape(height, width, -1).transpose(2, 0, 1)
    return pixels / 127.5 - 1.0


def read_mask(spec: str, height: int, width: int) -> np.ndarray:
    """(H, W) float32, 1 where pixels are regenerated: a name of MASKS, or a PNG whose white
    (bright) pixels are the ones to regenerate and black ones are kept."""
    if spec in MASKS:
        return region_mask(spec, height, width)
    if not os.path.isfile(spec):
        raise ValueError(f"--mask {spec}: neither a region ({', '.join(MASKS)}) nor a file; "
                         "pass one of those names or a PNG (white = regenerate)")
    from PIL import Image

    try:
        picture = Image.open(spec).convert("L")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the mask {spec}: {error}; pass a PNG file") from None
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.NEAREST)
    return (np.asarray(picture, dtype=np.float32) > 127).astype(np.float32)
