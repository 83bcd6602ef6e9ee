"""The adversarial loop (Goodfellow et al., 2014): its losses and GANLoop, the `gan` loop of
`minigen train`.

The losses are functions of D's raw outputs (logits): `discriminator_loss(real, fake, loss)`
and `generator_loss(fake, loss)`, both minimised, for the minimax, non-saturating, hinge and
WGAN-GP objectives; `gradient_penalty` is WGAN-GP's loss on the gradient of D, differentiated
again by backward. GANLoop (minigen.loop.TrainingLoop) alternates k D steps and one G step, with
the MLPs of minigen.models.mlp for points and the DCGAN of minigen.models.dcgan for images;
with --conditional, a class-conditional DCGAN (projection discriminator) that samples a class.
Three stabilizers are options: spectral normalization of D, the R1 penalty (`r1_penalty`) and
an EMA of G's weights for sampling.
"""
from __future__ import annotations

import argparse
import contextlib

import numpy as np

import minigen
import minigen.functional as F
from minigen import backend, editing
from minigen.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init
from minigen.models.mlp import MLPDiscriminator, MLPGenerator
from minigen.nn.layers import Conv2d, Linear
from minigen.nn.utils import spectral_norm
from minigen.optim import EMA, Adam
from minigen.loop import TrainingLoop, gradient_norm
from minigen.tensor import Tensor

LOSSES = ("nonsaturating", "minimax", "hinge", "wgan-gp")
PROBABILISTIC_LOSSES = ("nonsaturating", "minimax")  # D(x) = sigmoid(logit) is a probability
DEFAULT_LR = 2e-4    # Adam's step size in DCGAN (Radford et al., 2016), for G and D alike
POINTS_LR = 1e-3     # the toy MLPs are small and their data simple: a larger step
SAMPLE_CHUNK = 1000  # samples drawn per forward pass of G
G_EMA_DECAY = 0.999  # the EMA of G's weights (Karras et al. 2018, Yazici et al. 2019)


# --- losses -----------------------------------------------------------------------------------
def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; choose one of {', '.join(LOSSES)}")
    return name


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, loss: str) -> Tensor:
    """The discriminator's loss on logits of a real batch (N, 1) and a fake batch (M, 1).

    minimax / nonsaturating: -log D(x) - log(1 - D(G(z))), the cross-entropy of Goodfellow et
    al. (2014), Eq. 1 (the two losses differ only for G). hinge: relu(1 - D(x)) + relu(1 +
    D(G(z))) (Lim and Ye, 2017). wgan-gp: D(G(z)) - D(x), the critic's estimate of the
    Wasserstein distance with the sign flipped (Gulrajani et al., 2017, Algorithm 1; the
    penalty is added separately).
    """
    check_loss(loss)
    if loss in PROBABILISTIC_LOSSES:
        # softplus(-l) = -log sigmoid(l) and softplus(l) = -log(1 - sigmoid(l)), both finite
        # for any logit, which log(sigmoid(l)) is not.
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if loss == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return fake_logits.mean() - real_logits.mean()


def generator_loss(fake_logits: Tensor, loss: str) -> Tensor:
    """The generator's loss on the logits of D on a fake batch (M, 1).

    minimax: log(1 - D(G(z))), the term of Eq. 1 that G minimises; its gradient vanishes where
    D confidently rejects the fakes (D(G(z)) -> 0), which is early in training.
    nonsaturating: -log D(G(z)), the fix proposed in the same paper: same fixed point, strong
    gradient exactly where the minimax one vanishes. hinge and wgan-gp: -D(G(z)).
    """
    check_loss(loss)
    if loss == "minimax":
        return -F.softplus(fake_logits).mean()
    if loss == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()


def gradient_penalty(discriminator, real: Tensor, fake: Tensor,
                     labels: Tensor | None = None) -> Tensor:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per
    sample (WGAN-GP, Gulrajani et al., 2017, Eq. 3), without its weight lambda.

    real, fake: (N, ...) batches of the same shape (fake detached from G); labels (N,): the
    class of both for a conditional D, whose gradient is taken at (x_hat, y). The gradient is
    taken with create_graph=True, so backward on the penalty reaches D's weights through it.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real batch {real.shape} and fake batch "
                         f"{fake.shape} must have the same shape")
    eps = minigen.rand(real.shape[0], *([1] * (real.ndim - 1)), dtype=real.dtype,
                       device=real.device)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_()
    scores = discriminator(x_hat) if labels is None else discriminator(x_hat, labels)
    (grad_x,) = minigen.grad(scores.sum(), x_hat, create_graph=True)
    # A tiny epsilon keeps the norm differentiable where the gradient is exactly zero.
    norms = ((grad_x * grad_x).reshape(grad_x.shape[0], -1).sum(1) + 1e-12).sqrt()
    return ((norms - 1) ** 2).mean()


def r1_penalty(discriminator, real: Tensor, labels: Tensor | None = None) -> Tensor:
    """E[||grad_x D(x)||^2] over a real batch (N, ...): the R1 regularizer of Mescheder et al.
    (2018), Eq. 9, without its weight gamma / 2. Zero-centred and on real data only, it pulls D
    flat on the data manifold, which makes the equilibrium locally convergent. As in
    gradient_penalty, the gradient is taken with create_graph=True, so backward on the penalty
    reaches D's weights through second derivatives."""
    x = real.detach().requires_grad_()
    scores = discriminator(x) if labels is None else discriminator(x, labels)
    (grad_x,) = minigen.grad(scores.sum(), x, create_graph=True)
    return (grad_x * grad_x).reshape(grad_x.shape[0], -1).sum(1).mean()


def spectrally_normalized(module):
    """spectral_norm on every convolution and linear layer of `module` (Miyato et al. 2018:
    each layer's largest singular value kept at 1, so D is 1-Lipschitz in its input)."""
    for layer in list(module.modules()):
        if isinstance(layer, (Conv2d, Linear)):
            spectral_norm(layer)
    return module


# --- the loop -------------------------------------------------------------------------------
class GANLoop(TrainingLoop):
    """The adversarial loop: k discriminator steps on real data against G(z).detach(), then
    one generator step through the (now updated) discriminator (Goodfellow et al., 2014,
    Algorithm 1), under the minimax, non-saturating, hinge or WGAN-GP loss.

    Points get the MLP G and D, images the DCGAN pair. G maps z ~ N(0, I) to samples; D gives
    one logit per sample. With --conditional (images with labels), G(z, y) and D(x, y) take the
    class too: D judges each real image with its label and each fake with the label it was
    drawn for (the real batch's labels, so fakes follow the data's class frequencies). Adam
    with the DCGAN settings (lr 2e-4, betas (0.5, 0.999)) drives both (lr 1e-3 on points
    unless --lr says otherwise).
    """

    name = "gan"
    default_dataset = "digits"
    default_steps = 2000          # recognisable 8x8 digits in a few minutes on two cores
    default_batch_size = 64
    default_lr = None             # None: DEFAULT_LR for images, POINTS_LR for points
    default_lr_help = f"{DEFAULT_LR:g} for images (DCGAN), {POINTS_LR:g} for points"
    run_name_options = ("conditional", "loss")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--loss", choices=LOSSES, default="nonsaturating",
                            help="adversarial objective")
        parser.add_argument("--d-steps", type=int, default=1,
                            help="discriminator steps per generator step (k of Algorithm 1)")
        parser.add_argument("--latent-dim", type=int, default=None,
                            help="size of z (default: 100 for images, 8 for points)")
        parser.add_argument("--width", type=int, default=None,
                            help="DCGAN channels of the last hidden layer (default 32 for images "
                                 "of 16 pixels or less, else 64) or MLP hidden units (default 128)")
        parser.add_argument("--gp-weight", type=float, default=10.0,
                            help="lambda of the WGAN-GP gradient penalty")
        parser.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (DCGAN: 0.5)")
        parser.add_argument("--beta2", type=float, default=0.999, help="Adam beta2")
        parser.add_argument("--conditional", action="store_true",
                            help="learn p(x | class): G reads a class embedding beside z, D is "
                                 "a projection discriminator (images with labels)")
        parser.add_argument("--spectral-norm", action="store_true",
                            help="spectral normalization of every layer of D (Miyato et al. "
                                 "2018); the DCGAN D then has no batch norm")
        parser.add_argument("--r1", type=float, default=0.0, metavar="GAMMA",
                            help="add GAMMA/2 E||grad D(x_real)||^2 to D's loss (Mescheder et "
                                 "al. 2018; 0: off, e.g. 10 for images, 1 for points)")
        parser.add_argument("--g-ema-decay", type=float, default=G_EMA_DECAY, metavar="DECAY",
                            help="keep an EMA of G's weights with this decay and sample from it "
                                 "(0: none)")

    @classmethod
    def add_sample_arguments(cls, parser) -> None:
        parser.add_argument("--class", dest="class_label", type=int, default=None, metavar="C",
                            help="draw class C (a model trained with --conditional)")
        parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                            help="sample from the EMA of G's weights when the run kept one")

    def __init__(self, config: dict, device: str):
        self.config, self.device = config, device
        self.loss = check_loss(config.get("loss", "nonsaturating"))
        self.d_steps = int(config.get("d_steps", 1))
        if self.d_steps < 1:
            raise ValueError(f"--d-steps must be at least 1, got {self.d_steps}")
        self.gp_weight = float(config.get("gp_weight", 10.0))
        self.r1_gamma = float(config.get("r1", 0.0))
        if self.r1_gamma < 0:
            raise ValueError(f"--r1 is {self.r1_gamma}; pass a weight gamma of 0 (off) or more")
        shape = tuple(config["data_shape"])
        self.num_classes = self._classes(config)
        if config.get("data_kind") == "points":
            self.latent_dim = int(config.get("latent_dim") or 8)
            self.width = int(config.get("width") or 128)
            self.generator = MLPGenerator(self.latent_dim, shape[0], hidden=self.width)
            self.discriminator = MLPDiscriminator(shape[0], hidden=self.width)
        else:
            channels, height, width_px = shape
            if height != width_px:
                raise ValueError(f"the DCGAN needs square images, got {height}x{width_px}; crop "
                                 "or resize the dataset to a square size")
            self.latent_dim = int(config.get("latent_dim") or 100)
            self.width = int(config.get("width") or (32 if height <= 16 else 64))
            # per-sample penalties and spectral norm work on D without batch statistics
            norm = "none" if self.loss == "wgan-gp" or config.get("spectral_norm") else "batch"
            self.generator = dcgan_init(DCGANGenerator(self.latent_dim, channels, height,
                                                       self.width, self.num_classes))
            self.discriminator = dcgan_init(DCGANDiscriminator(channels, height, self.width, norm,
                                                               self.num_classes))
        if config.get("spectral_norm"):  # checkpoints from before the option: without
            spectrally_normalized(self.discriminator)
        self.generator.to(device)
        self.discriminator.to(device)
        ema_decay = float(config.get("g_ema_decay") or 0.0)  # older checkpoints: none
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"--g-ema-decay is {ema_decay}; pass a decay in [0, 1), e.g. "
                             f"{G_EMA_DECAY} (0: no EMA)")
        self.g_ema = EMA(self.generator, ema_decay, warmup=True) if ema_decay else None
        lr = float(config.get("lr") or (POINTS_LR if config.get("data_kind") == "points"
                                        else DEFAULT_LR))
        betas = (float(config.get("beta1", 0.5)), float(config.get("beta2", 0.999)))
        self.g_optimizer = Adam(self.generator.parameters(), lr=lr, betas=betas)
        self.d_optimizer = Adam(self.discriminator.parameters(), lr=lr, betas=betas)

    @staticmethod
    def _classes(config: dict) -> int | None:
        """The number of classes a conditional GAN learns (None: unconditional)."""
        if not config.get("conditional"):  # checkpoints from before the option: unconditional
            return None
        if config.get("data_kind") == "points":
            raise ValueError("--conditional conditions the DCGAN on image classes; the toy "
                             "points train unconditionally: drop --conditional")
        if not config.get("num_classes"):
            raise ValueError(f"--conditional needs class labels, and {config.get('dataset')} "
                             "has none; use a labelled dataset (digits, mnist, fashion-mnist, a "
                             "labelled .npz or a folder of class subfolders) or drop --conditional")
        return int(config["num_classes"])

    def models(self) -> dict:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> dict:
        return {"generator": self.g_optimizer, "discriminator": self.d_optimizer}

    def emas(self) -> dict:
        return {} if self.g_ema is None else {"generator": self.g_ema}

    def noise(self, n: int) -> Tensor:
        """z ~ N(0, I), (n, latent_dim), from minigen's default generator (so resume is exact)."""
        return minigen.randn(n, self.latent_dim, device=self.device)

    def _read_out(self, logits: Tensor) -> float:
        """Mean D(x): a probability for the sigmoid losses, the raw score for the others."""
        if self.loss in PROBABILISTIC_LOSSES:
            logits = F.sigmoid(logits)
        return float(logits.mean().item())

    def discriminate(self, samples: Tensor, labels: Tensor | None = None) -> Tensor:
        """D's logits (N, 1): D(x), or D(x, y) for a conditional model."""
        if labels is None:
            return self.discriminator(samples)
        return self.discriminator(samples, labels)

    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """G(z), or G(z, y) for a conditional model."""
        if labels is None:
            return self.generator(z)
        return self.generator(z, labels)

    def discriminator_step(self, real: Tensor, fake: Tensor, labels: Tensor | None = None) -> dict:
        """One update of D on a real batch and a fake batch (both of class `labels` for a
        conditional D); G is cut off by the detach."""
        fake = fake.detach()
        self.d_optimizer.zero_grad()
        real_logits = self.discriminate(real, labels)
        fake_logits = self.discriminate(fake, labels)
        loss = discriminator_loss(real_logits, fake_logits, self.loss)
        if self.loss == "wgan-gp":
            loss = loss + self.gp_weight * gradient_penalty(self.discriminator, real, fake,
                                                            labels)
        r1 = None
        if self.r1_gamma > 0:
            r1 = r1_penalty(self.discriminator, real, labels)
            loss = loss + (self.r1_gamma / 2) * r1
        loss.backward()
        stats = {"loss_d": float(loss.item()), "d_real": self._read_out(real_logits.detach()),
                 "d_fake": self._read_out(fake_logits.detach()),
                 "grad_norm_d": gradient_norm(self.discriminator.parameters())}
        if r1 is not None:
            stats["r1"] = float(r1.item())
        self.check_finite(loss_d=stats["loss_d"], grad_norm_d=stats["grad_norm_d"])
        self.d_optimizer.step()
        return stats

    def generator_step(self, fake: Tensor, labels: Tensor | None = None) -> dict:
        """One update of G through D on `fake` = G(z[, labels]) (with its graph); D's weights
        stay put."""
        self.g_optimizer.zero_grad()
        # D's weights need no gradient here: freezing them skips that work, and its optimizer
        # is not stepped, so the G step cannot move D.
        self.discriminator.requires_grad_(False)
        try:
            loss = generator_loss(self.discriminate(fake, labels), self.loss)
            loss.backward()
        finally:
            self.discriminator.requires_grad_(True)
        stats = {"loss_g": float(loss.item()),
                 "grad_norm_g": gradient_norm(self.generator.parameters())}
        self.check_finite(loss_g=stats["loss_g"], grad_norm_g=stats["grad_norm_g"])
        self.g_optimizer.step()
        return stats

    def train_step(self, batch: Tensor, labels, step: int) -> dict:
        """k D steps (each on `batch` against fresh fakes), then one G step that reuses the
        last fakes, as PyTorch's DCGAN example does, so G runs forward once per D step.
        labels: the batch's classes, used by a conditional GAN only (for real and fakes)."""
        if self.num_classes is None:
            labels = None
        elif labels is None:
            raise ValueError("a conditional GAN trains on labelled batches; pass the labels")
        n = batch.shape[0]
        for k in range(self.d_steps):
            if k < self.d_steps - 1:
                with minigen.no_grad():
                    fake = self.generate(self.noise(n), labels)
            else:
                fake = self.generate(self.noise(n), labels)
            d_stats = self.discriminator_step(batch, fake, labels)
        g_stats = self.generator_step(fake, labels)
        if self.g_ema is not None:
            self.g_ema.update()
        return {**d_stats, **g_stats}

    def sample_labels(self, n: int, class_label=None) -> Tensor | None:
        """The classes of n samples: None for an unconditional G; class_label (one class, or
        one per sample) when given; else 0, 1, ..., K-1, 0, 1, ... so every class is drawn."""
        if self.num_classes is None:
            if class_label is not None:
                raise ValueError("this model is unconditional (trained without --conditional), "
                                 "so it cannot be asked for a class; drop --class, or train a "
                                 "conditional model with `minigen train gan --conditional`")
            return None
        if class_label is None:
            return Tensor(backend.to_device(np.arange(n) % self.num_classes, self.device))
        # max(n, 1): the class is checked even when no sample is asked for
        return editing.class_labels(class_label, max(n, 1), self.num_classes, self.device)[:n]

    def sample(self, n: int, class_label=None, ema: bool = True):
        """n samples as a NumPy array: images (n, C, H, W) in [-1, 1] or points (n, D); of
        class `class_label` (an int, or n of them) from a conditional G, of every class in turn
        when it is None; from the EMA of G's weights if the run kept one and `ema`.

        G runs in eval mode (BatchNorm with its running statistics), so sampling neither
        depends on the batch it is drawn in nor changes the model."""
        labels = self.sample_labels(n, class_label)
        was_training = self.generator.training
        self.generator.eval()
        chunks = []
        averaged = self.g_ema.average_parameters() if ema and self.g_ema is not None \
            else contextlib.nullcontext()
        try:
            with minigen.no_grad(), averaged:
                for start in range(0, n, SAMPLE_CHUNK):
                    count = min(SAMPLE_CHUNK, n - start)
                    chunk_labels = None if labels is None else labels[start:start + count]
                    chunks.append(backend.to_numpy(
                        self.generate(self.noise(count), chunk_labels).data))
        finally:
            self.generator.train(was_training)
        if not chunks:
            return np.zeros((0, *self.config["data_shape"]), np.float32)
        return np.concatenate(chunks)
