"""The DDPM training loop for `minigen train ddpm` (and `minigen sample` of its checkpoints).

One step is DDPM's Algorithm 1: a batch, a random timestep per image, noise, and one AdamW step
on the squared error of the noise prediction; an EMA of the weights follows the model and is
what sampling uses. Images go through the U-Net, toy points through the MLP denoiser. The
math lives in minigen.diffusion; the harness (minigen.run) does data, checkpoints and pictures.
"""
from __future__ import annotations

import argparse
import contextlib

import numpy as np

import minigen
from minigen import backend, diffusion, editing, samplers
from minigen.models.denoiser_mlp import MLPDenoiser
from minigen.models.unet import UNet
from minigen.nn.utils import clip_grad_norm_
from minigen.optim import EMA, AdamW, LinearWarmup
from minigen.loop import TrainingLoop, gradient_norm

SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpm-solver++")
FEW_STEP_SAMPLERS = {"euler": samplers.euler_sample, "heun": samplers.heun_sample,
                     "dpm-solver++": samplers.dpm_solver_sample}
SAMPLE_CHUNK = 256          # images denoised together when sampling
TRAJECTORY_ROWS = 8         # samples shown in a trajectory strip
TRAJECTORY_COLUMNS = 11     # states shown per sample, from pure noise to the image
DEFAULT_GUIDANCE = 3.0      # classifier-free guidance scale when a class is asked for


def _channel_mults(text: str) -> tuple[int, ...]:
    try:
        mults = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        mults = ()
    if not mults or min(mults) < 1:
        raise ValueError(f"--channel-mults {text!r}: pass positive integers separated by "
                         "commas, e.g. 1,2 (two levels) or 1,2,2")
    return mults


class DDPMLoop(TrainingLoop):
    """Denoising diffusion (Ho et al. 2020) with eps-, x0- or v-prediction."""

    name = "ddpm"
    default_dataset = "digits"
    # The main job (`minigen train ddpm`): 2,500 steps of 64 digits through a 32-channel U-Net
    # give every class, clearly drawn, in about 3 minutes on a 2-core CPU (feature FID 16.3;
    # 18.0 after 2,000 steps, 13.7 after 3,000 in 3 min 42 s).
    default_steps = 2500
    default_batch_size = 64
    default_lr = 2e-3
    default_checkpoint_every = 1000
    run_name_options = ("conditional", "schedule")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--schedule", choices=diffusion.SCHEDULES, default="cosine",
                            help="noise schedule: linear (DDPM) or cosine (improved DDPM)")
        parser.add_argument("--timesteps", type=int, default=1000, help="diffusion steps T")
        parser.add_argument("--prediction", choices=diffusion.PREDICTIONS, default="eps",
                            help="what the network predicts: the noise, x0, or v")
        parser.add_argument("--base-channels", type=int, default=32,
                            help="U-Net channels at full resolution")
        parser.add_argument("--channel-mults", default="1,2",
                            help="U-Net channel multiplier per resolution level")
        parser.add_argument("--num-res-blocks", type=int, default=1,
                            help="U-Net residual blocks per level")
        parser.add_argument("--dropout", type=float, default=0.0, help="U-Net dropout")
        parser.add_argument("--hidden", type=int, default=128,
                            help="width of the MLP denoiser (toy points)")
        parser.add_argument("--depth", type=int, default=3,
                            help="hidden layers of the MLP denoiser (toy points)")
        parser.add_argument("--warmup-steps", type=int, default=100,
                            help="steps of linear learning-rate warmup (constant after)")
        parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
        parser.add_argument("--grad-clip", type=float, default=1.0,
                            help="clip the gradient norm to this (0: no clipping)")
        parser.add_argument("--ema-decay", type=float, default=0.995,
                            help="decay of the EMA of the weights used for sampling")
        parser.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=True,
                            help="ramp the EMA decay up as (1 + n) / (10 + n) early on")
        parser.add_argument("--conditional", action="store_true",
                            help="learn p(x | class) too, for classifier-free guidance: a class "
                                 "embedding joins the time embedding (needs a labelled dataset)")
        parser.add_argument("--label-dropout", type=float, default=0.1,
                            help="with --conditional: the share of labels replaced by the null "
                                 "class, which teaches the same network p(x)")

    @classmethod
    def add_sample_arguments(cls, parser) -> None:
        parser.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                            help="ddpm: ancestral, all T steps; the others take --sampling-steps: "
                                 "ddim (Song et al.), euler and heun (Karras et al.; heun costs "
                                 "2 network calls a step), dpm-solver++ (2M, Lu et al.)")
        parser.add_argument("--sampling-steps", type=int, default=50,
                            help="steps of ddim, euler, heun, dpm-solver++ (ignored by ddpm)")
        parser.add_argument("--timestep-spacing", choices=diffusion.SPACINGS, default="leading",
                            help="where the --sampling-steps lie in 0..T-1 (diffusers' names): "
                                 "leading ends at t = 0, trailing starts at t = T-1, linspace "
                                 "includes both")
        parser.add_argument("--eta", type=float, default=0.0,
                            help="DDIM noise: 0 deterministic, 1 ancestral-like")
        parser.add_argument("--variance", choices=("beta", "beta_tilde"), default="beta",
                            help="ancestral sampler's sigma_t^2")
        parser.add_argument("--trajectory", default=None, metavar="PNG",
                            help="also write a strip from pure noise to the samples")
        parser.add_argument("--class", dest="class_label", type=int, default=None, metavar="C",
                            help="draw class C (a model trained with --conditional)")
        parser.add_argument("--guidance", type=float, default=None, metavar="W",
                            help="classifier-free guidance scale with --class: 0 ignores the "
                                 "class, 1 is the conditional model, more follows it more "
                                 f"strictly (default with --class: {DEFAULT_GUIDANCE:g})")

    def __init__(self, config: dict, device: str):
        super().__init__(config, device)
        self.schedule = diffusion.NoiseSchedule(config["schedule"], config["timesteps"])
        self.prediction = config["prediction"]
        self.data_shape = tuple(config["data_shape"])
        self.images = config["data_kind"] == "images"
        self.num_classes = self._classes(config)
        if self.images:
            self.model = UNet(self.data_shape[0], config["base_channels"],
                              _channel_mults(config["channel_mults"]), config["num_res_blocks"],
                              dropout=config["dropout"], num_classes=self.num_classes)
            levels = len(_channel_mults(config["channel_mults"]))
            if any(size % 2 ** (levels - 1) for size in self.data_shape[1:]):
                raise ValueError(f"images of shape {self.data_shape} cannot be halved "
                                 f"{levels - 1} times; pass fewer --channel-mults")
        else:
            self.model = MLPDenoiser(int(np.prod(self.data_shape)), config["hidden"], config["depth"],
                                     num_classes=self.num_classes)
        self.model.to(device)
        self.optimizer = AdamW(self.model.parameters(), lr=config["lr"],
                               weight_decay=config["weight_decay"])
        # Constant after the warmup: a schedule over --steps would change when a resumed run
        # raises --steps, and resuming must equal training straight through.
        self.lr_schedule = LinearWarmup(self.optimizer, max(config["warmup_steps"], 1))
        self.ema = EMA(self.model, decay=config["ema_decay"], warmup=config["ema_warmup"])

    @staticmethod
    def _classes(config: dict) -> int | None:
        """The number of classes a conditional model learns (None: unconditional)."""
        if not config.get("conditional"):  # checkpoints from before the option: unconditional
            return None
        if not config.get("num_classes"):
            raise ValueError(f"--conditional needs class labels, and {config['dataset']} has "
                             "none; use a labelled dataset (digits, mnist, fashion-mnist, a "
                             "labelled .npz or a folder of class subfolders) or drop --conditional")
        if not 0.0 <= config["label_dropout"] < 1.0:
            raise ValueError(f"--label-dropout is {config['label_dropout']}; pass a share in "
                             "[0, 1), e.g. 0.1")
        return int(config["num_classes"])

    def models(self) -> dict:
        return {"denoiser": self.model}

    def optimizers(self) -> dict:
        return {"adamw": self.optimizer, "lr_schedule": self.lr_schedule}

    def emas(self) -> dict:
        return {"denoiser": self.ema}

    def train_step(self, batch, labels, step: int) -> dict:
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        denoiser = self.model
        if self.num_classes is not None:
            # Classifier-free guidance training: each label becomes the null class with
            # probability label_dropout, so one network learns p(x | c) and p(x).
            null = minigen.full(labels.shape, self.num_classes, dtype=labels.dtype,
                                device=labels.device)
            dropped = minigen.rand(labels.shape[0], device=labels.device) \
                < self.config["label_dropout"]
            labels = minigen.where(dropped, null, labels)
            denoiser = lambda x_t, t: self.model(x_t, t, labels)  # noqa: E731
        loss = diffusion.diffusion_loss(denoiser, self.schedule, batch, self.prediction)
        self.optimizer.zero_grad()
        loss.backward()
        scalars = {"loss": float(loss.item()), "lr": lr}
        if self.config["grad_clip"] > 0:
            scalars["grad_norm"] = float(clip_grad_norm_(self.model.parameters(),
                                                         self.config["grad_clip"]).item())
            grad_norm = scalars["grad_norm"]
        else:
            grad_norm = gradient_norm(self.model.parameters())
        self.check_finite(loss=scalars["loss"], grad_norm=grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.update()
        return scalars

    @contextlib.contextmanager
    def guided(self, class_label=None, guidance: float | None = None):
        """The EMA network as a denoiser(x_t, t) for the samplers and editors (minigen.editing),
        guided toward class_label with scale guidance (default DEFAULT_GUIDANCE); a plain
        unconditional denoiser when class_label is None. Training weights are back on exit."""
        if class_label is None and guidance is not None:
            raise ValueError("--guidance weighs the prediction for --class against the "
                             "unconditional one; pass --class C with it")
        if class_label is not None:
            # a clear error now, not inside the first denoising step
            editing.class_labels(class_label, int(np.size(class_label)), self.num_classes)
        guidance = DEFAULT_GUIDANCE if guidance is None else guidance
        self.model.eval()
        try:
            with self.ema.average_parameters(self.model):
                yield editing.guided_denoiser(self.model, class_label, guidance)
        finally:
            self.model.train()

    def sample(self, n: int, sampler: str = "ddim", sampling_steps: int = 50, eta: float = 0.0,
               variance: str = "beta", trajectory: str | None = None,
               class_label: int | None = None, guidance: float | None = None,
               timestep_spacing: str = "leading") -> np.ndarray:
        """n samples from the EMA weights: images in [-1, 1] (n, C, H, W) or points (n, D);
        of class `class_label` with classifier-free guidance `guidance` if given."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if trajectory is not None and not self.images:
            raise ValueError("--trajectory draws a strip of images; this model makes points")
        chunks = []
        with self.guided(class_label, guidance) as denoiser:
            for start in range(0, n, SAMPLE_CHUNK):
                count = min(SAMPLE_CHUNK, n - start)
                want_path = trajectory is not None and start == 0
                result = self._sample_chunk(denoiser, count, sampler, sampling_steps, eta,
                                            variance, want_path, timestep_spacing)
                if want_path:
                    result, path = result
                    self._write_trajectory(path, trajectory)
                chunks.append(backend.to_numpy(result.data))
        return np.concatenate(chunks).reshape(n, *self.data_shape)

    def _sample_chunk(self, denoiser, count: int, sampler: str, sampling_steps: int, eta: float,
                      variance: str, return_trajectory: bool, timestep_spacing: str = "leading"):
        common = dict(device=self.device, prediction=self.prediction, clip_x0=self.images,
                      return_trajectory=return_trajectory, trajectory_length=TRAJECTORY_COLUMNS)
        shape = (count, *self.data_shape)
        if sampler == "ddpm":
            return diffusion.ddpm_sample(denoiser, self.schedule, shape, variance=variance, **common)
        if sampler in FEW_STEP_SAMPLERS:
            return FEW_STEP_SAMPLERS[sampler](denoiser, self.schedule, shape, steps=sampling_steps,
                                              timestep_spacing=timestep_spacing, **common)
        return diffusion.ddim_sample(denoiser, self.schedule, shape, steps=sampling_steps,
                                     eta=eta, timestep_spacing=timestep_spacing, **common)

    @staticmethod
    def _write_trajectory(path: list, file: str) -> None:
        """Rows: samples; columns: states from pure noise (left) to the sample (right)."""
        from minigen import viz  # pictures only: training does not need matplotlib
        states = np.stack([state[:TRAJECTORY_ROWS] for _, state in path], axis=1)  # (R, S, C, H, W)
        viz.save_trajectory(states, [t for t, _ in path], file)  # columns labelled t=1000 .. t=0
