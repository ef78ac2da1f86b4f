"""A temporal-convolution multi-frame super-resolution network: a window of low-resolution frames -> the
high-resolution centre frame.

Time is fused by 3-D convolutions over ``(T, H, W)``, in one of the two ways the video-SR literature compares:

- early fusion (Kappeler et al., "Video Super-Resolution With Convolutional Neural Networks", IEEE TCI 2016,
  their architecture (b); Karpathy et al., CVPR 2014): the first layer reads every frame at once, a
  ``(T, 3, 3)`` convolution added to the single-frame first convolution of the centre frame;
- slow fusion (Kappeler et al.'s architecture (c); Jo et al., "Deep Video Super-Resolution Network Using
  Dynamic Upsampling Filters Without Explicit Motion Compensation", CVPR 2018, whose 3-D convolutions shrink
  the temporal axis without padding): per-frame features, then ``(3, 3, 3)`` convolutions without temporal
  padding, each merging neighbouring frames and taking two frames off the window, until one is left; each
  is a residual over the centre of its input window.

No explicit motion compensation: the filters learn the (small) displacements between neighbouring frames.
After fusion the network is MSRResNet (:class:`mmexp.networks.srresnet.MSRResNet`, whose weights it has under
the same names): its residual trunk, its high-resolution tail (pixel shuffle x2 x2, convolutions at the output
resolution) and its bilinear skip, here over the centre frame. With the fusion convolutions at zero it *is*
MSRResNet on the centre frame, so the two differ only by what the neighbouring frames add, and an MSRResNet
checkpoint initialises it (``init_from``; only ``fuse.*`` missing). An earlier version upsampled in one
low-resolution pixel shuffle (ESPCN-style, no convolution at high resolution): cheaper, but it lost to the
single-frame MSRResNet trained with the same budget (experiments/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.networks.srresnet import MSRResNet

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


def _init_3d(conv: nn.Conv3d, scale: float = 0.1) -> None:
    # default_init's Kaiming x 0.1 for 3-D convolutions: each fusion branch starts near zero, so the network
    # starts near MSRResNet on the centre frame and learns what the neighbours add
    nn.init.kaiming_normal_(conv.weight)
    conv.weight.data.mul_(scale)
    nn.init.zeros_(conv.bias)


class TemporalConvSR(MSRResNet):
    """Multi-frame SR by temporal (3-D) convolutions: ``[B, T, C, h, w]`` -> the centre frame
    ``[B, C, h * upscale, w * upscale]``, MSRResNet's trunk and tail on the fused features, plus the bilinear
    upsampling of the centre frame ``x[:, T // 2]``.

    Args:
        in_channels (int): input channels. Default: 3.
        out_channels (int): output channels (must equal ``in_channels``: the bilinear skip). Default: 3.
        num_frames (int): ``T``, the window (odd: the output is its centre frame ``T // 2``). Default: 5.
        num_feat (int): feature channels. Default: 32.
        num_block (int): residual blocks after fusion. Default: 4.
        upscale (int): 2, 3 or 4 (MSRResNet's tail: 4 = two x2 pixel-shuffle stages). Default: 4.
        fusion (str): ``"slow"`` (MSRResNet's first convolution on every frame, then ``(T - 1) / 2`` residual
            temporal ``(3, 3, 3)`` convolutions without temporal padding) or ``"early"`` (a ``(T, 3, 3)``
            convolution on the frames added to the first convolution of the centre frame). Default: ``"slow"``.

    Attributes read by :class:`mmexp.models.restoration.RestorationModel`: ``num_frames``, ``all_frames``
    (False: one output frame, the centre), ``upscale``, ``out_channels``. Any ``h, w`` (fully convolutional).
    """

    size_multiple = 1
    all_frames = False

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_frames: int = 5, num_feat: int = 32,
                 num_block: int = 4, upscale: int = 4, fusion: str = "slow") -> None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or num_frames % 2 == 0:
            raise ConfigError(f"TemporalConvSR: num_frames must be an odd positive integer (the output is the "
                              f"centre frame), got {num_frames!r}")
        if fusion not in ("slow", "early"):
            raise ConfigError(f"TemporalConvSR: fusion must be 'slow' or 'early', got {fusion!r}")
        super().__init__(in_channels, out_channels, num_feat=num_feat, num_block=num_block, upscale=upscale)
        self.num_frames, self.fusion = num_frames, fusion
        if fusion == "early":
            self.fuse = nn.ModuleList([nn.Conv3d(in_channels, num_feat, (num_frames, 3, 3), 1, (0, 1, 1))])
        else:
            self.fuse = nn.ModuleList(nn.Conv3d(num_feat, num_feat, (3, 3, 3), 1, (0, 1, 1))
                                      for _ in range((num_frames - 1) // 2))
        for conv in self.fuse:
            _init_3d(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(type(self).__name__, x, self.in_channels, self.num_frames)
        centre = x[:, self.num_frames // 2]
        if self.fusion == "early":
            feat = F.leaky_relu(self.conv_first(centre) + self.fuse[0](x.transpose(1, 2))[:, :, 0], 0.1)
        else:
            b, t, c, h, w = x.shape
            feat = F.leaky_relu(self.conv_first(x.reshape(b * t, c, h, w)), 0.1)
            feat = feat.view(b, t, -1, h, w).transpose(1, 2)  # [B, F, T, h, w]
            for conv in self.fuse:  # each: T -> T - 2, a residual over the centre T - 2 frames
                feat = feat[:, :, 1:-1] + F.leaky_relu(conv(feat), 0.1)
            feat = feat[:, :, 0]
        return self.reconstruct(feat, centre)
