"""A small network that reads a shapes image's attributes: background, and per colour presence, shape, size, centre.

Colours are distinct within a shapes image (see :class:`mmexp.data.shapes.ShapesDataset`), so objects are keyed by
colour: one slot per colour says whether an object of that colour is there and, if so, its shape, size and centre.
That covers any number of objects and their positions (hence a caption's relations) without matching predicted
objects to true ones.

The network first labels every pixel with a background or object colour (a per-pixel classifier with a 3x3
receptive field: antialiased edges blend two colours, and generated colours drift, so a learned boundary beats
nearest-palette rules). Each colour's soft mask then gives its slot: the mask's mass is the object's area
(presence: at least ``min_area`` of the image), its centroid the centre, and its normalised central moments up to
the fourth order (scale-free: circle, square, diamond and triangle differ in kurtosis, cross-moment and skew) plus
its area and spread (size) feed a small MLP, shared by all slots, that names the shape and the size. Reading
geometry from moments rather than learning it from pixels keeps training to seconds on a CPU and makes the reader
indifferent to where an object is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ShapeMismatchError

_EPS = 1e-6
_NUM_FEATURES = 10


class AttributeReaderNet(nn.Module):
    """Image -> attribute logits of a shapes image.

    Args:
        num_backgrounds (int): background colours. Default: 4.
        num_colors (int): object colours (one slot each). Default: 7.
        num_shapes (int): shape kinds. Default: 4.
        num_sizes (int): size names. Default: 2.
        width (int): hidden channels of the pixel classifier and of the shape/size MLP. Default: 32.
        image_size (int): side the network reads (>= 8); other sizes are resized to it (bilinear,
            antialiased). Default: 32.
        min_area (float): mask area, as a fraction of the image, from which a colour counts as present (the
            smallest shapes object, a small triangle, covers ~0.028). Default: 0.012.

    ``forward(x)`` takes RGB images ``[B, 3, H, W]`` in [-1, 1] and returns a dict: ``pixels``
    ``[B, num_backgrounds + num_colors, H, W]`` per-pixel logits (backgrounds first), ``background``
    ``[B, num_backgrounds]`` logits, ``present`` ``[B, num_colors]`` logits (> 0: present), ``shape`` ``[B,
    num_colors, num_shapes]`` and ``size`` ``[B, num_colors, num_sizes]`` logits, ``center`` ``[B, num_colors, 2]``
    in [0, 1] (x right, y down, fractions of the side). Slots of absent colours carry no meaning.
    """

    def __init__(self, num_backgrounds: int = 4, num_colors: int = 7, num_shapes: int = 4, num_sizes: int = 2,
                 width: int = 32, image_size: int = 32, min_area: float = 0.012) -> None:
        super().__init__()
        if image_size < 8:
            raise ShapeMismatchError(f"AttributeReaderNet needs image_size >= 8, got {image_size}")
        self.num_backgrounds, self.num_colors = num_backgrounds, num_colors
        self.num_shapes, self.num_sizes = num_shapes, num_sizes
        self.image_size, self.min_area = image_size, float(min_area)
        w = width
        self.pixel = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 1), nn.SiLU(),
            nn.Conv2d(w, num_backgrounds + num_colors, 1),
        )
        self.head = nn.Sequential(
            nn.Linear(_NUM_FEATURES, 2 * w), nn.SiLU(), nn.Linear(2 * w, 2 * w), nn.SiLU(),
            nn.Linear(2 * w, num_shapes + num_sizes))
        # set from the training objects' features (see mmexp.metrics.faithfulness.AttributeReader)
        self.register_buffer("feature_mean", torch.zeros(_NUM_FEATURES))
        self.register_buffer("feature_std", torch.ones(_NUM_FEATURES))
        ticks = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
        ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
        self.register_buffer("xs", xs.flatten(), persistent=False)
        self.register_buffer("ys", ys.flatten(), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.read_pixels(x)
        logits = self.head((out.pop("features") - self.feature_mean) / self.feature_std)
        s = self.num_shapes
        return {**out, "shape": logits[..., :s], "size": logits[..., s:]}

    def classify_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``[P, classes]`` of 3x3 RGB patches ``[P, 27]`` laid out as ``F.unfold`` gives them:
        the pixel classifier's convolutions as matrix products, so it trains on sampled pixels, not whole images."""
        h = patches
        for layer in self.pixel:
            h = F.linear(h, layer.weight.flatten(1), layer.bias) if isinstance(layer, nn.Conv2d) else layer(h)
        return h

    def read_pixels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything but the shape/size logits: ``pixels``, ``background``, ``present``, ``center`` and the
        (unnormalised) per-slot ``features`` ``[B, colours, 10]`` the MLP reads."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ShapeMismatchError(f"AttributeReaderNet reads RGB images [B, 3, H, W], got {tuple(x.shape)}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        pixels = self.pixel(x)
        probs = pixels.softmax(1).flatten(2)  # [B, classes, HW]
        nb = self.num_backgrounds
        background = probs[:, :nb].mean(-1).clamp_min(_EPS).log()
        # a pixel belongs to its most likely class only (spread-out small probabilities would otherwise add up
        # to phantom objects), judged over its 3x3 neighbourhood: antialiased edges blend two colours into a
        # third, and those stray edge pixels must not make an object either
        smooth = F.avg_pool2d(pixels.softmax(1), 3, stride=1, padding=1, count_include_pad=False).flatten(2)
        winner = F.one_hot(smooth.argmax(1), probs.shape[1]).transpose(1, 2).to(probs.dtype)
        mask = (probs * winner)[:, nb:]  # [B, colours, HW]
        area = winner[:, nb:].mean(-1)  # fraction of the image
        weights = mask / (mask.sum(-1, keepdim=True) + _EPS)
        cx, cy = weights @ self.xs, weights @ self.ys
        dx, dy = self.xs - cx[..., None], self.ys - cy[..., None]

        def moment(a: torch.Tensor) -> torch.Tensor:
            return (weights * a).sum(-1)

        vx, vy = moment(dx**2), moment(dy**2)
        sx, sy = (vx + _EPS).sqrt(), (vy + _EPS).sqrt()
        ux, uy = dx / sx[..., None], dy / sy[..., None]  # standardised: the shape features are scale-free
        features = torch.stack([
            mask.mean(-1).clamp_min(_EPS).log(), sx.log(), sy.log(),
            moment(ux * uy), moment(uy**3), moment(ux**3),
            moment(ux**4), moment(uy**4), moment(ux**2 * uy**2), moment(ux * uy**2),
        ], dim=-1)
        present = (area.clamp_min(_EPS) / self.min_area).log()
        return {"pixels": pixels, "background": background, "present": present, "features": features,
                "center": torch.stack([cx, cy], dim=-1)}
