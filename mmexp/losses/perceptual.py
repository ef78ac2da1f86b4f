"""Perceptual loss: a learned perceptual distance between prediction and target, as a loss term.

The distance network is the metric suite's :class:`mmexp.metrics.restoration.PerceptualDistance`
(one implementation for the metric and the loss), frozen.

By default it is Shift-Tolerant LPIPS (Ghildyal & Liu, "Shift-tolerant Perceptual Similarity
Metric", ECCV 2022), whose weights ship with the ``stlpips-pytorch`` package
(``weights/vST0.0/{alex,vgg}_shift_tolerant.pth``, 9.9 MB / 59 MB): an anti-aliased AlexNet or
VGG-16 trunk **and** the LPIPS linear heads, both trained from scratch (the authors' ``train.py
--from_scratch --train_trunk``) on BAPPS' two-alternative forced-choice human judgements of
64x64 patch distortions (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018). **The trunk is not ImageNet-trained**: its features are not the
ImageNet-classifier VGG features of the perceptual losses of Johnson et al. 2016 / ESRGAN, and
numbers from such papers' perceptual terms are not comparable. ``kind="lpips"`` uses the original
LPIPS (torchvision's ImageNet-trained trunk + LPIPS v0.1 heads) when torchvision's weights are in
the torch hub cache.
"""

from __future__ import annotations

from typing import Any

import torch

from mmexp.errors import ConfigError
from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


class PerceptualLoss(LossTerm):
    """Mean perceptual distance between ``pred`` and ``target`` (images in [-1, 1], 1 or 3
    channels; grey images are repeated to RGB).

    Args:
        weight (float): weight of the term. Default: 1.0.
        kind (str): ``"st_lpips"`` (bundled weights, not ImageNet-trained; see the module
            docstring) or ``"lpips"`` (needs torchvision's ImageNet backbone in the hub cache).
            No ``"auto"``: a loss must not change with what a machine has cached. Default:
            ``"st_lpips"``.
        net (str): the trunk, ``"alex"`` or ``"vgg"``. Default: ``"alex"``.

    The network is frozen and stays in eval mode (its LPIPS heads have dropout) whatever mode
    the model is in. Its weights are not put in checkpoints (they come from the installed
    package); a loaded state dict without them keeps the current ones.
    """

    def __init__(self, weight: float = 1.0, kind: str = "st_lpips", net: str = "alex") -> None:
        super().__init__(weight)
        if kind not in ("st_lpips", "lpips"):
            raise ConfigError(f"PerceptualLoss: kind must be 'st_lpips' or 'lpips', got {kind!r}")
        from mmexp.metrics.restoration import PerceptualDistance

        self.distance = PerceptualDistance(kind, net)
        self.distance.requires_grad_(False)
        self.distance.eval()
        self.register_state_dict_post_hook(_drop_distance)
        self.register_load_state_dict_pre_hook(_keep_distance)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.distance.eval()
        return self

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"PerceptualLoss: pred {tuple(pred.shape)} and target "
                             f"{tuple(target.shape)} must have the same shape")
        return self.distance(pred, target).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.distance.name!r}, net={self.distance.net_name!r}"


def _drop_distance(module: PerceptualLoss, state_dict: dict[str, Any], prefix: str,
                   local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "distance.")]:
        del state_dict[key]


def _keep_distance(module: PerceptualLoss, state_dict: dict[str, Any], prefix: str,
                   local_metadata: Any, strict: bool, missing_keys: list, unexpected_keys: list,
                   error_msgs: list) -> None:
    for key, value in module.distance.state_dict(prefix=prefix + "distance.").items():
        state_dict.setdefault(key, value)
