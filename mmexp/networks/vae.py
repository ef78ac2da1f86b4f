"""VAE networks: conv encoder with a diagonal-Gaussian latent head, and the matching decoder.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (arXiv:1312.6114).
The conv trunks are :class:`mmexp.networks.autoencoder.Encoder` / ``Decoder``; the latent is a
vector of ``latent_dim`` numbers obtained by a linear layer on the flattened feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmexp.networks.autoencoder import Decoder, Encoder, latent_size


class GaussianEncoder(nn.Module):
    """Image -> ``(mu, logvar)``, each ``[B, latent_dim]``, of q(z | x) = N(mu, exp(logvar)).

    Args:
        channels (int): image channels. Default: 3.
        image_size (int): image side in px (divisible by ``2 ** (len(channel_mults) - 1)``).
            Default: 32.
        latent_dim (int): size of z. Default: 32.
        base_channels (int): width of the first conv level. Default: 32.
        channel_mults (Sequence[int]): width multiplier per level. Default: (1, 2, 4).
        num_res_blocks (int): residual blocks per level. Default: 1.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, latent_dim: int = 32,
                 base_channels: int = 32, channel_mults: Sequence[int] = (1, 2, 4),
                 num_res_blocks: int = 1) -> None:
        super().__init__()
        feat = base_channels * list(channel_mults)[-1]
        self.trunk = Encoder(channels, image_size, feat, base_channels, channel_mults,
                             num_res_blocks)
        self.channels, self.image_size, self.latent_dim = channels, image_size, latent_dim
        self.head = nn.Linear(feat * self.trunk.latent_size ** 2, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.trunk(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class GaussianDecoder(nn.Module):
    """``z [B, latent_dim]`` -> unbounded image-shaped output ``[B, C, H, W]`` (Gaussian mean or
    Bernoulli logits; the model decides).

    Args:
        channels (int): image channels. Default: 3.
        image_size (int): image side in px. Default: 32.
        latent_dim (int): size of z. Default: 32.
        base_channels (int): width of the full-resolution level. Default: 32.
        channel_mults (Sequence[int]): width multiplier per level (same list as the encoder).
            Default: (1, 2, 4).
        num_res_blocks (int): residual blocks per level. Default: 1.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, latent_dim: int = 32,
                 base_channels: int = 32, channel_mults: Sequence[int] = (1, 2, 4),
                 num_res_blocks: int = 1) -> None:
        super().__init__()
        mults = list(channel_mults)
        self.feat = base_channels * mults[-1]
        self.size = latent_size(image_size, len(mults) - 1, type(self).__name__)
        self.channels, self.image_size, self.latent_dim = channels, image_size, latent_dim
        self.fc = nn.Linear(latent_dim, self.feat * self.size ** 2)
        self.trunk = Decoder(channels, self.feat, base_channels, mults, num_res_blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.fc(z).view(-1, self.feat, self.size, self.size))
