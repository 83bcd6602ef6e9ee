"""DCGAN (Radford, Metz and Chintala, 2016): a generator of transposed convolutions and a
discriminator of strided convolutions, sized for 8x8 digits and for 16, 28, 32 and 64 pixel images.

G: z (N, latent_dim) -> a small square map -> doubled in size by ConvTranspose2d(4, 2, 1)
+ BatchNorm + ReLU until the image size, tanh out. D mirrors it with Conv2d(4, 2, 1) +
BatchNorm + LeakyReLU(0.2) (no BatchNorm on the first layer, as in the paper) and a last
convolution over the whole small map to one logit. `dcgan_init` draws weights from N(0, 0.02).
"""
from __future__ import annotations

from minigen import nn
from minigen.nn import init
from minigen.tensor import Tensor

# image size -> (side of the smallest feature map, number of doublings from it to the image)
LAYOUTS = {8: (2, 2), 16: (4, 2), 28: (7, 2), 32: (4, 3), 64: (4, 4)}


def layout(image_size: int) -> tuple[int, int]:
    if image_size not in LAYOUTS:
        raise ValueError(f"DCGAN has layouts for images of {sorted(LAYOUTS)} pixels, not "
                         f"{image_size}; resize the images to one of those sizes")
    return LAYOUTS[image_size]


class DCGANGenerator(nn.Module):
    """G: z (N, latent_dim) -> images (N, channels, image_size, image_size) in [-1, 1].

    width: channels of the last hidden map; each earlier map has twice as many.
    """

    def __init__(self, latent_dim: int = 100, channels: int = 1, image_size: int = 8,
                 width: int = 64):
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        start, doublings = layout(image_size)
        hidden = width * 2 ** (doublings - 1)
        layers = [nn.ConvTranspose2d(latent_dim, hidden, start, 1, 0, bias=False),
                  nn.BatchNorm2d(hidden), nn.ReLU()]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(hidden // 2), nn.ReLU()]
            hidden //= 2
        layers += [nn.ConvTranspose2d(hidden, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """D: images (N, channels, image_size, image_size) -> logits (N, 1).

    norm: "batch" (DCGAN) or "none" (WGAN-GP's critic, whose gradient penalty is per sample,
    which batch statistics would couple across the batch).
    """

    def __init__(self, channels: int = 1, image_size: int = 8, width: int = 64,
                 norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"DCGANDiscriminator: norm must be 'batch' or 'none', not {norm!r}")
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

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).reshape(images.shape[0], 1)


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
