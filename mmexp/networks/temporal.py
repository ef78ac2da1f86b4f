"""A temporal-convolution multi-frame super-resolution network: a window of low-resolution frames -> the
high-resolution centre frame.

Time is fused by 3-D convolutions over ``(T, H, W)``, in one of the two ways the video-SR literature compares:

- early fusion (Kappeler et al., "Video Super-Resolution With Convolutional Neural Networks", IEEE TCI 2016,
  their architecture (b); Karpathy et al., CVPR 2014): one ``(T, 3, 3)`` convolution reads every frame at once;
- slow fusion (Kappeler et al.'s architecture (c); Jo et al., "Deep Video Super-Resolution Network Using
  Dynamic Upsampling Filters Without Explicit Motion Compensation", CVPR 2018, whose 3-D convolutions shrink
  the temporal axis without padding): per-frame ``(1, 3, 3)`` features, then ``(3, 3, 3)`` convolutions without
  temporal padding, each merging neighbouring frames and taking two frames off the window, until one is left.

No explicit motion compensation: the filters learn the (small) displacements between neighbouring frames.
After fusion a 2-D residual trunk predicts, at low resolution, the ``upscale ** 2`` sub-pixel values of every
output pixel, rearranged by one pixel shuffle (Shi et al., "ESPCN", CVPR 2016; DUF's residual branch does the
same): no convolution runs at high resolution, which keeps the network cheap on CPU. The output is the residual
over the bicubic upsampling of the centre frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.networks.srresnet import ResidualBlockNoBN, default_init

__all__ = ["TemporalConvSR", "check_clip"]


def check_clip(who: str, x: torch.Tensor, channels: int, num_frames: int | None) -> None:
    """Raise ShapeMismatchError unless ``x`` is ``[B, T, channels, h, w]`` with ``T == num_frames`` (any ``T``
    when ``num_frames`` is None)."""
    if x.dim() != 5 or x.shape[2] != channels:
        raise ShapeMismatchError(f"{who} restores clips [B, T, {channels}, h, w], got {tuple(x.shape)}")
    if num_frames is not None and x.shape[1] != num_frames:
        raise ShapeMismatchError(f"{who} reads windows of {num_frames} frames but got {x.shape[1]} frames "
                                 f"(input {tuple(x.shape)}): give it clips of {num_frames} frames "
                                 f"(data.dataset.num_frames={num_frames}) or build it for {x.shape[1]}")


class TemporalConvSR(nn.Module):
    """Multi-frame SR by temporal (3-D) convolutions: ``[B, T, C, h, w]`` -> the centre frame
    ``[B, C, h * upscale, w * upscale]``, as ``bicubic(x[:, T // 2]) + residual``.

    Args:
        in_channels (int): input channels. Default: 3.
        out_channels (int): output channels (must equal ``in_channels``: the bicubic skip). Default: 3.
        num_frames (int): ``T``, the window (odd: the output is its centre frame ``T // 2``). Default: 5.
        num_feat (int): feature channels. Default: 32.
        num_block (int): 2-D residual blocks after fusion. Default: 4.
        upscale (int): any integer >= 1. Default: 4.
        fusion (str): ``"slow"`` (per-frame features, then ``(T - 1) / 2`` temporal ``(3, 3, 3)``
            convolutions without temporal padding) or ``"early"`` (one ``(T, 3, 3)`` convolution on the
            frames). Default: ``"slow"``.

    Attributes read by :class:`mmexp.models.restoration.RestorationModel`: ``num_frames``, ``all_frames``
    (False: one output frame, the centre), ``upscale``, ``out_channels``. Any ``h, w`` (fully convolutional).
    """

    size_multiple = 1
    all_frames = False

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_frames: int = 5, num_feat: int = 32,
                 num_block: int = 4, upscale: int = 4, fusion: str = "slow") -> None:
        super().__init__()
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or num_frames % 2 == 0:
            raise ConfigError(f"TemporalConvSR: num_frames must be an odd positive integer (the output is the "
                              f"centre frame), got {num_frames!r}")
        if in_channels != out_channels:
            raise ConfigError(f"TemporalConvSR: in_channels={in_channels} != out_channels={out_channels} "
                              "(the bicubic skip adds the upsampled centre frame to the output)")
        if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
            raise ConfigError(f"TemporalConvSR: upscale must be a positive integer, got {upscale!r}")
        if fusion not in ("slow", "early"):
            raise ConfigError(f"TemporalConvSR: fusion must be 'slow' or 'early', got {fusion!r}")
        self.in_channels, self.out_channels, self.num_frames = int(in_channels), int(out_channels), num_frames
        self.upscale, self.fusion = int(upscale), fusion
        if fusion == "early":
            layers: list[nn.Module] = [nn.Conv3d(in_channels, num_feat, (num_frames, 3, 3), 1, (0, 1, 1)),
                                       nn.LeakyReLU(0.1)]
        else:
            layers = [nn.Conv3d(in_channels, num_feat, (1, 3, 3), 1, (0, 1, 1)), nn.LeakyReLU(0.1)]
            for _ in range((num_frames - 1) // 2):
                layers += [nn.Conv3d(num_feat, num_feat, (3, 3, 3), 1, (0, 1, 1)), nn.LeakyReLU(0.1)]
        self.fuse = nn.Sequential(*layers)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        self.conv_last = nn.Conv2d(num_feat, out_channels * upscale * upscale, 3, 1, 1)
        default_init(self.conv_last, 0.1)
        for m in self.fuse.modules():  # default_init knows only 2-D convolutions
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight)
                m.weight.data.mul_(0.1)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(type(self).__name__, x, self.in_channels, self.num_frames)
        feat = self.fuse(x.transpose(1, 2))[:, :, 0]  # [B, C, T, h, w] -> time fused to one frame
        out = self.body(feat) + feat
        out = F.pixel_shuffle(self.conv_last(out), self.upscale)
        centre = x[:, self.num_frames // 2]
        return out + F.interpolate(centre, scale_factor=self.upscale, mode="bicubic", align_corners=False)
