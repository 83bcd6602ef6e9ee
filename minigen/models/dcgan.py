"""DCGAN (Radford, Metz and Chintala, 2016): a generator of transposed convolutions and a
discriminator of strided convolutions, sized for 8x8 digits and for 16, 28, 32 and 64 pixel images.

G: z (N, latent_dim) -> a small square map -> doubled in size by ConvTranspose2d(4, 2, 1)
+ BatchNorm + ReLU until the image size, tanh out. D mirrors it with Conv2d(4, 2, 1) +
BatchNorm + LeakyReLU(0.2) (no BatchNorm on the first layer, as in the paper) and a last
convolution over the whole small map to one logit. `dcgan_init` draws weights from N(0, 0.02).
With num_classes both are class-conditional: G reads a class embedding beside z (Mirza and
Osindero, 2014), D adds the projection term <embed(y), phi(x)> (Miyato and Koyama, 2018).
"""
from __future__ import annotations

import minigen
from minigen import nn
from minigen.nn import init
from minigen.tensor import Tensor

# image size -> (side of the smallest feature map, number of doublings from it to the image)
LAYOUTS = {8: (2, 2), 16: (4, 2), 28: (7, 2), 32: (4, 3), 64: (4, 4)}
PROJECTION_INIT_STD = 0.02  # D's class embedding starts as small as DCGAN's conv weights


def layout(image_size: int) -> tuple[int, int]:
    if image_size not in LAYOUTS:
        raise ValueError(f"DCGAN has layouts for images of {sorted(LAYOUTS)} pixels, not "
                         f"{image_size}; resize the images to one of those sizes")
    return LAYOUTS[image_size]


def _check_labels(model: nn.Module, labels: Tensor | None) -> None:
    """A conditional model needs one label per sample; an unconditional one takes none."""
    name = type(model).__name__
    if model.num_classes is None and labels is not None:
        raise ValueError(f"{name}: labels were given to an unconditional model; build it with "
                         "num_classes=K to condition on classes")
    if model.num_classes is not None and labels is None:
        raise ValueError(f"{name}: this model is conditional on {model.num_classes} classes; "
                         "pass labels (N,) with the inputs")


class DCGANGenerator(nn.Module):
    """G: z (N, latent_dim)[, labels int (N,)] -> images (N, channels, image_size, image_size)
    in [-1, 1].

    width: channels of the last hidden map; each earlier map has twice as many.
    num_classes: None for an unconditional G; otherwise a learned class vector (N(0, 1), like
    z) of class_dim numbers (default num_classes, the length of Mirza and Osindero's one-hot
    code) joins z as extra input channels of the first transposed convolution. A class vector
    as long as z (100) let G ignore z: on the digits it drew nearly one image per class.
    """

    def __init__(self, latent_dim: int = 100, channels: int = 1, image_size: int = 8,
                 width: int = 64, num_classes: int | None = None, class_dim: int | None = None):
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.num_classes = num_classes
        inputs = latent_dim
        if num_classes is not None:
            class_dim = class_dim or num_classes
            self.class_embedding = nn.Embedding(num_classes, class_dim)
            inputs += class_dim
        start, doublings = layout(image_size)
        hidden = width * 2 ** (doublings - 1)
        layers = [nn.ConvTranspose2d(inputs, hidden, start, 1, 0, bias=False),
                  nn.BatchNorm2d(hidden), nn.ReLU()]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(hidden // 2), nn.ReLU()]
            hidden //= 2
        layers += [nn.ConvTranspose2d(hidden, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        _check_labels(self, labels)
        if labels is not None:
            z = minigen.cat([z, self.class_embedding(labels)], dim=1)
        return self.net(z.reshape(z.shape[0], z.shape[1], 1, 1))


class DCGANDiscriminator(nn.Module):
    """D: images (N, channels, image_size, image_size)[, labels int (N,)] -> logits (N, 1).

    norm: "batch" (DCGAN) or "none" (WGAN-GP's critic, whose gradient penalty is per sample,
    which batch statistics would couple across the batch).
    num_classes: None for D(x) = psi(phi(x)); otherwise the projection discriminator of Miyato
    and Koyama (2018), Eq. 3: D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, where phi(x) is the
    last hidden map, flattened, psi the last convolution (a linear map of phi, as it covers the
    whole map) and embed a learned vector per class.
    """

    def __init__(self, channels: int = 1, image_size: int = 8, width: int = 64,
                 norm: str = "batch", num_classes: int | None = None):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"DCGANDiscriminator: norm must be 'batch' or 'none', not {norm!r}")
        self.num_classes = num_classes
        start, doublings = layout(image_size)
        layers = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        hidden = width
        for _ in range(doublings - 1):
            layers.append(nn.Conv2d(hidden, hidden * 2, 4, 2, 1, bias=False))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(hidden * 2))
            layers.append(nn.LeakyReLU(0.2))
            hidden *= 2
        layers.append(nn.Conv2d(hidden, 1, start, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        if num_classes is not None:
            self.class_embedding = nn.Embedding(num_classes, hidden * start * start)
            # PyTorch's N(0, 1), fifty times the 0.02 of psi, would drown psi(phi(x)) at first.
            init.normal_(self.class_embedding.weight, 0.0, PROJECTION_INIT_STD)

    def hidden_map(self, images: Tensor) -> Tensor:
        """Every layer but psi: images (N, C, H, W) -> the last hidden map (N, C_last, s, s);
        phi(x) is this map flattened to (N, C_last * s * s)."""
        hidden = images
        for layer in list(self.net)[:-1]:
            hidden = layer(hidden)
        return hidden

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        _check_labels(self, labels)
        N = images.shape[0]
        if labels is None:
            return self.net(images).reshape(N, 1)
        hidden = self.hidden_map(images)
        psi_of_phi = self.net[-1](hidden).reshape(N, 1)
        projection = (self.class_embedding(labels) * hidden.reshape(N, -1)).sum(1, keepdim=True)
        return psi_of_phi + projection


def dcgan_init(module: nn.Module) -> nn.Module:
    """The DCGAN initialisation, in place: conv weights ~ N(0, 0.02), BatchNorm scale ~
    N(1, 0.02) and shift 0. Returns the module."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            init.normal_(layer.weight, 1.0, 0.02)
            init.zeros_(layer.bias)
    return module
