"""Differentiable augmentation of the discriminator's inputs (DiffAugment, Zhao et al. 2020).

A GAN's discriminator trained on few images memorises them within a few epochs; its feedback to the
generator then stops being useful. DiffAugment applies the *same kind* of random, differentiable
transformation to real and generated images every time D sees them (in D's step and in G's step), so D
cannot tell real from fake by the augmentation and G's gradient flows through it. The policies follow
the paper's reference implementation (``color``: brightness, saturation, contrast; ``translation``:
shifts of up to 1/8 of the image with zero padding; ``cutout``: a zeroed square of half the image's
side), each drawn independently per image from the global torch RNG (so a resumed run draws the same).

Use it from a GAN config: ``model/augment=diffaugment`` (``conf/model/augment/diffaugment.yaml``), or
``model.augment.policy=[translation]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError

POLICIES = ("color", "translation", "cutout")


def _rand(x: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness (+[-0.5, 0.5]), saturation (x[0, 2]) and contrast (x[0.5, 1.5]) per image."""
    x = x + (_rand(x, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in each direction, zero-filled (a gather: differentiable)."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    # index into a one-pixel zero border: positions shifted out of the image read the border
    gy = torch.clamp(gy.unsqueeze(0) + dy + 1, 0, h + 1)
    gx = torch.clamp(gx.unsqueeze(0) + dx + 1, 0, w + 1)
    padded = nn.functional.pad(x, [1, 1, 1, 1])
    flat = padded.permute(0, 2, 3, 1)  # [B, H+2, W+2, C]
    out = flat[torch.arange(b, device=x.device)[:, None, None], gy, gx]
    return out.permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ``ratio`` of the image's side per image, centred anywhere in the image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    top, left = cy - ch // 2, cx - cw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_FUNCTIONS = {"color": color, "translation": translation, "cutout": cutout}


class DiffAugment(nn.Module):
    """Apply the ``policy``'s transformations, in order, to a batch ``[B, C, H, W]`` (any value range; the
    colour jitter assumes [-1, 1] images as the paper's code does).

    Args:
        policy: a subset of ``color``, ``translation``, ``cutout`` (list or comma-separated string).
            Default: all three (the paper's choice for few-shot data).
    """

    def __init__(self, policy: Sequence[str] | str = POLICIES) -> None:
        super().__init__()
        names = [s.strip() for s in (policy.split(",") if isinstance(policy, str) else policy) if s.strip()]
        unknown = [n for n in names if n not in _FUNCTIONS]
        if unknown:
            raise ConfigError(f"DiffAugment: unknown policy {unknown}; choose from {list(POLICIES)}")
        self.policy = tuple(names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ShapeMismatchError(f"DiffAugment expects images [B, C, H, W], got {tuple(x.shape)}")
        for name in self.policy:
            x = _FUNCTIONS[name](x)
        return x

    def extra_repr(self) -> str:
        return f"policy={list(self.policy)}"
