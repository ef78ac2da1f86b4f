"""Inpainting network: a U-Net of gated convolutions, optionally with fast Fourier convolutions in the bottleneck
and text conditioning (FiLM) on the decoder.

- Gated convolution (Yu et al., "Free-Form Image Inpainting with Gated Convolution", ICCV 2019, DeepFill v2):
  every layer learns a soft, per-channel and per-pixel gate ``sigmoid(conv_g(x))`` that multiplies its features
  ``act(conv_f(x))``, so the network learns where the known pixels end instead of being told by a fixed mask rule
  (partial convolutions, Liu et al. ECCV 2018).
- Fast Fourier convolution residual blocks (Chi et al., "Fast Fourier Convolution", NeurIPS 2020, as used by
  Suvorov et al., "Resolution-robust Large Mask Inpainting with Fourier Convolutions", WACV 2022, LaMa): part of
  the channels is convolved in the frequency domain (a 1x1 convolution on the real FFT), so one layer sees the
  whole image, which large holes need and a small U-Net's receptive field does not give.
- Text: a :class:`mmexp.conditioning.Conditioner` turns captions into a pooled vector that modulates every
  decoder level by FiLM (Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018;
  :class:`mmexp.networks.modulation.ConditionalAffine`); the encoder sees pixels only, the decoder is told what
  to paint.

- Pull-push prefill (Gortler et al., "The Lumigraph", SIGGRAPH 1996, its "pull-push" algorithm): the hole is
  first filled by a parameter-free, differentiable multi-scale interpolation of the known pixels
  (:func:`pull_push_fill`), and the network learns a residual over that fill (its last layer starts at zero),
  as SR networks learn a residual over bicubic. A network from scratch spends its first thousands of steps
  learning to paint flat local colour; this one starts from a smooth fill and learns the rest.

The network knows nothing of training: :class:`mmexp.models.restoration.RestorationModel` (``inpainting:
true``) composites the known pixels back exactly and weighs the losses by the hole.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.conditioning import Conditioner
from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.networks.modulation import ConditionalAffine


def pull_push_fill(image: torch.Tensor, known: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """Fill the unknown pixels of ``image`` by pull-push interpolation (Gortler et al. 1996); known pixels are
    returned unchanged.

    Pull: a pyramid of 2x2 means of ``image * known`` and of ``known`` (odd sides padded with unknown pixels)
    down to 1 pixel. Push: from the coarsest level, each finer level takes its own normalised mean where enough
    of its block is known and the upsampled (bilinear) coarser estimate elsewhere, blended by
    ``alpha = clamp(gain * coverage, 0, 1)``; at full size coverage is 0 or 1, so known pixels are exact.
    Differentiable, parameter-free, O(HW).

    Args:
        image (Tensor): ``[B, C, H, W]``.
        known (Tensor): ``[B, 1, H, W]`` (or ``[B, C, H, W]``), 1 = known pixel, 0 = to fill.
        gain (float): coverage at which a coarse block's own mean is trusted fully is ``1 / gain``. Default: 4
            (a quarter of its pixels known).

    An image without any known pixel is filled with zeros (the middle of [-1, 1]).
    """
    if image.dim() != 4 or known.dim() != 4 or known.shape[-2:] != image.shape[-2:]:
        raise ShapeMismatchError(f"pull_push_fill: image {tuple(image.shape)} and known {tuple(known.shape)} must "
                                 "be [B, C, H, W] and [B, 1, H, W] of one size")
    known = known.to(image.dtype)
    values, weights = [image * known], [known]
    while max(values[-1].shape[-2:]) > 1:
        v, w = values[-1], weights[-1]
        pad = (0, v.shape[-1] % 2, 0, v.shape[-2] % 2)
        values.append(F.avg_pool2d(F.pad(v, pad), 2))
        weights.append(F.avg_pool2d(F.pad(w, pad), 2))
    eps = 1e-6
    fill = values[-1] / weights[-1].clamp_min(eps)
    for v, w in zip(values[-2::-1], weights[-2::-1]):
        coarse = F.interpolate(fill, size=v.shape[-2:], mode="bilinear", align_corners=False)
        alpha = (w * gain).clamp(0, 1)
        fill = alpha * (v / w.clamp_min(eps)) + (1 - alpha) * coarse
    return torch.where(known.expand_as(image) > 0.5, image, fill)


class GatedConv2d(nn.Module):
    """``act(conv_f(x)) * sigmoid(conv_g(x))`` (DeepFill v2's gated convolution).

    Both convolutions are one ``nn.Conv2d`` of ``2 * out_channels`` outputs split in halves.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels (and gate channels).
        kernel_size (int): square kernel. Default: 3.
        stride (int): 1, or 2 to halve the size. Default: 1.
        dilation (int): dilation (the padding keeps the size at stride 1). Default: 1.
        activation (bool): ELU on the features (DeepFill v2's choice); False for the output layer. Default: True.

    ``forward(x [B, in, H, W]) -> [B, out, ceil(H / stride), ceil(W / stride)]``; :meth:`gate` returns the gate
    alone (same shape, values in (0, 1)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, activation: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"GatedConv2d: stride must be 1 or 2, got {stride}")
        self.out_channels = int(out_channels)
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride,
                              padding=dilation * (kernel_size - 1) // 2, dilation=dilation)
        self.activation = nn.ELU() if activation else nn.Identity()

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature, gate = self.conv(x).split(self.out_channels, dim=1)
        return feature, torch.sigmoid(gate)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ``sigmoid(conv_g(x))`` in (0, 1), shaped like the output."""
        return self._halves(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature, gate = self._halves(x)
        return self.activation(feature) * gate


class FourierUnit(nn.Module):
    """Global branch of a fast Fourier convolution: real FFT over the image plane, a 1x1 convolution (+ ReLU)
    on the real and imaginary parts stacked as channels, inverse FFT (Chi et al. 2020; LaMa's ``FourierUnit``).

    Args:
        channels (int): input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # FFTs in float32: half precision FFTs need power-of-two sides and lose the small frequencies
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        z = torch.cat([spec.real, spec.imag], dim=1)
        z = F.relu(self.conv(z.to(self.conv.weight.dtype)))
        real, imag = z.float().chunk(2, dim=1)
        return torch.fft.irfft2(torch.complex(real, imag), s=(h, w), norm="ortho").to(x.dtype)


class FFC(nn.Module):
    """A fast Fourier convolution on ``[local | global]`` channels: local -> local by a 3x3 convolution, the
    cross terms by 3x3 convolutions, global -> global by a spectral transform (1x1 in, :class:`FourierUnit`,
    1x1 out, with the residual of the 1x1 input as LaMa's ``SpectralTransform``).

    Args:
        channels (int): all channels.
        ratio_global (float): fraction of them in the global part (LaMa: 0.75). Default: 0.75.
    """

    def __init__(self, channels: int, ratio_global: float = 0.75) -> None:
        super().__init__()
        g = int(round(channels * ratio_global))
        if not 0 < g < channels:
            raise ConfigError(f"FFC: ratio_global={ratio_global} of {channels} channels leaves no local or no "
                              "global channel; use a ratio in (0, 1) and more channels")
        self.local, self.global_ = channels - g, g
        self.l2l = nn.Conv2d(self.local, self.local, 3, padding=1, padding_mode="reflect")
        self.g2l = nn.Conv2d(g, self.local, 3, padding=1, padding_mode="reflect")
        self.l2g = nn.Conv2d(self.local, g, 3, padding=1, padding_mode="reflect")
        self.spectral_in = nn.Conv2d(g, g // 2 or 1, 1)
        self.fourier = FourierUnit(g // 2 or 1)
        self.spectral_out = nn.Conv2d(g // 2 or 1, g, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xl, xg = x.split((self.local, self.global_), dim=1)
        s = F.relu(self.spectral_in(xg))
        spectral = self.spectral_out(s + self.fourier(s))
        return torch.cat([self.l2l(xl) + self.g2l(xg), self.l2g(xl) + spectral], dim=1)


class FFCResBlock(nn.Module):
    """``x + FFC(act(FFC(x)))`` scaled at initialisation towards the identity (LaMa's ``FFCResnetBlock``, without
    its BatchNorm: inpainting batches on a CPU are small).

    Args:
        channels (int): channels.
        ratio_global (float): see :class:`FFC`. Default: 0.75.
    """

    def __init__(self, channels: int, ratio_global: float = 0.75) -> None:
        super().__init__()
        self.ffc1, self.ffc2 = FFC(channels, ratio_global), FFC(channels, ratio_global)
        for conv in (self.ffc2.l2l, self.ffc2.g2l, self.ffc2.l2g, self.ffc2.spectral_out):
            conv.weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffc2(F.elu(self.ffc1(x)))


class InpaintingUNet(nn.Module):
    """A U-Net of gated convolutions that fills holes (DeepFill v2's gated layers in a U-Net with skips, LaMa-style
    Fourier blocks or DeepFill's dilated gated convolutions in the bottleneck, optional text FiLM on the decoder).

    Input: the image with its hole blanked (the network blanks it itself, so whatever the hole's pixels hold,
    they are never seen) and the hole as a fourth channel. Encoder: a 5x5 gated convolution, then ``len(
    channels) - 1`` stride-2 gated convolutions (each followed by a 3x3 one); bottleneck: ``num_blocks``
    :class:`FFCResBlock` (``bottleneck="ffc"``) or dilated gated convolutions of dilation 2, 4, 8, 16, 2, ...
    (``"dilated"``); decoder: nearest x2 upsampling, concatenation with the encoder's features of that size,
    two gated 3x3 convolutions, each level modulated by the caption (``conditioner``); a last 3x3 convolution
    and ``tanh`` give the image in [-1, 1]. With ``prefill="pull_push"`` the network sees the pull-push fill
    (:func:`pull_push_fill`) instead of the blanked image, and its last convolution (zero at initialisation) is a
    residual added to that fill: it starts as the fill and learns what the fill misses (texture, edges).

    Args:
        in_channels (int): image channels. Default: 3.
        out_channels (int): output channels. Default: 3.
        channels (Sequence[int]): features at each scale, full size first (its length - 1 halvings). Default:
            (32, 64, 128).
        num_blocks (int): bottleneck blocks. Default: 4.
        bottleneck (str): ``ffc`` (LaMa's fast Fourier convolution residual blocks) or ``dilated`` (DeepFill's
            dilated gated convolutions). Default: ``ffc``.
        ratio_global (float): global channels of the Fourier blocks. Default: 0.75.
        conditioner (Conditioner | None): captions -> condition; its pooled vector modulates the decoder (FiLM).
            None: unconditioned (a caption given to ``forward`` is ignored). Default: None.
        prefill (str): ``none`` (the hole blanked to 0; output ``tanh(last)``) or ``pull_push`` (the hole
            pre-filled by :func:`pull_push_fill`; output ``fill + last``, ``last`` zero-initialised). Default:
            ``none``.

    ``forward(input [B, C, H, W], hole [B, 1, H, W], caption: list[str] | None = None) -> [B, C, H, W]``;
    ``H`` and ``W`` must be multiples of ``size_multiple = 2 ** (len(channels) - 1)`` (``task=restore`` pads).
    In training mode captions are dropped with the conditioner's ``p_drop_text`` (so the model also learns to
    inpaint without one); ``caption=None`` is the conditioner's null (unknown) caption.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, channels: Sequence[int] = (32, 64, 128),
                 num_blocks: int = 4, bottleneck: str = "ffc", ratio_global: float = 0.75,
                 conditioner: Conditioner | None = None, prefill: str = "none") -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if prefill not in ("none", "pull_push"):
            raise ConfigError(f"InpaintingUNet: prefill must be 'none' or 'pull_push', got {prefill!r}")
        self.prefill = prefill
        if not channels or min(channels) < 1:
            raise ConfigError(f"InpaintingUNet: channels must be a non-empty list of positive sizes, got {channels}")
        if bottleneck not in ("ffc", "dilated"):
            raise ConfigError(f"InpaintingUNet: bottleneck must be 'ffc' or 'dilated', got {bottleneck!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.size_multiple = 2 ** (len(channels) - 1)
        self.conditioner = conditioner
        self.first = GatedConv2d(in_channels + 1, channels[0], 5)
        self.down = nn.ModuleList(
            nn.Sequential(GatedConv2d(c_in, c_out, 3, stride=2), GatedConv2d(c_out, c_out, 3))
            for c_in, c_out in zip(channels[:-1], channels[1:]))
        c = channels[-1]
        if bottleneck == "ffc":
            self.middle = nn.Sequential(*[FFCResBlock(c, ratio_global) for _ in range(num_blocks)])
        else:
            dilations = [2 ** (1 + i % 4) for i in range(num_blocks)]
            self.middle = nn.Sequential(*[GatedConv2d(c, c, 3, dilation=d) for d in dilations])
        self.up = nn.ModuleList(
            nn.Sequential(GatedConv2d(c_deep + c_skip, c_skip, 3), GatedConv2d(c_skip, c_skip, 3))
            for c_deep, c_skip in zip(channels[:0:-1], channels[-2::-1]))
        self.film = None
        if conditioner is not None:
            # one FiLM per decoder level, the bottleneck's output included
            self.film = nn.ModuleList(ConditionalAffine(ch, conditioner.dim) for ch in channels[::-1])
        self.last = nn.Conv2d(channels[0], out_channels, 3, padding=1)
        if prefill == "pull_push":  # a residual over the fill: start as the fill
            nn.init.zeros_(self.last.weight)
            nn.init.zeros_(self.last.bias)

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Batch keys besides ``input``/``target``/``hole``: the caption when text-conditioned."""
        return self.conditioner.required_keys if self.conditioner is not None else ()

    def condition(self, caption: Sequence[str] | None, batch_size: int) -> torch.Tensor | None:
        """The pooled caption vector ``[B, dim]`` (None without a conditioner); captions dropped in training."""
        if self.conditioner is None:
            return None
        if caption is None:
            return self.conditioner(batch_size=batch_size).pooled
        drop = self.conditioner.sample_drop(len(caption))[0] if self.training else None
        return self.conditioner(list(caption), drop_text=drop).pooled

    def forward(self, input: torch.Tensor, hole: torch.Tensor, caption: Sequence[str] | None = None) -> torch.Tensor:
        b, c, h, w = input.shape
        if c != self.in_channels:
            raise ShapeMismatchError(f"InpaintingUNet takes {self.in_channels}-channel images, got {tuple(input.shape)}")
        if hole.shape != (b, 1, h, w):
            raise ShapeMismatchError(f"InpaintingUNet: hole {tuple(hole.shape)} for images {tuple(input.shape)}; "
                                     f"expected {(b, 1, h, w)}")
        if h % self.size_multiple or w % self.size_multiple:
            raise ShapeMismatchError(f"InpaintingUNet: sides {h}x{w} must be multiples of {self.size_multiple}")
        hole = hole.to(input.dtype)
        cond = self.condition(caption, b)
        if self.prefill == "pull_push":
            base = pull_push_fill(input, 1 - hole)
        else:
            base = input * (1 - hole)
        x = self.first(torch.cat([base, hole], dim=1))
        skips = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = self.middle(skips.pop())
        if self.film is not None:
            x = self.film[0](x, cond)
        for i, up in enumerate(self.up):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = up(torch.cat([x, skips.pop()], dim=1))
            if self.film is not None:
                x = self.film[i + 1](x, cond)
        if self.prefill == "pull_push":
            return base + self.last(x)
        return torch.tanh(self.last(x))
