"""Pixel reconstruction losses: L1, L2 (MSE) and Charbonnier, with an optional per-pixel weight.

Each is ``forward(pred, target, pixel_weight=None)`` as BasicSR's ``basic_loss.py`` (there the
argument is ``weight``; here that name is the term's weight in the total): ``pred`` and
``target`` of equal shape ``[B, C, H, W]``; ``pixel_weight`` broadcastable to it (e.g. a mask
``[B, 1, H, W]``). Without a pixel weight the result is the mean over all elements; with one it is
the weighted mean ``sum(w * l) / sum(w)`` (``w`` broadcast to ``pred``'s shape), so a {0, 1} mask
gives the mean over the masked pixels (0 when the mask is empty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


def _check(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must have the same shape")


def weighted_mean(loss: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
    """Mean of the element-wise ``loss``, or its weighted mean under ``pixel_weight``."""
    if pixel_weight is None:
        return loss.mean()
    try:
        w = pixel_weight.to(loss.dtype).expand_as(loss)
    except RuntimeError:
        raise ValueError(f"pixel_weight of shape {tuple(pixel_weight.shape)} does not broadcast "
                         f"to the loss's shape {tuple(loss.shape)}") from None
    # an empty mask gives 0, not 0/0
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


class L1Loss(LossTerm):
    """Mean absolute error ``|pred - target|``.

    Args:
        weight (float): weight of the term. Default: 1.0.
        complement (bool): weigh by ``1 - pixel_weight`` instead: with an inpainting hole as the pixel weight,
            the L1 of the known pixels (the "valid" term beside the "hole" term of Liu et al., "Image Inpainting
            for Irregular Holes Using Partial Convolutions", ECCV 2018). Default: False.
    """

    def __init__(self, weight: float = 1.0, complement: bool = False) -> None:
        super().__init__(weight)
        self.complement = bool(complement)

    def forward(self, pred: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        _check(type(self).__name__, pred, target)
        if pixel_weight is None:
            return F.l1_loss(pred, target)
        return weighted_mean((pred - target).abs(), 1 - pixel_weight if self.complement else pixel_weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", complement=True" if self.complement else "")


class MSELoss(LossTerm):
    """Mean squared error ``(pred - target)^2`` (L2).

    Args:
        weight (float): weight of the term. Default: 1.0.
    """

    def forward(self, pred: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        _check(type(self).__name__, pred, target)
        if pixel_weight is None:
            return F.mse_loss(pred, target)
        return weighted_mean((pred - target).pow(2), pixel_weight)


class CharbonnierLoss(LossTerm):
    """Charbonnier loss ``sqrt((pred - target)^2 + eps^2)``, a differentiable L1 (Charbonnier et
    al. 1994; used for super-resolution by Lai et al., "LapSRN", CVPR 2017).

    Args:
        weight (float): weight of the term. Default: 1.0.
        eps (float): smoothing; the loss exceeds L1 by at most ``eps``. Default: 1e-3
            (LapSRN's). BasicSR's ``CharbonnierLoss(eps=1e-12)`` adds its eps unsquared:
            its eps is this one squared.
    """

    def __init__(self, weight: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__(weight)
        self.eps = float(eps)

    def forward(self, pred: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> Tensor:
        _check(type(self).__name__, pred, target)
        return weighted_mean(torch.sqrt((pred - target).pow(2) + self.eps ** 2), pixel_weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}"
