"""Image-to-image translation inputs (pix2pix, Isola et al. 2017): the input is another rendering of the scene,
not a damaged copy of it. :class:`EdgeMap` gives the image's Canny edges (pix2pix's edges -> photo),
:class:`ObjectMaskMap` the data's object mask (labels -> photo; the shapes dataset's ``mask``).

Both are deterministic (the seed is unused), keep the image's channels (the map is grey, repeated on every
channel, so the input | output | target preview and a conditional discriminator see images alike), and draw the
input dark-on-light as pix2pix's edges2shoes: 1 (white) background, -1 (black) edges or objects.
"""

from __future__ import annotations

import numpy as np
import torch

from mmexp.errors import ConfigError, ShapeMismatchError

from .base import Degradation, Sample, with_input

__all__ = ["EdgeMap", "ObjectMaskMap", "canny_edges"]


def canny_edges(image: torch.Tensor, low: float, high: float, blur: float) -> torch.Tensor:
    """Canny edges (OpenCV) of ``image [C, H, W]`` in [-1, 1]: ``[H, W]`` bool. The grey image (ITU-R 601 luma
    for RGB) is quantised to 8 bits, Gaussian-blurred with ``blur`` px of sigma (0: none) and thresholded
    with hysteresis at ``low`` / ``high`` (gradient magnitudes on the 0-255 scale)."""
    import cv2

    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    grey = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY) if x.shape[2] == 3 else x[..., 0]
    if blur > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), blur)
    return torch.from_numpy(cv2.Canny(np.ascontiguousarray(grey), low, high) > 0)


def _as_input(drawn: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A bool map ``[H, W]`` as a dark-on-light image shaped and placed as ``like`` ``[C, H, W]``."""
    x = torch.where(drawn, -1.0, 1.0).to(device=like.device, dtype=like.dtype)
    return x.expand_as(like).clone()


class EdgeMap(Degradation):
    """Edges -> image: the input is the image's Canny edges (Canny, PAMI 1986), black on white.

    Args:
        low (float): hysteresis low threshold (gradient magnitude, 0-255 scale). Default: 50.
        high (float): hysteresis high threshold. Default: 150.
        blur (float): sigma in px of a Gaussian blur before the edges (0: none; photos want ~1). Default: 0.
    """

    def __init__(self, low: float = 50.0, high: float = 150.0, blur: float = 0.0) -> None:
        if not 0 <= low <= high:
            raise ConfigError(f"EdgeMap: need 0 <= low <= high, got low={low}, high={high}")
        if blur < 0:
            raise ConfigError(f"EdgeMap: blur must be >= 0, got {blur}")
        self.low, self.high, self.blur = float(low), float(high), float(blur)

    def apply(self, sample: Sample, seed: int) -> Sample:
        x = sample.input
        return with_input(sample, torch.stack([_as_input(canny_edges(f, self.low, self.high, self.blur), f)
                                               for f in x]))


class ObjectMaskMap(Degradation):
    """Object mask -> image: the input is the data's object mask (``batch["mask"]``, 1 = object; the shapes
    dataset's), black objects on white; the model paints them.
    """

    required_keys = ("mask",)

    def apply(self, sample: Sample, seed: int) -> Sample:
        x, mask = sample.input, sample.extra["mask"]
        if tuple(mask.shape[-2:]) != tuple(x.shape[-2:]):
            raise ShapeMismatchError(f"ObjectMaskMap: the object mask is {tuple(mask.shape[-2:])}, the image "
                                     f"{tuple(x.shape[-2:])}")
        drawn = mask.reshape(mask.shape[-2:]) > 0.5
        return with_input(sample, torch.stack([_as_input(drawn, f) for f in x]))
