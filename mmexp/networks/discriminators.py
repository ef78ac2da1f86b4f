"""Discriminators for image restoration GANs.

:class:`VGGStyleDiscriminator` is ESRGAN's (Wang et al., "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", ECCV Workshops 2018; after Ledig et al.'s SRGAN discriminator, CVPR 2017): ten
conv layers in five stride-2 stages with BatchNorm and LeakyReLU(0.2), then two linear layers to one logit.

:class:`PatchGANDiscriminator` is pix2pix's (Isola et al., "Image-to-Image Translation with Conditional
Adversarial Networks", CVPR 2017): a fully convolutional net whose every output logit judges one overlapping
patch (70x70 px with ``n_layers=3``); it can return its intermediate activations for pix2pixHD's feature
matching loss (Wang et al., "High-Resolution Image Synthesis and Semantic Manipulation with Conditional GANs",
CVPR 2018), whose multi-scale discriminator is :class:`MultiScaleDiscriminator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.networks.dcgan import dcgan_init

NORMS = ("batch", "instance", "none")


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


def patch_receptive_field(n_layers: int) -> int:
    """Side in px of the input patch one logit of :class:`PatchGANDiscriminator` sees: 4x4 convs, ``n_layers``
    of stride 2 then two of stride 1 (``n_layers=3``: 70, pix2pix's "70x70 PatchGAN"; 1: 16; 5: 286)."""
    rf = 1
    for stride in reversed([2] * n_layers + [1, 1]):
        rf = rf * stride + (4 - stride)
    return rf


class PatchGANDiscriminator(nn.Module):
    """pix2pix's PatchGAN (Isola et al. 2017): image ``[B, C, H, W]`` -> logit map ``[B, 1, H', W']``.

    ``n_layers`` stride-2 4x4 convs (channels ``base_channels * min(2^i, 8)``), one stride-1 4x4 conv, and a
    stride-1 4x4 conv to one channel, LeakyReLU(0.2) between them, normalisation on all but the first and the
    last (pix2pix's ``NLayerDiscriminator``). Each logit sees a :func:`patch_receptive_field` square: 70 px
    for ``n_layers=3``; ``H, W >= 2^n_layers * 4`` or so keep the map non-empty (32 px works with 3 layers).

    Args:
        in_channels (int): image channels. Default: 3.
        cond_channels (int): channels of a condition concatenated before the image (a conditional D, as
            pix2pix judges ``cat(A, B)``); the first conv sees ``cond_channels + in_channels``, and the model
            does the concatenation (``RestorationModel(conditional_discriminator=True)``). Default: 0.
        base_channels (int): channels of the first conv. Default: 64.
        n_layers (int): stride-2 convs, >= 1. Default: 3.
        norm (str): ``"batch"`` (pix2pix), ``"instance"`` (pix2pixHD, CycleGAN) or ``"none"``. Default: "batch".
        spectral_norm (bool): spectral normalisation of every conv (Miyato et al., ICLR 2018). Default: False.

    ``forward(x, return_features=False)``: logits, or ``(logits, features)`` with ``features`` the activations
    after each LeakyReLU (``n_layers + 1`` maps), for :class:`mmexp.losses.adversarial.FeatureMatchingLoss`.
    Weights start as N(0, 0.02) (pix2pix's init).
    """

    def __init__(self, in_channels: int = 3, cond_channels: int = 0, base_channels: int = 64, n_layers: int = 3,
                 norm: str = "batch", spectral_norm: bool = False) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"PatchGANDiscriminator: norm must be one of {NORMS}, got {norm!r}")
        if int(n_layers) < 1:
            raise ConfigError(f"PatchGANDiscriminator: n_layers must be >= 1, got {n_layers}")
        self.channels, self.cond_channels, self.n_layers = int(in_channels), int(cond_channels), int(n_layers)
        self.receptive_field = patch_receptive_field(self.n_layers)
        # a conv followed by a normalisation that subtracts the mean has no use for a bias (pix2pix's use_bias)
        bias = norm != "batch"

        def block(cin: int, cout: int, stride: int, normed: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride, 1, bias=bias or not normed)]
            if normed and norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            elif normed and norm == "instance":
                layers.append(nn.InstanceNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, True))
            return nn.Sequential(*layers)

        widths = [base_channels * min(2 ** i, 8) for i in range(self.n_layers + 1)]
        blocks = [block(self.cond_channels + self.channels, widths[0], 2, False)]
        blocks += [block(widths[i - 1], widths[i], 2, True) for i in range(1, self.n_layers)]
        blocks.append(block(widths[-2], widths[-1], 1, True))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(widths[-1], 1, 4, 1, 1)
        self.apply(dcgan_init)
        if spectral_norm:  # after init: the parametrisation keeps the initialised weight
            for m in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
                nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if x.shape[1] != self.cond_channels + self.channels:
            raise ShapeMismatchError(
                f"PatchGANDiscriminator takes {self.cond_channels} condition + {self.channels} image channels, got "
                f"{x.shape[1]} channels")
        features = []
        for blk in self.blocks:
            x = blk(x)
            features.append(x)
        logits = self.head(x)
        return (logits, features) if return_features else logits


class MultiScaleDiscriminator(nn.Module):
    """pix2pixHD's multi-scale discriminator (Wang et al. 2018): ``num_scales`` PatchGANs of the same design,
    the ``k``-th judging the image average-pooled ``k`` times by 2 (3x3, stride 2, as pix2pixHD).

    Args:
        num_scales (int): discriminators, >= 1 (pix2pixHD: 2 or 3). Default: 2.
        **patchgan: the arguments of :class:`PatchGANDiscriminator` (``in_channels``, ``cond_channels``,
            ``base_channels``, ``n_layers``, ``norm``, ``spectral_norm``), the same for every scale.

    ``forward(x, return_features=False)`` returns the logits of every scale flattened and concatenated,
    ``[B, N]``, so the adversarial losses see one tensor; their mean then weighs each scale by its number of
    logits (pix2pixHD averages per scale, then sums over scales: the coarser scales count more there). The
    features are every scale's, in order.
    """

    def __init__(self, num_scales: int = 2, **patchgan) -> None:
        super().__init__()
        if int(num_scales) < 1:
            raise ConfigError(f"MultiScaleDiscriminator: num_scales must be >= 1, got {num_scales}")
        self.scales = nn.ModuleList(PatchGANDiscriminator(**patchgan) for _ in range(int(num_scales)))
        self.channels, self.cond_channels = self.scales[0].channels, self.scales[0].cond_channels

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        logits, features = [], []
        for k, d in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out, feats = d(x, return_features=True)
            logits.append(out.flatten(1))
            features += feats
        logits_cat = torch.cat(logits, 1)
        return (logits_cat, features) if return_features else logits_cat
