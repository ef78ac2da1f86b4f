"""Convolutional encoder / decoder with residual blocks, shared by the VAE and the VQ-VAE.

The layout follows the VQ-VAE paper (van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete
Representation Learning", NeurIPS 2017): stride-2 4x4 convolutions to downsample, residual blocks
``x + Conv1x1(ReLU(Conv3x3(ReLU(x))))``, no normalisation layers; resolution levels and widths
are configured taming-style with ``channel_mults`` (one entry per level, one stride-2
(de)convolution between consecutive levels, so ``len(channel_mults) - 1`` downsamplings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmexp.errors import ShapeMismatchError


class ResidualBlock(nn.Module):
    """``x + Conv1x1(ReLU(Conv3x3(ReLU(x))))`` (van den Oord et al. 2017).

    Args:
        channels (int): input and output channels.
        hidden_channels (int | None): channels of the 3x3 conv. Default: None (= ``channels``).
    """

    def __init__(self, channels: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = hidden_channels or channels
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, 1, 1),
                                  nn.ReLU(True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def latent_size(image_size: int, num_downsamples: int, who: str) -> int:
    """Side of the latent map; raises ShapeMismatchError if ``image_size`` does not divide."""
    factor = 2 ** num_downsamples
    if image_size % factor:
        raise ShapeMismatchError(
            f"{who}: image_size={image_size} is not divisible by 2**{num_downsamples}={factor} "
            f"({num_downsamples} downsamplings from channel_mults); use fewer levels or a size "
            f"that is a multiple of {factor}")
    return image_size // factor


class Encoder(nn.Module):
    """Conv encoder: image ``[B, C, H, W]`` -> feature map ``[B, out_channels, H/f, W/f]``,
    ``f = 2 ** (len(channel_mults) - 1)``.

    Args:
        channels (int): image channels. Default: 3.
        image_size (int): image side in px (checked to be divisible by ``f``). Default: 32.
        out_channels (int): channels of the output map (e.g. the VQ code dim). Default: 64.
        base_channels (int): width of the first level. Default: 64.
        channel_mults (Sequence[int]): width multiplier per level. Default: (1, 2, 2)
            (two downsamplings).
        num_res_blocks (int): residual blocks per level. Default: 2.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, out_channels: int = 64,
                 base_channels: int = 64, channel_mults: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2) -> None:
        super().__init__()
        mults = list(channel_mults)
        self.channels, self.image_size, self.out_channels = channels, image_size, out_channels
        self.num_downsamples = len(mults) - 1
        self.latent_size = latent_size(image_size, self.num_downsamples, type(self).__name__)
        widths = [base_channels * m for m in mults]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, 1, 1)]
        for i, w in enumerate(widths):
            layers += [ResidualBlock(w) for _ in range(num_res_blocks)]
            if i + 1 < len(widths):
                layers += [nn.ReLU(True), nn.Conv2d(w, widths[i + 1], 4, 2, 1)]
        layers += [nn.ReLU(True), nn.Conv2d(widths[-1], out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Conv decoder, the mirror of :class:`Encoder`: ``[B, in_channels, h, w]`` ->
    ``[B, channels, h*f, w*f]``. The output is unbounded (the model maps it to [-1, 1]:
    clamp for a Gaussian mean, sigmoid for Bernoulli logits).

    Args:
        channels (int): image channels. Default: 3.
        in_channels (int): channels of the latent map (e.g. the VQ code dim). Default: 64.
        base_channels (int): width of the last (full-resolution) level. Default: 64.
        channel_mults (Sequence[int]): width multiplier per level, listed from full resolution
            down, i.e. the same list as the matching Encoder. Default: (1, 2, 2).
        num_res_blocks (int): residual blocks per level. Default: 2.
    """

    def __init__(self, channels: int = 3, in_channels: int = 64, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2) -> None:
        super().__init__()
        widths = [base_channels * m for m in reversed(list(channel_mults))]
        self.channels, self.in_channels = channels, in_channels
        self.num_upsamples = len(widths) - 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1)]
        for i, w in enumerate(widths):
            layers += [ResidualBlock(w) for _ in range(num_res_blocks)]
            if i + 1 < len(widths):
                layers += [nn.ReLU(True), nn.ConvTranspose2d(w, widths[i + 1], 4, 2, 1)]
        layers += [nn.ReLU(True), nn.Conv2d(widths[-1], channels, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
