"""Optical flow for video restoration: backward warping by a flow field, and a small SpyNet-style estimator.

Ranjan & Black, "Optical Flow Estimation using a Spatial Pyramid Network", CVPR 2017 (SpyNet): a coarse-to-fine
pyramid where each level's small CNN predicts the residual flow between the reference and the support frame
warped by the upsampled coarser flow.

SpyNet's pretrained weights (which BasicVSR loads and fine-tunes) are not available offline: :class:`SpyNetLite`
starts from scratch (its last layer at zero, so it starts with zero flow, i.e. no alignment) and learns from the
restoration loss of the network that contains it. Expect rougher flow than pretrained SpyNet's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError

__all__ = ["SpyNetLite", "flow_warp"]


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Backward warping: ``out[..., y, x] = x[..., y + flow_y, x + flow_x]`` (bilinear, ``grid_sample``).

    Args:
        x: ``[N, C, H, W]``.
        flow: ``[N, 2, H, W]`` in pixels, channel 0 horizontal (x), channel 1 vertical (y).
        padding_mode: where the flow points outside the image: ``"border"`` (nearest edge pixel, default),
            ``"zeros"`` or ``"reflection"`` (``grid_sample``'s modes).

    Zero flow is the identity and an integer flow moves pixels exactly (pixel centres are sampled with
    ``align_corners=True``).
    """
    if x.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[0] != x.shape[0] \
            or flow.shape[-2:] != x.shape[-2:]:
        raise ShapeMismatchError(f"flow_warp needs x [N, C, H, W] and flow [N, 2, H, W] of the same N, H, W; got "
                                 f"{tuple(x.shape)} and {tuple(flow.shape)}")
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=flow.dtype),
                            torch.arange(w, device=x.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


class _Level(nn.Sequential):
    def __init__(self, in_channels: int, channels: tuple[int, ...], kernel_size: int) -> None:
        layers: list[nn.Module] = []
        for c in channels:
            layers += [nn.Conv2d(in_channels, c, kernel_size, 1, kernel_size // 2), nn.ReLU()]
            in_channels = c
        last = nn.Conv2d(in_channels, 2, kernel_size, 1, kernel_size // 2)
        # zero flow at the start: trained from scratch, the recurrent network first learns without alignment
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(*layers, last)


class SpyNetLite(nn.Module):
    """A small SpyNet (Ranjan & Black, CVPR 2017), trained from scratch (no pretrained weights offline).

    ``forward(ref, supp)`` -> flow ``[N, 2, H, W]`` (pixels) such that ``flow_warp(supp, flow) ~ ref``.

    Args:
        in_channels (int): image channels. Default: 3.
        num_levels (int): pyramid levels (each halves the size, average pooling with ``ceil_mode``: any size).
            Default: 3 (SpyNet: 6, for full-size frames; low-resolution SR inputs are small).
        channels (tuple[int, ...]): the hidden channels of each level's CNN. Default: ``(16, 32, 16)``
            (SpyNet: ``(32, 64, 32, 16)``).
        kernel_size (int): convolution size (SpyNet: 7). Default: 5.

    Levels do not share weights (as SpyNet). Inputs are used as given (mmexp's [-1, 1]).
    """

    def __init__(self, in_channels: int = 3, num_levels: int = 3, channels: tuple[int, ...] = (16, 32, 16),
                 kernel_size: int = 5) -> None:
        super().__init__()
        if num_levels < 1:
            raise ConfigError(f"SpyNetLite: num_levels must be >= 1, got {num_levels}")
        self.in_channels, self.num_levels = int(in_channels), int(num_levels)
        self.levels = nn.ModuleList(_Level(2 * in_channels + 2, tuple(channels), kernel_size)
                                    for _ in range(num_levels))

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        if ref.shape != supp.shape or ref.dim() != 4:
            raise ShapeMismatchError(f"SpyNetLite needs two [N, C, H, W] images of one shape, got "
                                     f"{tuple(ref.shape)} and {tuple(supp.shape)}")
        pyramid = [(ref, supp)]
        for _ in range(self.num_levels - 1):
            r, s = pyramid[-1]
            pyramid.append((F.avg_pool2d(r, 2, ceil_mode=True), F.avg_pool2d(s, 2, ceil_mode=True)))
        flow = ref.new_zeros(ref.shape[0], 2, *pyramid[-1][0].shape[-2:])
        for level, (r, s) in zip(self.levels, reversed(pyramid)):
            if flow.shape[-2:] != r.shape[-2:]:
                # flow in pixels: its values scale with the size
                sy, sx = r.shape[-2] / flow.shape[-2], r.shape[-1] / flow.shape[-1]
                flow = F.interpolate(flow, size=r.shape[-2:], mode="bilinear", align_corners=False)
                flow = flow * flow.new_tensor([sx, sy]).view(1, 2, 1, 1)
            flow = flow + level(torch.cat([r, flow_warp(s, flow), flow], dim=1))
        return flow
