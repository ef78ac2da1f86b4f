"""RRDBNet: the generator of ESRGAN.

Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks", ECCV Workshops 2018:
Residual-in-Residual Dense Blocks (RRDB) without BatchNorm, residual scaling 0.2, upsampling by nearest
interpolation + conv. Trained first with L1 (the PSNR-oriented "RRDB" model), then fine-tuned as the ESRGAN
generator from those weights (``init_from=CKPT``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError
from mmexp.networks.srresnet import default_init


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; ``x + 0.2 * conv5(...)`` (Zhang et al., "RDN", CVPR 2018).

    Args:
        num_feat (int): channels in and out. Default: 64.
        num_grow_ch (int): channels each conv adds to the dense concatenation. Default: 32.
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(num_feat + i * num_grow_ch, num_grow_ch if i < 4 else num_feat, 3, 1, 1) for i in range(5))
        default_init(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.convs[-1](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three :class:`ResidualDenseBlock` s, ``x + 0.2 * rdbs(x)``.

    Args:
        num_feat (int): channels. Default: 64.
        num_grow_ch (int): growth channels of the dense blocks. Default: 32.
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdbs = nn.Sequential(*[ResidualDenseBlock(num_feat, num_grow_ch) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdbs(x)


class RRDBNet(nn.Module):
    """ESRGAN generator: ``conv_first -> RRDB x num_block -> conv_body (+ skip) -> (nearest x2 + conv) x
    log2(upscale) -> conv_hr -> conv_last``.

    Args:
        in_channels (int): input channels. Default: 3.
        out_channels (int): output channels. Default: 3.
        num_feat (int): feature channels. Default: 64.
        num_block (int): RRDBs. Default: 23 (the paper's).
        num_grow_ch (int): growth channels of the dense blocks. Default: 32.
        upscale (int): 1, 2, 4 or 8, reached by x2 nearest-neighbour steps. Default: 4.

    BasicSR's x2/x1 models first pixel-unshuffle the input to run the body at a quarter of the pixels; this
    one runs the body at input resolution for every scale (the same network as the paper's x4).
    """

    size_multiple = 1

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32, upscale: int = 4) -> None:
        super().__init__()
        if upscale not in (1, 2, 4, 8):
            raise ConfigError(f"RRDBNet: upscale must be 1, 2, 4 or 8, got {upscale}")
        self.in_channels, self.out_channels, self.upscale = int(in_channels), int(out_channels), int(upscale)
        self.conv_first = nn.Conv2d(in_channels, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, 1, 1)
                                     for _ in range(self.upscale.bit_length() - 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.conv_up:
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
