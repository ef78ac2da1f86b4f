"""BasicVSR: bidirectional recurrent propagation with flow-aligned features.

Chan, Wang, Yu, Dong & Loy, "BasicVSR: The Search for Essential Components in Video Super-Resolution and
Beyond", CVPR 2021. Two recurrent branches run over the clip, one backward (last frame to first) and one
forward; at every step the previous hidden state is warped onto the current frame by the optical flow between
the two low-resolution frames (:func:`mmexp.networks.flow.flow_warp`), concatenated with the frame and refined
by residual blocks. The two states of each frame are fused, upsampled by pixel shuffle and added to the
bicubic upsampling of the frame.

The flow network is :class:`mmexp.networks.flow.SpyNetLite`, trained with BasicVSR from scratch: SpyNet's
pretrained weights (which BasicVSR loads) are not available offline. Its last layer starts at zero, so training
starts with unaligned propagation and learns alignment from the SR loss alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError
from mmexp.networks.flow import SpyNetLite, flow_warp
from mmexp.networks.srresnet import ResidualBlockNoBN, default_init
from mmexp.networks.temporal import check_clip

__all__ = ["BasicVSR", "PixelShuffleUpsampler"]


class PixelShuffleUpsampler(nn.Sequential):
    """``conv -> pixel shuffle -> leaky ReLU`` stages: x2 once for 2, twice for 4, x3 once for 3.

    Args:
        num_feat (int): channels in and out. Default: 64.
        scale (int): 2, 3 or 4. Default: 4.
    """

    def __init__(self, num_feat: int = 64, scale: int = 4) -> None:
        if scale not in (2, 3, 4):
            raise ConfigError(f"PixelShuffleUpsampler: scale must be 2, 3 or 4, got {scale}")
        layers: list[nn.Module] = []
        for f in ([2, 2] if scale == 4 else [scale]):
            layers += [nn.Conv2d(num_feat, num_feat * f * f, 3, 1, 1), nn.PixelShuffle(f), nn.LeakyReLU(0.1)]
        super().__init__(*layers)


class _Propagation(nn.Sequential):
    """``[frame, warped state] -> state``: a conv, leaky ReLU and residual blocks (BasicVSR's
    ``ResidualBlocksWithInputConv``)."""

    def __init__(self, in_channels: int, num_feat: int, num_block: int) -> None:
        conv = nn.Conv2d(in_channels, num_feat, 3, 1, 1)
        default_init(conv, 0.1)
        super().__init__(conv, nn.LeakyReLU(0.1), *[ResidualBlockNoBN(num_feat) for _ in range(num_block)])


class BasicVSR(nn.Module):
    """Bidirectional recurrent video SR: ``[B, T, C, h, w]`` -> every frame ``[B, T, C, h * upscale, w * upscale]``.

    Args:
        in_channels (int): input channels. Default: 3.
        out_channels (int): output channels (must equal ``in_channels``: the bicubic skip). Default: 3.
        num_feat (int): channels of the hidden states. Default: 32 (BasicVSR: 64).
        num_block (int): residual blocks per propagation step. Default: 4 (BasicVSR: 30).
        upscale (int): 2, 3 or 4. Default: 4.
        spynet (dict | None): keyword arguments of :class:`~mmexp.networks.flow.SpyNetLite` (``num_levels``,
            ``channels``, ``kernel_size``). Default: None (its defaults).
        padding_mode (str): where the flow points outside the frame (see ``flow_warp``). Default: ``"border"``.

    Any number of frames ``T >= 1`` (``num_frames`` is None) and any ``h, w``. Every frame is output
    (``all_frames`` True): the recurrence gives each frame its estimate at no extra cost, and training on all of
    them gives ``T`` times the supervision per clip; a model scoring one frame per clip takes the centre
    (``T // 2``), the one with as much context on each side.
    """

    size_multiple = 1
    num_frames = None
    all_frames = True

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_feat: int = 32, num_block: int = 4,
                 upscale: int = 4, spynet: dict | None = None, padding_mode: str = "border") -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ConfigError(f"BasicVSR: in_channels={in_channels} != out_channels={out_channels} "
                              "(the bicubic skip adds the upsampled frame to the output)")
        self.in_channels, self.out_channels, self.upscale = int(in_channels), int(out_channels), int(upscale)
        self.num_feat, self.padding_mode = int(num_feat), padding_mode
        self.spynet = SpyNetLite(in_channels, **dict(spynet or {}))
        self.backward_trunk = _Propagation(in_channels + num_feat, num_feat, num_block)
        self.forward_trunk = _Propagation(in_channels + num_feat, num_feat, num_block)
        self.fusion = nn.Conv2d(2 * num_feat, num_feat, 1, 1, 0)
        self.upsample = PixelShuffleUpsampler(num_feat, upscale)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)
        for m in (self.fusion, self.upsample, self.conv_hr, self.conv_last):
            default_init(m, 0.1)

    def flows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(backward, forward)`` flows ``[B, T - 1, 2, h, w]``: ``backward[:, i]`` warps frame ``i + 1`` onto
        frame ``i``, ``forward[:, i]`` warps frame ``i`` onto frame ``i + 1``."""
        b, t, c, h, w = x.shape
        earlier, later = x[:, :-1].reshape(-1, c, h, w), x[:, 1:].reshape(-1, c, h, w)
        backward = self.spynet(earlier, later).view(b, t - 1, 2, h, w)
        forward = self.spynet(later, earlier).view(b, t - 1, 2, h, w)
        return backward, forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(type(self).__name__, x, self.in_channels, None)
        b, t, _, h, w = x.shape
        flows_backward, flows_forward = self.flows(x) if t > 1 else (None, None)
        state = x.new_zeros(b, self.num_feat, h, w)
        backward = []
        for i in range(t - 1, -1, -1):
            if i < t - 1:
                state = flow_warp(state, flows_backward[:, i], self.padding_mode)
            state = self.backward_trunk(torch.cat([x[:, i], state], dim=1))
            backward.append(state)
        backward.reverse()
        state = torch.zeros_like(state)
        out = []
        for i in range(t):
            if i > 0:
                state = flow_warp(state, flows_forward[:, i - 1], self.padding_mode)
            state = self.forward_trunk(torch.cat([x[:, i], state], dim=1))
            feat = F.leaky_relu(self.fusion(torch.cat([backward[i], state], dim=1)), 0.1)
            hr = self.conv_last(F.leaky_relu(self.conv_hr(self.upsample(feat)), 0.1))
            out.append(hr + F.interpolate(x[:, i], scale_factor=self.upscale, mode="bicubic", align_corners=False))
        return torch.stack(out, dim=1)
