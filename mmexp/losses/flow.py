"""Unsupervised training of a video network's optical flow: the photometric (warping) loss.

Jason, Harley & Derpanis, "Back to Basics: Unsupervised Learning of Optical Flow via Brightness Constancy and
Motion Smoothness", ECCV Workshops 2016; Meister, Hur & Roth, "UnFlow", AAAI 2018: a flow that warps the next
frame onto the current one should reproduce it (brightness constancy), and flow fields are mostly smooth.

Why here: BasicVSR aligns with a pretrained SpyNet; offline, :class:`~mmexp.networks.flow.SpyNetLite` starts from
scratch, and trained by the super-resolution loss alone it does not learn motion (on carphone after 1,500 steps of
``experiment=vsr_x4_video_cpu`` in its clean setting, ``degradation=bicubic_x4`` and videos only, its flow warps
the next low-resolution frame onto the current one *worse* than no flow at all: L1 0.046 against 0.022, OpenCV
Farneback 0.018). This term gives the flow network the signal pretraining would have given it, on the
low-resolution frames the network already reads. Measured at that budget it aligns carphone (L1 0.019 on the same
frames, Farneback 0.018) but not bikes after training on bigbuckbunny (flow 0.05 px against Farneback's 0.63: L1
0.048, no flow 0.049), and the super-resolution is worse on both (PSNR-Y 27.72 vs 27.83 on carphone, 29.98 vs
30.23 on bikes): opt-in (``loss=l1_warp``).
"""

from __future__ import annotations

import torch
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.losses.base import LossTerm
from mmexp.networks.flow import flow_warp

Tensor = torch.Tensor

__all__ = ["WarpingLoss"]


class WarpingLoss(LossTerm):
    """Photometric L1 of the network's flows on its input clip, plus first-order flow smoothness.

    ``forward(input, network)``: ``input`` is the low-resolution clip ``[B, T, C, h, w]`` the network restores and
    ``network`` has ``flows(input) -> (backward, forward)``, each ``[B, T - 1, 2, h, w]`` in pixels, ``backward[:,
    i]`` warping frame ``i + 1`` onto frame ``i`` and ``forward[:, i]`` frame ``i`` onto frame ``i + 1``
    (:meth:`mmexp.networks.basicvsr.BasicVSR.flows`). The value is the mean over both directions of
    ``|warp(other frame, flow) - frame|`` plus ``smoothness`` times the mean absolute difference of
    neighbouring flow vectors (pixels). The flows are computed again (the flow network is small next to the
    recurrent trunks); only the flow network gets gradients from this term.

    Args:
        weight (float): weight of the term. Default: 1.0.
        smoothness (float): weight of the smoothness part inside the term. Default: 0.01.
        padding_mode (str): ``flow_warp``'s, where the flow points outside the frame. Default: ``"border"``.
    """

    def __init__(self, weight: float = 1.0, smoothness: float = 0.01, padding_mode: str = "border") -> None:
        super().__init__(weight)
        if smoothness < 0:
            raise ConfigError(f"WarpingLoss: smoothness must be >= 0, got {smoothness}")
        self.smoothness, self.padding_mode = float(smoothness), padding_mode

    def forward(self, input: Tensor, network: nn.Module) -> Tensor:
        if not callable(getattr(network, "flows", None)):
            raise ConfigError(f"WarpingLoss needs a network with flows(clip) (BasicVSR), got {type(network).__name__}")
        if input.dim() != 5 or input.shape[1] < 2:
            raise ShapeMismatchError(f"WarpingLoss needs clips [B, T >= 2, C, h, w], got {tuple(input.shape)}")
        b, t, c, h, w = input.shape
        backward, forward = network.flows(input)
        earlier, later = input[:, :-1].reshape(-1, c, h, w), input[:, 1:].reshape(-1, c, h, w)
        backward, forward = backward.reshape(-1, 2, h, w), forward.reshape(-1, 2, h, w)
        photometric = 0.5 * ((flow_warp(later, backward, self.padding_mode) - earlier).abs().mean()
                             + (flow_warp(earlier, forward, self.padding_mode) - later).abs().mean())
        if self.smoothness == 0:
            return photometric
        flows = torch.cat([backward, forward])
        smooth = (flows[..., 1:, :] - flows[..., :-1, :]).abs().mean() + (flows[..., 1:] - flows[..., :-1]).abs().mean()
        return photometric + self.smoothness * smooth

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, smoothness={self.smoothness:g}"
