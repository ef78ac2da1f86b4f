"""MSRResNet: the modified SRResNet of ESRGAN's PSNR-oriented baseline.

Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial Network", CVPR 2017
(SRResNet); modified as in Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks",
ECCV Workshops 2018: no BatchNorm in the residual blocks, residual scaling off, and the network learns the
residual over a bilinear upsampling of its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError


def default_init(module: nn.Module, scale: float = 1.0) -> None:
    """Kaiming-normal (fan-in) init of every conv/linear in ``module``, weights times ``scale``, biases 0.
    A small ``scale`` (0.1) starts residual branches near identity, as BasicSR's ``default_init_weights``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualBlockNoBN(nn.Module):
    """``x + res_scale * conv(relu(conv(x)))``, no BatchNorm (Lim et al., "EDSR", CVPRW 2017).

    Args:
        num_feat (int): channels. Default: 64.
        res_scale (float): scale of the residual branch. Default: 1.0.
    """

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = float(res_scale)
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        default_init(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    """Modified SRResNet: ``bilinear_up(x) + body(x)``, upsampled by pixel shuffle (Shi et al., CVPR 2016).

    Args:
        in_channels (int): input channels. Default: 3.
        out_channels (int): output channels. Default: 3.
        num_feat (int): feature channels. Default: 64.
        num_block (int): residual blocks. Default: 16.
        upscale (int): 2, 3 or 4 (4 = two x2 pixel-shuffle stages). Default: 4.

    Input ``[B, in_channels, h, w]``, output ``[B, out_channels, h * upscale, w * upscale]``, any ``h, w``
    (fully convolutional). The bilinear skip needs ``in_channels == out_channels``.
    """

    size_multiple = 1

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_feat: int = 64, num_block: int = 16,
                 upscale: int = 4) -> None:
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ConfigError(f"MSRResNet: upscale must be 2, 3 or 4, got {upscale}")
        if in_channels != out_channels:
            raise ConfigError(f"MSRResNet: in_channels={in_channels} != out_channels={out_channels} "
                              "(the bilinear skip adds the upsampled input to the output)")
        self.in_channels, self.out_channels, self.upscale = int(in_channels), int(out_channels), int(upscale)
        self.conv_first = nn.Conv2d(in_channels, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        factors = [2, 2] if upscale == 4 else [upscale]
        self.upsample = nn.ModuleList(nn.Conv2d(num_feat, num_feat * f * f, 3, 1, 1) for f in factors)
        self.factors = factors
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)
        for m in (self.conv_first, *self.upsample, self.conv_hr, self.conv_last):
            default_init(m, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(F.leaky_relu(self.conv_first(x), 0.1), x)

    def reconstruct(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``bilinear_up(x) + tail(body(feat))``: the residual trunk and the high-resolution tail (pixel shuffle,
        then convolutions at the output resolution) on features ``feat`` ``[B, num_feat, h, w]`` of the
        low-resolution image ``x`` ``[B, in_channels, h, w]``. Multi-frame networks
        (:class:`mmexp.networks.temporal.TemporalConvSR`) fuse a window of frames into ``feat`` and call this with
        the window's centre frame, so that they differ from this network only by their temporal fusion."""
        out = self.body(feat)
        for conv, f in zip(self.upsample, self.factors):
            out = F.leaky_relu(F.pixel_shuffle(conv(out), f), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        return out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
