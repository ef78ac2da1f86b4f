"""Hole masks for inpainting and outpainting: every generator is a degradation that adds ``hole``
(float ``[B, 1, H, W]``, 1 = pixel to fill) and blanks those pixels of ``input``.

Generators, in LaMa's spirit (Suvorov et al. 2022, "Resolution-robust Large Mask Inpainting with Fourier
Convolutions": masks are small objects chosen by config, reused by training and evaluation):

* :class:`BoxMask`: axis-aligned rectangles;
* :class:`FreeFormMask`: brush strokes, polylines of thick segments with random turns (LaMa's "thick" and
  "thin" irregular masks; our own generator, sizes as fractions of the image side so they scale with it);
* :class:`OutpaintMask`: strips along one or more sides (image completion beyond the known borders);
* :class:`MixedMask`: one of several generators, chosen per sample with given probabilities;
* :class:`ObjectMask`: the data's own object ``mask`` (shapes), optionally grown by a margin;
* :class:`FileMask`: masks read from a folder of images (non-zero = hole), by index, name or at random.

Holes are drawn on the CPU from the sample's generator and are the same on every device.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
import numpy as np
import torch

from mmexp.errors import ConfigError, DatasetNotFoundError, ShapeMismatchError

from .base import Degradation, Sample, derive_stage_seed, generator

__all__ = ["MaskDegradation", "BoxMask", "FreeFormMask", "OutpaintMask", "MixedMask", "ObjectMask", "FileMask"]


def _range(value: float | Sequence[float], name: str, lo: float = 0.0, hi: float = math.inf) -> tuple[float, float]:
    a, b = (float(value), float(value)) if isinstance(value, (int, float)) else (float(v) for v in value)
    if not lo <= a <= b <= hi:
        raise ConfigError(f"{name} must be a number or [low, high] with {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


class _Draws:
    """Uniform draws from one sample's generator."""

    def __init__(self, seed: int) -> None:
        self.g = generator(seed)

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand(1, generator=self.g).item()

    def integer(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]`` (both included)."""
        return int(torch.randint(int(lo), int(hi) + 1, (1,), generator=self.g).item())


class MaskDegradation(Degradation):
    """Base of the mask generators: subclasses implement :meth:`make_hole`.

    ``input`` = ``input`` with the hole's pixels set to ``fill`` (default 0, mid-grey on ``[-1, 1]``: no colour
    is favoured); ``hole`` is the union with any hole an earlier stage made. Masks are drawn at the target's
    size, so put them before any resizing stage.
    """

    provides = ("input", "target", "hole")
    fill: float = 0.0

    def make_hole(self, height: int, width: int, seed: int, sample: Sample) -> np.ndarray:  # pragma: no cover
        """A bool ``[height, width]`` array, True = pixel to fill."""
        raise NotImplementedError

    def apply(self, sample: Sample, seed: int) -> Sample:
        h, w = sample.target.shape[-2:]
        if tuple(sample.input.shape[-2:]) != (h, w):
            raise ShapeMismatchError(
                f"{type(self).__name__} draws holes at the target's size {h}x{w}, but the input is already "
                f"{tuple(sample.input.shape[-2:])}: put mask stages before resizing stages")
        hole = self.make_hole(h, w, seed, sample)
        if hole.shape != (h, w):
            raise ShapeMismatchError(f"{type(self).__name__} made a {hole.shape} hole for a {h}x{w} image")
        t = torch.from_numpy(np.ascontiguousarray(hole, dtype=np.float32)).to(sample.input.device)[None, None]
        if sample.hole is not None:
            t = torch.maximum(t, sample.hole)
        x = sample.input * (1 - t) + self.fill * t
        return Sample(input=x, target=sample.target, hole=t, extra=sample.extra)


class BoxMask(MaskDegradation):
    """Axis-aligned rectangles.

    Args:
        boxes: number of boxes, ``[low, high]`` (default ``[1, 3]``) or a number.
        size: each side of a box as a fraction of the image side, ``[low, high]`` (default ``[0.1, 0.5]``).
        margin: boxes keep this fraction of the side away from the border (default 0.04; LaMa's 10 px of 256).
    """

    def __init__(self, boxes: int | Sequence[int] = (1, 3), size: float | Sequence[float] = (0.1, 0.5),
                 margin: float = 0.04) -> None:
        self.boxes = tuple(int(v) for v in _range(boxes, "BoxMask boxes", 1))
        self.size = _range(size, "BoxMask size", 0.0, 1.0)
        if not 0 <= margin < 0.5:
            raise ConfigError(f"BoxMask margin must be in [0, 0.5), got {margin}")
        self.margin = float(margin)

    def make_hole(self, height: int, width: int, seed: int, sample: Sample) -> np.ndarray:
        d = _Draws(seed)
        hole = np.zeros((height, width), dtype=bool)
        for _ in range(d.integer(*self.boxes)):
            bh = max(1, round(d.uniform(*self.size) * height))
            bw = max(1, round(d.uniform(*self.size) * width))
            my, mx = round(self.margin * height), round(self.margin * width)
            bh, bw = min(bh, height - 2 * my), min(bw, width - 2 * mx)
            top = d.integer(my, max(my, height - my - bh))
            left = d.integer(mx, max(mx, width - mx - bw))
            hole[top : top + bh, left : left + bw] = True
        return hole


class FreeFormMask(MaskDegradation):
    """Brush strokes: each stroke starts at a random point and runs through ``vertices`` segments, each turning
    by a random angle, with a random length and brush width (rounded joints). LaMa's irregular masks, with
    sizes as fractions of the image side.

    Args:
        strokes: strokes per mask, ``[low, high]`` (default ``[1, 5]``, LaMa's thick masks).
        vertices: segments per stroke, ``[low, high]`` (default ``[1, 5]``).
        length: segment length, fraction of the side (default ``[0.04, 0.8]``: 10-200 px at 256).
        width: brush width, fraction of the side (default ``[0.02, 0.4]``: 5-100 px at 256).
        max_turn: largest change of direction between segments, radians (default 4, LaMa's ``max_angle``).

    ``conf/degradation/freeform.yaml`` is the thick preset, ``freeform_thin.yaml`` the thin one (more, longer,
    narrower strokes).
    """

    def __init__(self, strokes: int | Sequence[int] = (1, 5), vertices: int | Sequence[int] = (1, 5),
                 length: float | Sequence[float] = (0.04, 0.8), width: float | Sequence[float] = (0.02, 0.4),
                 max_turn: float = 4.0) -> None:
        self.strokes = tuple(int(v) for v in _range(strokes, "FreeFormMask strokes", 1))
        self.vertices = tuple(int(v) for v in _range(vertices, "FreeFormMask vertices", 1))
        self.length = _range(length, "FreeFormMask length", 0.0)
        self.width = _range(width, "FreeFormMask width", 0.0)
        self.max_turn = float(max_turn)

    def make_hole(self, height: int, width: int, seed: int, sample: Sample) -> np.ndarray:
        import cv2

        d = _Draws(seed)
        side = min(height, width)
        canvas = np.zeros((height, width), dtype=np.uint8)
        for _ in range(d.integer(*self.strokes)):
            x, y = d.uniform(0, width - 1), d.uniform(0, height - 1)
            angle = d.uniform(0, 2 * math.pi)
            for _ in range(d.integer(*self.vertices)):
                angle += d.uniform(-self.max_turn, self.max_turn)
                step = d.uniform(*self.length) * side
                brush = max(1, round(d.uniform(*self.width) * side))
                nx = min(max(x + step * math.cos(angle), 0), width - 1)
                ny = min(max(y + step * math.sin(angle), 0), height - 1)
                p0, p1 = (round(x), round(y)), (round(nx), round(ny))
                cv2.line(canvas, p0, p1, 1, brush)
                cv2.circle(canvas, p1, brush // 2, 1, -1)
                x, y = nx, ny
        return canvas.astype(bool)


_SIDES = ("top", "bottom", "left", "right")


class OutpaintMask(MaskDegradation):
    """Strips along the borders: the model extends the known centre beyond them (outpainting).

    Args:
        sides: the sides that may be extended (default all four: ``[top, bottom, left, right]``).
        num_sides: how many of them per sample, ``[low, high]`` (default ``[1, 4]``); equal to
            ``len(sides)`` for always the same ones (``sides: [left, right]``, ``num_sides: 2``).
        extent: depth of each strip, fraction of the image side across it (default ``[0.1, 0.35]``); opposite
            strips together stay below the whole side, so some of the image is always known.
    """

    def __init__(self, sides: Sequence[str] = _SIDES, num_sides: int | Sequence[int] = (1, 4),
                 extent: float | Sequence[float] = (0.1, 0.35)) -> None:
        sides = tuple(sides)
        bad = [s for s in sides if s not in _SIDES]
        if bad or not sides or len(set(sides)) != len(sides):
            raise ConfigError(f"OutpaintMask sides must be distinct names among {_SIDES}, got {list(sides)}")
        self.sides = sides
        lo, hi = (int(v) for v in _range(num_sides, "OutpaintMask num_sides", 1, len(sides)))
        self.num_sides = (lo, hi)
        self.extent = _range(extent, "OutpaintMask extent", 0.0, 0.49)

    def chosen_sides(self, seed: int) -> tuple[list[str], _Draws]:
        d = _Draws(seed)
        k = d.integer(*self.num_sides)
        order = torch.randperm(len(self.sides), generator=d.g).tolist()
        return [self.sides[i] for i in sorted(order[:k])], d

    def make_hole(self, height: int, width: int, seed: int, sample: Sample) -> np.ndarray:
        sides, d = self.chosen_sides(seed)
        hole = np.zeros((height, width), dtype=bool)
        for side in sides:
            across = height if side in ("top", "bottom") else width
            depth = max(1, round(d.uniform(*self.extent) * across))
            if side == "top":
                hole[:depth] = True
            elif side == "bottom":
                hole[height - depth :] = True
            elif side == "left":
                hole[:, :depth] = True
            else:
                hole[:, width - depth :] = True
        return hole


class MixedMask(MaskDegradation):
    """One of several mask generators per sample, chosen with ``probs`` (LaMa's mixed training masks).

    Args:
        masks: the generators, a list or a dict (configs name them: ``degradation.masks.box.size=...``).
        probs: their probabilities in the same order (normalised; default uniform); a dict of name -> prob
            when ``masks`` is a dict.
    """

    def __init__(self, masks: Sequence[MaskDegradation] | Mapping[str, MaskDegradation],
                 probs: Sequence[float] | Mapping[str, float] | None = None) -> None:
        names = list(masks.keys()) if isinstance(masks, Mapping) else [str(i) for i in range(len(masks))]
        gens = list(masks.values()) if isinstance(masks, Mapping) else list(masks)
        if not gens or not all(isinstance(m, MaskDegradation) for m in gens):
            raise ConfigError(f"MixedMask needs one or more mask generators, got {[type(m).__name__ for m in gens]}")
        if probs is None:
            p = [1.0] * len(gens)
        elif isinstance(probs, Mapping):
            unknown = sorted(set(probs) - set(names))
            if unknown:
                raise ConfigError(f"MixedMask probs name {unknown}, which are not among the masks {names}")
            p = [float(probs.get(n, 0.0)) for n in names]
        else:
            p = [float(v) for v in probs]
        if len(p) != len(gens) or any(v < 0 for v in p) or sum(p) <= 0:
            raise ConfigError(f"MixedMask probs must be {len(gens)} non-negative numbers with a positive sum, got {probs!r}")
        self.names, self.masks = names, gens
        self.probs = [v / sum(p) for v in p]
        self.required_keys = tuple(dict.fromkeys(k for m in gens for k in m.required_keys))

    def choose(self, seed: int) -> int:
        """Index of the generator sample ``seed`` uses."""
        u = _Draws(seed).uniform(0.0, 1.0)
        acc = 0.0
        for i, p in enumerate(self.probs):
            acc += p
            if u < acc:
                return i
        return len(self.probs) - 1

    def make_hole(self, height: int, width: int, seed: int, sample: Sample) -> np.ndarray:
        i = self.choose(seed)
        return self.masks[i].make_hole(height, width, derive_stage_seed(seed, 1), sample)


class ObjectMask(MaskDegradation):
    """The data's object mask (``batch["mask"]``, the shapes dataset's) as the hole: remove an object and let
    the model fill in the background.

    Args:
        dilate: grow the hole by this fraction of the image side (default 0.03), so no object edge is left to
            copy; 0 keeps the mask as it is.
    """

    required_keys = ("mask",)

    def __init__(self, dilate: float = 0.03) -> None:
        if not 0 <= dilate < 0.5:
            raise ConfigError(f"ObjectMask dilate must be in [0, 0.5), got {dilate}")
        self.dilate = float(dilate)

    def make_hole(self, height: int, width: int, seed: int, sample: Sample) -> np.ndarray:
        mask = sample.extra["mask"]
        if tuple(mask.shape[-2:]) != (height, width):
            raise ShapeMismatchError(f"the object mask is {tuple(mask.shape[-2:])}, the image {height}x{width}")
        hole = mask.reshape(height, width).detach().cpu().numpy() > 0.5
        r = round(self.dilate * min(height, width))
        if r > 0 and hole.any():
            import cv2

            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            hole = cv2.dilate(hole.astype(np.uint8), kernel).astype(bool)
        return hole


_MASK_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")


class FileMask(MaskDegradation):
    """Masks read from a folder of image files: any non-zero pixel is a hole (after ``invert``).

    Args:
        root: the folder (searched recursively for image files, sorted by relative path).
        match: how a sample finds its mask: ``"index"`` (the ``index``-th file; the same mask every epoch, for
            evaluation sets), ``"name"`` (the file whose name without suffix is the item's ``name`` or
            ``<name>_mask``; needs data that provides ``name``), or ``"random"`` (a file drawn per sample seed:
            training on a mask collection such as the irregular masks of Liu et al. 2018). Default ``"index"``.
        cycle: with ``match="index"``, reuse the masks when there are fewer than samples (index modulo the
            number of files); else an index past the end is an error. Default False.
        invert: holes are the *zero* pixels instead (for mask sets that mark the known area). Default False.

    A mask must have the image's size: a mismatch is an error naming both sizes and the file (no silent
    resize). An unreadable file is an error naming it.
    """

    def __init__(self, root: str | os.PathLike, match: str = "index", cycle: bool = False,
                 invert: bool = False) -> None:
        if match not in ("index", "name", "random"):
            raise ConfigError(f"FileMask match must be 'index', 'name' or 'random', got {match!r}")
        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"mask folder {self.root} does not exist; point degradation.root at a folder "
                                       "of mask images (non-zero = hole)")
        self.files = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                            if p.suffix.lower() in _MASK_EXTENSIONS and p.is_file())
        if not self.files:
            raise DatasetNotFoundError(f"mask folder {self.root} holds no image files ({', '.join(_MASK_EXTENSIONS)})")
        self.match, self.cycle, self.invert = match, bool(cycle), bool(invert)
        self._by_name = {re.sub(r"_mask$", "", Path(f).with_suffix("").as_posix()): f for f in self.files}
        self.required_keys = ("index",) if match == "index" else (("name",) if match == "name" else ())
        self._cache: dict[str, np.ndarray] = {}

    def file_for(self, sample: Sample, seed: int) -> str:
        """The relative path of the mask file a sample uses."""
        if self.match == "random":
            return self.files[_Draws(seed).integer(0, len(self.files) - 1)]
        if self.match == "name":
            name = str(sample.extra["name"])
            stem = Path(name).with_suffix("").as_posix() if Path(name).suffix.lower() in _MASK_EXTENSIONS else name
            if stem not in self._by_name:
                raise DatasetNotFoundError(f"no mask for item {name!r} in {self.root} (looked for {stem}.png or "
                                           f"{stem}_mask.png, any image suffix)")
            return self._by_name[stem]
        index = int(sample.extra["index"])
        if index >= len(self.files) and not self.cycle:
            raise ConfigError(f"sample index {index} has no mask: {self.root} holds {len(self.files)} masks; add "
                              "masks or set degradation.cycle=true to reuse them")
        return self.files[index % len(self.files)]

    def read(self, rel: str) -> np.ndarray:
        """The mask file ``rel`` as a bool array (cached in memory)."""
        if rel not in self._cache:
            from mmexp.data.base import open_image

            img = open_image(self.root / rel).convert("L")
            hole = np.asarray(img) > 0
            self._cache[rel] = ~hole if self.invert else hole
        return self._cache[rel]

    def make_hole(self, height: int, width: int, seed: int, sample: Sample) -> np.ndarray:
        rel = self.file_for(sample, seed)
        hole = self.read(rel)
        if hole.shape != (height, width):
            raise ShapeMismatchError(
                f"mask {self.root / rel} is {hole.shape[0]}x{hole.shape[1]} (HxW) but the image is {height}x{width}; "
                "masks must have the images' size (resize the mask files, or the images with data.image_size)")
        return hole

    def __repr__(self) -> str:
        return f"FileMask(root={str(self.root)!r}, match={self.match!r}, masks={len(self.files)})"
