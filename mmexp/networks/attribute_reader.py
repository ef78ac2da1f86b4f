"""A small CNN that reads a shapes image's attributes: background, and per colour presence, shape, size, centre.

Colours are distinct within a shapes image (see :class:`mmexp.data.shapes.ShapesDataset`), so objects are keyed by
colour: one slot per colour says whether an object of that colour is there and, if so, its shape, size and centre.
That covers any number of objects and their positions (hence a caption's relations) without matching predicted
objects to true ones. Each slot attends over the image (a softmax over positions of a per-colour logit map) and
reads the attended features; its centre is the attention's expected position (soft-argmax), so where an object is
and what it is are read from the same place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ShapeMismatchError


class AttributeReaderNet(nn.Module):
    """Image -> attribute logits of a shapes image.

    Args:
        num_backgrounds (int): background colours. Default: 4.
        num_colors (int): object colours (one slot each). Default: 7.
        num_shapes (int): shape kinds. Default: 4.
        num_sizes (int): size names. Default: 2.
        width (int): feature channels. Default: 32.
        image_size (int): side the network reads (even, >= 16); other sizes are resized to it (bilinear,
            antialiased). Default: 32.

    ``forward(x)`` takes RGB images ``[B, 3, H, W]`` in [-1, 1] and returns a dict: ``background``
    ``[B, num_backgrounds]`` logits, ``present`` ``[B, num_colors]`` logits, ``shape`` ``[B, num_colors,
    num_shapes]`` and ``size`` ``[B, num_colors, num_sizes]`` logits, ``center`` ``[B, num_colors, 2]`` in [0, 1]
    (x right, y down, fractions of the side). Slots of absent colours carry no meaning.

    The trunk folds 2x2 pixels into channels (``pixel_unshuffle``, lossless) and runs four 3x3 convolutions at
    half resolution, the last two dilated, so each position sees the largest object whole.
    """

    def __init__(self, num_backgrounds: int = 4, num_colors: int = 7, num_shapes: int = 4, num_sizes: int = 2,
                 width: int = 32, image_size: int = 32) -> None:
        super().__init__()
        if image_size % 2 or image_size < 16:
            raise ShapeMismatchError(f"AttributeReaderNet needs an even image_size >= 16, got {image_size}")
        self.num_backgrounds, self.num_colors = num_backgrounds, num_colors
        self.num_shapes, self.num_sizes = num_shapes, num_sizes
        self.image_size = image_size
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(4 * 3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.SiLU(),
        )
        self.attend = nn.Conv2d(w, num_colors + num_backgrounds, 1)
        self.color_embedding = nn.Parameter(torch.zeros(num_colors, w))
        self.presence = nn.Sequential(nn.Linear(w + 1, w), nn.SiLU(), nn.Linear(w, 1))
        # shape and size from a full-resolution crop around the slot's centre; the colour enters as a bias of the
        # first convolution (which pixels are "this colour")
        self.crop_in = nn.Conv2d(3, w, 3, padding=1)
        self.crop_color = nn.Parameter(torch.zeros(num_colors, w))
        self.crop = nn.Sequential(
            nn.SiLU(), nn.Conv2d(w, w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * w, 2 * w), nn.SiLU(),
            nn.Linear(2 * w, num_shapes + num_sizes))
        half = image_size // 2
        # cell centres in fractions of the side
        ticks = (torch.arange(half, dtype=torch.float32) + 0.5) / half
        ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
        self.register_buffer("coords", torch.stack([xs.flatten(), ys.flatten()], dim=-1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ShapeMismatchError(f"AttributeReaderNet reads RGB images [B, 3, H, W], got {tuple(x.shape)}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        feats = self.trunk(F.pixel_unshuffle(x, 2))  # [B, w, h, h]
        logits = self.attend(feats).flatten(2)  # [B, colours + backgrounds, h*h]
        c = self.num_colors
        color_logits, background = logits[:, :c], logits[:, c:].mean(-1)
        attention = color_logits.softmax(-1)  # [B, colours, positions]
        pooled = torch.einsum("bkn,bwn->bkw", attention, feats.flatten(2)) + self.color_embedding
        peak = color_logits.amax(-1, keepdim=True)  # evidence that the colour is anywhere at all
        present = self.presence(torch.cat([pooled, peak], dim=-1))[..., 0]
        center = attention @ self.coords  # [B, colours, 2]
        out = self._read_crops(x, center.detach())
        s = self.num_shapes
        return {"background": background, "present": present, "shape": out[..., :s], "size": out[..., s:],
                "center": center}

    def _read_crops(self, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Shape and size logits ``[B, colours, shapes + sizes]`` from a window of half the side around each centre
        (the largest object fits it whole)."""
        b, c = center.shape[:2]
        theta = torch.zeros(b * c, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 0.5
        theta[:, :, 2] = center.reshape(-1, 2) * 2 - 1
        side = self.image_size // 2
        grid = F.affine_grid(theta, [b * c, 3, side, side], align_corners=False)
        crops = F.grid_sample(x.repeat_interleave(c, dim=0), grid, mode="bilinear", padding_mode="border",
                              align_corners=False)
        h = self.crop_in(crops) + self.crop_color.repeat(b, 1)[:, :, None, None]
        return self.crop(h).reshape(b, c, -1)
