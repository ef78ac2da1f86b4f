"""Image grids for people to look at: samples, and prompt | images rows with the prompt written beside them."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images.detach().float() + 1) / 2).clamp(0, 1)


def grid(images: torch.Tensor, nrow: int, captions: Sequence[str] | None = None, scale: int | None = None,
         text_width: int = 260, padding: int = 2) -> torch.Tensor:
    """Images in [-1, 1] ``[N, C, H, W]`` -> a ``[3, H', W']`` grid in [0, 1], ``nrow`` images a row.

    With ``captions`` (one per row), each row gets its caption written to its left, wrapped to ``text_width``
    pixels, and small images are enlarged ``scale`` times (default: to at least 64 px) so the text and the images
    read at the same size.
    """
    images = to_unit(images).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if not captions:
        return make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    rows = (len(images) + nrow - 1) // nrow
    if len(captions) != rows:
        raise ValueError(f"{len(captions)} captions for {rows} rows of {nrow} images")
    side = images.shape[-1]
    scale = scale or max(1, -(-64 // side))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    body = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    cell = images.shape[-2] + padding
    font = ImageFont.load_default(size=11)
    canvas = Image.new("RGB", (text_width + body.shape[-1], body.shape[-2]), "white")
    canvas.paste(Image.fromarray((body.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)), (text_width, 0))
    draw = ImageDraw.Draw(canvas)
    chars = max(8, text_width // 6)
    for r, caption in enumerate(captions):
        lines = textwrap.wrap(str(caption), chars)[: max(1, (cell - 4) // 12)]
        y = padding + r * cell + max(0, (cell - 12 * len(lines)) // 2)
        for line in lines:
            draw.text((4, y), line, fill=(20, 20, 20), font=font)
            y += 12
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)


def save_grid(grid_image: torch.Tensor, path: str | os.PathLike) -> str:
    """A ``[3, H, W]`` grid in [0, 1] to a PNG file (directories created)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    array = (grid_image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return path
