"""DCGAN generator and discriminator.

Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016 (arXiv:1511.06434).

Supported image sizes: 28, 32 and 64 px (square). 32 and 64 px follow the paper: the generator
projects the latent vector to a 4x4 map and doubles the resolution with stride-2 transposed
convolutions (3 resp. 4 times). 28 px (MNIST-style) starts from a **7x7** map instead
(7 -> 14 -> 28), so no cropping is involved; the discriminator mirrors this (28 -> 14 -> 7 and a
7x7 head). Channel widths: the layer just before the image has ``base_channels`` channels, and
every layer further from the image doubles it.

Weights use the DCGAN init: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02), biases 0.

Two generator options go beyond the paper (both off by default, both on in the default run): resize +
3x3 convolution in place of stride-2 transposed convolutions (Odena, Dumoulin & Olah, "Deconvolution
and Checkerboard Artifacts", Distill 2016), and a full-resolution layer before the output convolution,
so that the last feature map already has the image's size: sharp object edges (the shapes dataset's
whole content) need features at full resolution, which the paper's generator only reaches in its
output layer.
"""

from __future__ import annotations

import torch
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError

#: image size -> side of the first (generator) / last (discriminator) feature map
SUPPORTED_SIZES: dict[int, int] = {28: 7, 32: 4, 64: 4}
UPSAMPLE = ("transposed", "nearest", "pixel_shuffle")


def num_stages(image_size: int, who: str) -> tuple[int, int]:
    """(start size, number of stride-2 stages) for ``image_size``; raises on unsupported sizes."""
    if image_size not in SUPPORTED_SIZES:
        supported = ", ".join(str(s) for s in sorted(SUPPORTED_SIZES))
        raise ShapeMismatchError(
            f"{who} does not support image_size={image_size}; supported sizes are {supported} px"
        )
    start = SUPPORTED_SIZES[image_size]
    return start, (image_size // start).bit_length() - 1


def dcgan_init(module: nn.Module) -> None:
    """DCGAN init (Radford et al. 2015): conv ~ N(0, 0.02), BatchNorm weight ~ N(1, 0.02),
    biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def icnr_(conv: nn.Conv2d, scale: int = 2) -> None:
    """ICNR init (Aitken et al. 2017) of a conv feeding ``PixelShuffle(scale)``: the ``scale**2`` output channels
    that become one output channel's sub-pixels get the same filter (the first one's), so at init the shuffle
    equals nearest-neighbour upsampling of a conv at the low resolution (no checkerboard)."""
    r2 = scale * scale
    with torch.no_grad():
        w = conv.weight.view(conv.out_channels // r2, r2, *conv.weight.shape[1:])
        w.copy_(w[:, :1].expand_as(w))
        if conv.bias is not None:
            b = conv.bias.view(-1, r2)
            b.copy_(b[:, :1].expand_as(b))


class DCGANGenerator(nn.Module):
    """DCGAN generator (Radford et al. 2015): z -> image in [-1, 1] (tanh).

    Args:
        latent_dim (int): size of the latent vector z. Default: 100.
        channels (int): image channels (1 or 3). Default: 3.
        image_size (int): output side in px, one of 28, 32, 64 (28 starts from a 7x7 map).
            Default: 64.
        base_channels (int): channels of the last hidden layer; earlier layers double it.
            Default: 64.
        upsample (str): ``transposed`` (the paper: 4x4 stride-2 transposed convolutions),
            ``nearest`` (nearest-neighbour x2 then a 3x3 convolution: no checkerboard artifacts) or
            ``pixel_shuffle`` (a 3x3 convolution to 4x the channels at the low resolution, then a sub-pixel
            shuffle, Shi et al. 2016, ICNR-initialised: the same multiply-adds as ``nearest``, without its
            upsampled copy, and each output pixel of a 2x2 block has its own filter; ~20 % cheaper per step than
            ``nearest`` on CPU, but in the default run's budget its sub-pixels drift into a checkerboard texture,
            FID 143 against ~105: experiments/README.md). Default: ``transposed``.
        full_res_layer (bool): one more conv-BN-ReLU layer at the output resolution (``base_channels``
            wide) before the output convolution. Default: False.

    Input ``z`` is ``[B, latent_dim]`` (or ``[B, latent_dim, 1, 1]``); output ``[B, C, H, W]``.
    """

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64,
                 base_channels: int = 64, upsample: str = "transposed", full_res_layer: bool = False) -> None:
        super().__init__()
        if upsample not in UPSAMPLE:
            raise ConfigError(f"upsample must be one of {', '.join(UPSAMPLE)}, got {upsample!r}")
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        start, stages = num_stages(image_size, type(self).__name__)

        def up(c_in: int, c_out: int, bias: bool) -> list[nn.Module]:
            if upsample == "transposed":
                return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)]
            if upsample == "pixel_shuffle":
                return [nn.Conv2d(c_in, 4 * c_out, 3, 1, 1, bias=bias), nn.PixelShuffle(2)]
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias)]

        ch = base_channels * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, ch, start, 1, 0, bias=False),
            nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [*up(ch, ch // 2, False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        if full_res_layer:
            layers += [*up(ch, ch, False), nn.BatchNorm2d(ch), nn.ReLU(True),
                       nn.Conv2d(ch, channels, 3, 1, 1)]
        else:
            layers += [*up(ch, channels, upsample != "transposed")]
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)
        if upsample == "pixel_shuffle":  # ICNR (Aitken et al. 2017): the 4 sub-pixels start equal, no checkerboard
            for conv, shuffle in zip(layers, layers[1:]):
                if isinstance(shuffle, nn.PixelShuffle):
                    icnr_(conv)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator (Radford et al. 2015): image -> real/fake logit per image.

    Args:
        channels (int): image channels (1 or 3). Default: 3.
        image_size (int): input side in px, one of 28, 32, 64. Default: 64.
        base_channels (int): channels of the first conv layer; each later layer doubles it.
            Default: 64.
        spectral_norm (bool): wrap every conv in spectral normalisation (Miyato et al. 2018,
            "SN-DCGAN") and drop BatchNorm, as SNGAN does. Default: False.

    ``forward(x)`` returns raw logits ``[B]`` (no sigmoid; the loss applies it).
    The network is split into ``features`` (conv trunk, ``[B, F, s, s]``) and ``head`` (a conv
    over the whole ``s x s`` map, i.e. a linear layer on the flattened features), so that a
    class-conditional projection discriminator (Miyato & Koyama 2018) can later add
    ``(embed(y) * features(x).flatten(1)).sum(1)`` to the head's output without changing the trunk
    (:class:`mmexp.networks.cgan.ProjectionDiscriminator` does). ``feature_channels``, ``feature_size``:
    the trunk's output ``F`` and ``s``; ``feature_dim = F * s * s``.
    """

    def __init__(self, channels: int = 3, image_size: int = 64, base_channels: int = 64,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.channels, self.image_size = channels, image_size
        start, stages = num_stages(image_size, type(self).__name__)
        ch = base_channels
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
        for _ in range(stages - 1):
            layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, 1, start, 1, 0, bias=False)
        self.feature_channels, self.feature_size = ch, start
        self.feature_dim = ch * start * start
        self.apply(dcgan_init)
        if spectral_norm:  # after init: the parametrisation keeps the initialised weight
            for m in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
                nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()
