"""Discriminators for image restoration GANs.

:class:`VGGStyleDiscriminator` is ESRGAN's (Wang et al., "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", ECCV Workshops 2018; after Ledig et al.'s SRGAN discriminator, CVPR 2017): ten
conv layers in five stride-2 stages with BatchNorm and LeakyReLU(0.2), then two linear layers to one logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator: image ``[B, C, S, S]`` -> logits ``[B]``.

    Args:
        in_channels (int): image channels. Default: 3.
        base_channels (int): channels of the first stage; stages have 1, 2, 4, 8, 8 times it. Default: 64.
        input_size (int): side of the (square) images it judges, a multiple of 32 (ESRGAN: 128, the HR
            training crop); the linear head sees the ``input_size / 32`` square map. Default: 128.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, input_size: int = 128) -> None:
        super().__init__()
        if input_size < 32 or input_size % 32:
            raise ConfigError(f"VGGStyleDiscriminator: input_size must be a multiple of 32, got {input_size}")
        self.channels, self.image_size = int(in_channels), int(input_size)
        nf = base_channels
        widths = [nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf]
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            # the first conv of the first stage has a bias and no BatchNorm; the others carry BatchNorm
            layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(w))
            layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w),
                       nn.LeakyReLU(0.2, inplace=True)]
            cin = w
        self.features = nn.Sequential(*layers)
        side = input_size // 32
        self.linear1 = nn.Linear(8 * nf * side * side, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ShapeMismatchError(
                f"VGGStyleDiscriminator built for {self.image_size}x{self.image_size} images got "
                f"{x.shape[-2]}x{x.shape[-1]}; set its input_size to the training crop (the HR target size)")
        feat = self.features(x).flatten(1)
        return self.linear2(F.leaky_relu(self.linear1(feat), 0.2)).squeeze(1)
