"""Conditional GAN networks: a generator of ``(z, c)`` and two discriminators of ``(x, c)``, where ``c`` is a
condition vector (``Condition.pooled``: a class embedding, a sentence embedding, or their sum).

- :class:`ConditionalGenerator`: the DCGAN generator (Radford et al. 2016) with the condition concatenated to
  ``z`` and entering every upsampling block, either through conditional BatchNorm (Miyato & Koyama,
  "cGANs with Projection Discriminator", ICLR 2018; de Vries et al. 2017) or through DF-GAN's deep fusion
  blocks (Tao et al., "DF-GAN: A Simple and Effective Baseline for Text-to-Image Synthesis", CVPR 2022); with
  StackGAN's conditioning augmentation in front when ``augmentation_dim`` is set (Zhang et al., ICCV 2017).
  The label-conditioned GAN (``model=cgan``) and the text-conditioned GAN (``model=text_gan``) both use it.
- :class:`ProjectionDiscriminator`: ``f(x, c) = psi(phi(x)) + (V c)^T phi(x)`` on the DCGAN trunk (Miyato &
  Koyama 2018), spectrally normalised (Miyato et al., "Spectral Normalization for GANs", ICLR 2018).
- :class:`MatchingAwareDiscriminator`: the joint image-text head of Reed et al., "Generative Adversarial Text
  to Image Synthesis", ICML 2016: the compressed condition replicated over the last feature map,
  depth-concatenated, a 1x1 convolution and the final ``s x s`` convolution to one logit.

Supported image sizes are the DCGAN networks' (28, 32 and 64 px).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError
from mmexp.networks.dcgan import DCGANDiscriminator, dcgan_init, num_stages
from mmexp.networks.modulation import ConditionalBatchNorm2d, ConditioningAugmentation, FusionBlock

BLOCKS = ("cbn", "fusion")
POOLINGS = ("sum", "flatten")


class GeneratorOutput(NamedTuple):
    """Images in [-1, 1] and, with conditioning augmentation, the Gaussian the condition was drawn from
    (inputs of its KL term; None without augmentation)."""

    image: torch.Tensor
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None


class ConditionalGenerator(nn.Module):
    """``(z, c) -> image`` in [-1, 1]: a DCGAN generator conditioned in every block.

    Args:
        latent_dim (int): size of ``z``. Default: 128.
        cond_dim (int): size of the condition vector ``c``. Default: 128.
        channels (int): image channels (1 or 3). Default: 3.
        image_size (int): output side, 28, 32 or 64 px. Default: 32.
        base_channels (int): channels of the last hidden layer; earlier layers double it. Default: 64.
        block (str): how the condition enters each upsampling block: ``"cbn"``, DCGAN's transposed convolution
            followed by conditional BatchNorm and ReLU (Miyato & Koyama 2018); ``"fusion"``, DF-GAN's
            :class:`~mmexp.networks.modulation.FusionBlock` (nearest upsampling, 3x3 convolutions, four
            condition-driven affine transforms per block, no normalisation). Default: ``"cbn"``.
        augmentation_dim (int | None): StackGAN's conditioning augmentation to a vector of this size in front of
            the network (``c`` is then replaced by ``c_hat ~ N(mu(c), sigma(c)^2)``); None: ``c`` is used as
            it is. Default: None.
        hidden_dim (int | None): width of the MLPs that map the condition to each block's scale and shift; None:
            linear maps (cBN) or 256 (fusion, DF-GAN's). Default: None.

    The (augmented) condition is also concatenated to ``z`` at the input (as in conditional DCGANs and StackGAN),
    so it reaches the first feature map directly. Conv weights use the DCGAN init in ``"cbn"`` blocks and
    PyTorch's default in ``"fusion"`` blocks (as DF-GAN); the conditional scales and shifts start at 1 and 0.

    ``forward(z [B, latent_dim], c [B, cond_dim], noise=None) -> GeneratorOutput(image, mu, logvar)``; ``noise``
    (``[B, augmentation_dim]``) is the augmentation's ``eps`` (None: drawn from the global RNG). ``noise_dim``
    is its size (0 without augmentation).
    """

    def __init__(self, latent_dim: int = 128, cond_dim: int = 128, channels: int = 3, image_size: int = 32,
                 base_channels: int = 64, block: str = "cbn", augmentation_dim: int | None = None,
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"ConditionalGenerator: block must be one of {BLOCKS}, got {block!r}")
        self.latent_dim, self.cond_dim = int(latent_dim), int(cond_dim)
        self.channels, self.image_size, self.block = int(channels), int(image_size), block
        self.augmentation = ConditioningAugmentation(cond_dim, augmentation_dim) if augmentation_dim else None
        self.noise_dim = int(augmentation_dim or 0)
        cd = int(augmentation_dim or cond_dim)
        start, stages = num_stages(image_size, type(self).__name__)
        self.start = start
        ch = base_channels * 2 ** (stages - 1)
        if block == "cbn":
            self.input = nn.ConvTranspose2d(latent_dim + cd, ch, start, 1, 0, bias=False)
            self.norms = nn.ModuleList([ConditionalBatchNorm2d(ch, cd, hidden_dim)])
            self.ups = nn.ModuleList()
            for _ in range(stages - 1):
                self.ups.append(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False))
                self.norms.append(ConditionalBatchNorm2d(ch // 2, cd, hidden_dim))
                ch //= 2
            self.to_image = nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    dcgan_init(m)
        else:
            self.input = nn.Linear(latent_dim + cd, ch * start * start)
            self.ups = nn.ModuleList()
            for _ in range(stages):
                out = max(base_channels, ch // 2)
                self.ups.append(FusionBlock(ch, out, cd, hidden_dim or 256))
                ch = out
            self.to_image = nn.Conv2d(ch, channels, 3, 1, 1)
        self.base_channels = base_channels

    def forward(self, z: torch.Tensor, c: torch.Tensor, noise: torch.Tensor | None = None) -> GeneratorOutput:
        mu = logvar = None
        if self.augmentation is not None:
            c, mu, logvar = self.augmentation(c, noise)
        h = torch.cat([z.flatten(1), c], dim=1)
        if self.block == "cbn":
            h = F.relu(self.norms[0](self.input(h[:, :, None, None]), c))
            for up, norm in zip(self.ups, self.norms[1:]):
                h = F.relu(norm(up(h), c))
            image = torch.tanh(self.to_image(h))
        else:
            h = self.input(h).view(h.shape[0], -1, self.start, self.start)
            for up in self.ups:
                h = up(h, c)
            image = torch.tanh(self.to_image(F.leaky_relu(h, 0.2)))
        return GeneratorOutput(image, mu, logvar)


def _spectral_norm(*modules: nn.Module) -> None:
    for m in modules:
        nn.utils.parametrizations.spectral_norm(m)


class ProjectionDiscriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama, ICLR 2018): ``f(x, c) = psi(phi(x)) + (V c)^T phi(x)``.

    ``phi`` is the DCGAN discriminator's trunk and ``psi`` its head (:class:`~mmexp.networks.dcgan.DCGANDiscriminator`);
    ``V`` a linear map of the condition vector (for one-hot labels: the paper's class embedding ``y^T V``; here
    ``c`` is the conditioner's vector, a label embedding and/or a sentence embedding). The inner product rewards
    images whose features agree with the condition, which is how the discriminator tells "a real image of the
    wrong class" from a real one.

    Args:
        channels (int): image channels. Default: 3.
        image_size (int): 28, 32 or 64 px. Default: 32.
        base_channels (int): channels of the first conv layer; later ones double it. Default: 64.
        cond_dim (int): size of ``c``. Default: 128.
        spectral_norm (bool): spectral normalisation of every layer, ``V`` included (and no BatchNorm in the
            trunk), as in the paper. Default: True.
        pooling (str): ``phi(x)`` for the projection: ``"sum"``, the last feature map summed over positions
            (``[B, F]``, the paper's global sum pooling: position-invariant); ``"flatten"``, the whole map
            (``[B, F * s * s]``: the condition also weighs where features are). Default: ``"sum"``.

    ``forward(x [B, C, H, W], c [B, cond_dim]) -> logits [B]``.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, base_channels: int = 64, cond_dim: int = 128,
                 spectral_norm: bool = True, pooling: str = "sum") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"ProjectionDiscriminator: pooling must be one of {POOLINGS}, got {pooling!r}")
        self.channels, self.image_size, self.cond_dim, self.pooling = channels, image_size, int(cond_dim), pooling
        self.base = DCGANDiscriminator(channels, image_size, base_channels, spectral_norm)
        width = self.base.feature_channels if pooling == "sum" else self.base.feature_dim
        self.embed = nn.Linear(cond_dim, width, bias=False)
        dcgan_init(self.embed)
        if spectral_norm:
            _spectral_norm(self.embed)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.base.features(x)
        phi = h.sum((2, 3)) if self.pooling == "sum" else h.flatten(1)
        return self.base.head(h).flatten() + (self.embed(c) * phi).sum(1)


class MatchingAwareDiscriminator(nn.Module):
    """Discriminator with a joint image-text head (Reed et al., ICML 2016, GAN-CLS's ``D(x, phi(t))``).

    The DCGAN trunk maps the image to an ``s x s`` feature map (4x4 at 32/64 px); the condition is compressed
    (linear + LeakyReLU), replicated over the ``s x s`` positions and depth-concatenated; a 1x1 convolution with
    LeakyReLU mixes image and text, and an ``s x s`` convolution gives the logit. Trained with the
    matching-aware loss (real image + mismatching text = fake; ``mmexp.losses.matching``), it scores whether
    image and text belong together as well as whether the image is real.

    Args:
        channels (int): image channels. Default: 3.
        image_size (int): 28, 32 or 64 px. Default: 32.
        base_channels (int): channels of the first conv layer; later ones double it. Default: 64.
        cond_dim (int): size of ``c``. Default: 128.
        text_channels (int): size of the compressed condition. Default: 128 (Reed et al.'s).
        spectral_norm (bool): spectral normalisation of every layer (no BatchNorm in the trunk). Default: True.

    ``forward(x [B, C, H, W], c [B, cond_dim]) -> logits [B]``.
    """

    def __init__(self, channels: int = 3, image_size: int = 32, base_channels: int = 64, cond_dim: int = 128,
                 text_channels: int = 128, spectral_norm: bool = True) -> None:
        super().__init__()
        self.channels, self.image_size, self.cond_dim = channels, image_size, int(cond_dim)
        trunk = DCGANDiscriminator(channels, image_size, base_channels, spectral_norm)
        self.features = trunk.features
        width, self.size = trunk.feature_channels, trunk.feature_size
        self.text = nn.Linear(cond_dim, text_channels)
        self.joint = nn.Conv2d(width + text_channels, width, 1)
        self.head = nn.Conv2d(width, 1, self.size)
        for m in (self.text, self.joint, self.head):
            dcgan_init(m)
        if spectral_norm:
            _spectral_norm(self.text, self.joint, self.head)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        t = F.leaky_relu(self.text(c), 0.2)[:, :, None, None].expand(-1, -1, self.size, self.size)
        h = F.leaky_relu(self.joint(torch.cat([h, t], dim=1)), 0.2)
        return self.head(h).flatten()
