"""Layers that feed a condition vector (a class embedding, a sentence embedding) into image features.

- :class:`ConditionalAffine`: channel-wise ``gamma(c) * x + beta(c)``, by a linear map or an MLP of ``c``: the
  affine transformation of DF-GAN's fusion blocks (Tao et al., "DF-GAN: A Simple and Effective Baseline for
  Text-to-Image Synthesis", CVPR 2022), and the conditional half of conditional BatchNorm.
- :class:`ConditionalBatchNorm2d`: BatchNorm without its own affine parameters, followed by a
  :class:`ConditionalAffine` (de Vries et al., "Modulating early visual processing by language", NeurIPS 2017;
  the class-conditional BN of Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018).
- :class:`FusionBlock`: DF-GAN's upsampling block with deep text-image fusion: two stacked
  (affine, LeakyReLU) pairs before each of two 3x3 convolutions, and a residual shortcut.
- :class:`ConditioningAugmentation`: StackGAN's conditioning augmentation (Zhang et al., "StackGAN: Text to
  Photo-realistic Image Synthesis with Stacked Generative Adversarial Networks", ICCV 2017): a Gaussian
  ``N(mu(c), diag(sigma(c)^2))`` around the text vector, sampled with the reparameterisation trick; its KL
  divergence from ``N(0, I)`` is a loss term (``mmexp.losses.kl.GaussianKL``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ConditionalAffine(nn.Module):
    """``x * gamma(c) + beta(c)`` per channel, with ``gamma = 1 + Wg c`` and ``beta = Wb c`` (DF-GAN's affine
    transformation; the conditional part of conditional BatchNorm).

    Args:
        num_features (int): channels of ``x``.
        cond_dim (int): size of the condition vector ``c``.
        hidden_dim (int | None): None: ``gamma``/``beta`` are linear in ``c``; else each is an MLP
            ``Linear(cond_dim, hidden_dim) -> ReLU -> Linear(hidden_dim, num_features)``, as DF-GAN. Default: None.

    The last layers start at zero, so the layer starts as the identity (``gamma = 1``, ``beta = 0``) and the
    condition's influence is learned (DF-GAN initialises its affine layers so).

    ``forward(x [B, C, H, W], c [B, cond_dim]) -> [B, C, H, W]``.
    """

    def __init__(self, num_features: int, cond_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.num_features, self.cond_dim = int(num_features), int(cond_dim)

        def mlp() -> nn.Module:
            if hidden_dim is None:
                return nn.Linear(cond_dim, num_features)
            return nn.Sequential(nn.Linear(cond_dim, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, num_features))

        self.gamma, self.beta = mlp(), mlp()
        for net in (self.gamma, self.beta):
            last = net if isinstance(net, nn.Linear) else net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma = 1 + self.gamma(c)
        return x * gamma[:, :, None, None] + self.beta(c)[:, :, None, None]


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift come from the condition: ``BN(x) * gamma(c) + beta(c)``
    (de Vries et al. 2017; Miyato & Koyama 2018).

    Args:
        num_features (int): channels of ``x``.
        cond_dim (int): size of the condition vector ``c``.
        hidden_dim (int | None): see :class:`ConditionalAffine`. Default: None (linear).
        eps (float), momentum (float): BatchNorm's. Defaults: 1e-5, 0.1.

    ``forward(x [B, C, H, W], c [B, cond_dim]) -> [B, C, H, W]``.
    """

    def __init__(self, num_features: int, cond_dim: int, hidden_dim: int | None = None, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.affine = ConditionalAffine(num_features, cond_dim, hidden_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.affine(self.norm(x), c)


class FusionBlock(nn.Module):
    """DF-GAN's upsampling block with deep text-image fusion (Tao et al. 2022, the generator's ``G_Block``).

    ``h = conv2(fuse2(conv1(fuse1(up(x), c)), c))`` and the output is ``shortcut(up(x)) + h``, where each
    ``fuse`` is ``affine -> LeakyReLU(0.2) -> affine -> LeakyReLU(0.2)`` (two stacked :class:`ConditionalAffine`
    with MLPs, so the condition acts four times per block, without normalisation) and ``shortcut`` a 1x1
    convolution when the channel count changes.

    Args:
        in_channels (int): channels of ``x``.
        out_channels (int): channels of the output.
        cond_dim (int): size of the condition vector.
        hidden_dim (int): hidden width of the affine MLPs. Default: 256 (DF-GAN's).
        upsample (bool): double the resolution first (nearest neighbour). Default: True.

    ``forward(x [B, in, H, W], c [B, cond_dim]) -> [B, out, 2H, 2W]`` (``[B, out, H, W]`` without upsampling).
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, hidden_dim: int = 256,
                 upsample: bool = True) -> None:
        super().__init__()
        self.upsample = bool(upsample)
        self.fuse1 = nn.ModuleList([ConditionalAffine(in_channels, cond_dim, hidden_dim) for _ in range(2)])
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.fuse2 = nn.ModuleList([ConditionalAffine(out_channels, cond_dim, hidden_dim) for _ in range(2)])
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    @staticmethod
    def _fuse(x: torch.Tensor, c: torch.Tensor, affines: nn.ModuleList) -> torch.Tensor:
        for affine in affines:
            x = F.leaky_relu(affine(x, c), 0.2)
        return x

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(self._fuse(x, c, self.fuse1))
        h = self.conv2(self._fuse(h, c, self.fuse2))
        return self.shortcut(x) + h


class Augmented(NamedTuple):
    """What :class:`ConditioningAugmentation` returns: the sampled vector and the Gaussian it came from."""

    c: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class ConditioningAugmentation(nn.Module):
    """Conditioning augmentation (Zhang et al., StackGAN, ICCV 2017): ``c_hat = mu(t) + sigma(t) * eps``,
    ``eps ~ N(0, I)``, with ``(mu, log sigma^2) = Linear(t)``.

    Sampling around the text vector smooths the conditioning manifold, so that few captions still give a
    generator a dense set of conditions; the KL divergence of ``N(mu, sigma^2)`` from ``N(0, I)`` (a loss term)
    keeps the Gaussians from collapsing to points. StackGAN applies a ReLU before the split; here ``mu`` and
    ``log sigma^2`` are linear, so the mean can take any sign.

    Args:
        cond_dim (int): size of the input vector ``t``.
        out_dim (int): size of ``c_hat``. Default: 128 (StackGAN's).

    ``forward(t [B, cond_dim], noise=None) -> Augmented(c, mu, logvar)``, each ``[B, out_dim]``. ``noise`` is
    ``eps`` (``[B, out_dim]``); None draws it from the global torch RNG (training).
    """

    def __init__(self, cond_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.cond_dim, self.out_dim = int(cond_dim), int(out_dim)
        self.fc = nn.Linear(cond_dim, 2 * out_dim)

    def forward(self, t: torch.Tensor, noise: torch.Tensor | None = None) -> Augmented:
        mu, logvar = self.fc(t).chunk(2, dim=1)
        if noise is None:
            noise = torch.randn_like(mu)
        elif noise.shape != mu.shape:
            raise ValueError(f"ConditioningAugmentation: noise {tuple(noise.shape)} must be {tuple(mu.shape)}")
        return Augmented(mu + torch.exp(0.5 * logvar) * noise.to(mu), mu, logvar)
