"""``ShapesDataset``: procedural coloured shapes with captions and masks (no files needed).

Every item is generated from its own RNG seeded by ``(seed, split, index)``, so an item is the same
on every machine and every run, and the three splits never share a scene (they use disjoint seeds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmexp.errors import CaptionParseError, ConfigError

from .base import SPLITS, BaseImageDataset
from .loaders import Collated
from .transforms import pil_to_tensor, uint8_to_tensor

log = logging.getLogger(__name__)

#: bump when rendering changes, so cached renders of an older version are not reused
RENDER_VERSION = 1

__all__ = ["ShapesDataset", "ShapeObject", "Scene", "SHAPES", "COLORS", "BACKGROUNDS", "SIZES", "RELATIONS",
           "ObjectPhrase", "CaptionFacts", "caption_for", "parse_caption", "parse_holdout"]

#: Shape kinds; ``label`` is the index of the first object's shape in this tuple.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

#: Object colours (name -> RGB).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
}

#: Background colours, disjoint from :data:`COLORS`.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "brown": (110, 70, 40),
}

#: Size names -> side of the object's bounding box as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.26, "large": 0.42}

#: Where one object is relative to another in a caption (see :func:`relation`).
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")

_SUPERSAMPLE = 4  # draw at 4x resolution, then box-filter down (antialiasing)
_MIN_LUMA_GAP = 40.0  # background luminance differs from every object's by at least this (grayscale contrast)
_MARGIN = 0.03  # gap to the image border, fraction of the side
_GAP = 0.04  # gap between object boxes
_MAX_DRAWS = 10_000  # scene draws per item before a holdout is declared impossible to satisfy


def _luma(rgb: tuple[int, int, int]) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R 601, as PIL's convert("L")


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. ``center`` and ``extent`` are fractions of the image side (x right, y down)."""

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    extent: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` as fractions of the image side."""
        cx, cy = self.center
        h = self.extent / 2
        return (cx - h, cy - h, cx + h, cy + h)

    def phrase(self, article: str = "a") -> str:
        """E.g. ``"a small red circle"``."""
        return f"{article} {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background colour name and the objects in drawing (= caption) order."""

    background: str
    objects: tuple[ShapeObject, ...]


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``: ``above``, ``below``, ``left of`` or ``right of`` (dominant axis)."""
    dx = a.center[0] - b.center[0]
    dy = a.center[1] - b.center[1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


@dataclass(frozen=True)
class ObjectPhrase:
    """What a caption says of one object: ``"a {size} {color} {shape}"``."""

    size: str
    color: str
    shape: str

    def text(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class CaptionFacts:
    """Everything a shapes caption states: the background, the objects in caption order, and the relations
    ``(i, relation, j)`` = "object ``i`` is ``relation`` object ``j``". A caption of ``n`` objects relates object 0
    to object 1 and every further object ``k`` to object 0: ``relations = ((0, r, 1), (2, r, 0), (3, r, 0)...)``.

    :meth:`text` writes the caption (the grammar of :func:`caption_for`); :func:`parse_caption` reads it back.
    """

    background: str
    objects: tuple[ObjectPhrase, ...]
    relations: tuple[tuple[int, str, int], ...] = ()

    @classmethod
    def of(cls, scene: Scene) -> CaptionFacts:
        """The facts a caption of ``scene`` states (relations from the objects' centres)."""
        objs = scene.objects
        rels = [(0, relation(objs[0], objs[1]), 1)] if len(objs) >= 2 else []
        rels += [(k, relation(objs[k], objs[0]), 0) for k in range(2, len(objs))]
        return cls(scene.background, tuple(ObjectPhrase(o.size, o.color, o.shape) for o in objs), tuple(rels))

    def text(self) -> str:
        objs, rels = self.objects, dict(((i, j), r) for i, r, j in self.relations)
        expected = {(0, 1)} if len(objs) >= 2 else set()
        expected |= {(k, 0) for k in range(2, len(objs))}
        if not objs or set(rels) != expected:
            raise ValueError(f"a caption relates object 0 to 1 and each further object to 0; got {self.relations} "
                             f"for {len(objs)} objects")
        head = objs[0].text()
        if len(objs) >= 2:
            head += f" {rels[0, 1]} {objs[1].text()}"
        first = f"the {objs[0].color} {objs[0].shape}"
        clauses = [head] + [f"{objs[k].text()} {rels[k, 0]} {first}" for k in range(2, len(objs))]
        body = ", and ".join(clauses) + ("," if len(clauses) > 1 else "")
        return f"{body} on a {self.background} background"


def caption_for(scene: Scene) -> str:
    """English caption from a scene's actual attributes and positions.

    One object: ``"a small red circle on a black background"``. Two: ``"a small red circle above a
    large blue square on a black background"``. Each further object ``i`` is related to object 0:
    ``"..., and a large green triangle right of the red circle, on a white background"``.
    :func:`parse_caption` reads it back into :class:`CaptionFacts`.
    """
    return CaptionFacts.of(scene).text()


def _alternatives(words) -> str:
    return "(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_PHRASE = rf"a {_alternatives(SIZES)} {_alternatives(COLORS)} {_alternatives(SHAPES)}"
_RELATION = _alternatives(RELATIONS)
_CAPTION = re.compile(rf"(?P<body>.+?)(?P<comma>,?) on a (?P<background>{_alternatives(BACKGROUNDS)[1:-1]}) background")
_HEAD = re.compile(rf"{_PHRASE}(?: {_RELATION} {_PHRASE})?")
_CLAUSE = re.compile(rf"{_PHRASE} {_RELATION} the {_alternatives(COLORS)} {_alternatives(SHAPES)}")


def parse_caption(text: str) -> CaptionFacts:
    """The :class:`CaptionFacts` of a shapes caption (the inverse of :func:`caption_for`; case and runs of
    whitespace are ignored). Raises :class:`~mmexp.errors.CaptionParseError` naming the caption and the grammar
    when ``text`` is not one."""
    clean = " ".join(str(text).lower().split())

    def fail(why: str) -> CaptionParseError:
        return CaptionParseError(
            f"not a shapes caption ({why}): {text!r}; expected e.g. 'a small red circle on a black background' or "
            "'a small red circle above a large blue square, and a large green triangle left of the red circle, on "
            f"a white background' (sizes {list(SIZES)}, colours {list(COLORS)}, shapes {list(SHAPES)}, relations "
            f"{list(RELATIONS)}, backgrounds {list(BACKGROUNDS)})")

    m = _CAPTION.fullmatch(clean)
    if m is None:
        raise fail("no 'on a <background> background' ending")
    clauses = m["body"].split(", and ")
    if bool(m["comma"]) != (len(clauses) > 1):
        raise fail("a comma before 'on a' goes with three or more objects, and only then")
    head = _HEAD.fullmatch(clauses[0])
    if head is None:
        raise fail(f"cannot read {clauses[0]!r}")
    objects = [ObjectPhrase(*head.group(1, 2, 3))]
    relations = []
    if head[4] is not None:
        objects.append(ObjectPhrase(*head.group(5, 6, 7)))
        relations.append((0, head[4], 1))
    elif len(clauses) > 1:
        raise fail("three or more objects begin with two related ones")
    for clause in clauses[1:]:
        c = _CLAUSE.fullmatch(clause)
        if c is None:
            raise fail(f"cannot read {clause!r}")
        if (c[5], c[6]) != (objects[0].color, objects[0].shape):
            raise fail(f"{clause!r} relates to 'the {c[5]} {c[6]}', not to the first object")
        relations.append((len(objects), c[4], 0))
        objects.append(ObjectPhrase(*c.group(1, 2, 3)))
    return CaptionFacts(m["background"], tuple(objects), tuple(relations))


def parse_holdout(holdout: Sequence[str] | str | None) -> tuple[tuple[str, str], ...]:
    """``["red circle", "blue square"]`` -> ``(("red", "circle"), ("blue", "square"))`` (sorted, deduplicated),
    each pair a colour of :data:`COLORS` and a shape of :data:`SHAPES`; a bad entry raises :class:`ConfigError`."""
    if holdout is None:
        return ()
    if isinstance(holdout, str):
        holdout = [h for h in holdout.split(",") if h.strip()]
    pairs = set()
    for entry in holdout:
        words = str(entry).lower().replace("_", " ").split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise ConfigError(
                f"data.dataset.holdout: {entry!r} is not a '<colour> <shape>' pair; colours: {', '.join(COLORS)}; "
                f"shapes: {', '.join(SHAPES)} (e.g. holdout=[\"red circle\",\"blue square\"])")
        pairs.add((words[0], words[1]))
    return tuple(sorted(pairs))


class ShapesDataset(BaseImageDataset):
    """Procedural images of 1-3 coloured shapes on a plain background.

    Args:
        split: ``train``, ``val``, ``test`` or ``compositional`` (needs ``holdout``).
        image_size: side in pixels.
        channels: 3 (RGB) or 1 (grayscale, PIL's ITU-R 601 luma).
        num_train, num_val, num_test: split sizes.
        min_shapes, max_shapes: objects per image (1 <= min <= max <= 4).
        seed: base seed; item ``i`` of split ``s`` is generated from ``SeedSequence([seed, s, i])``.
        holdout: colour-shape pairs such as ``["red circle", "blue square"]`` that ``train``, ``val`` and
            ``test`` never contain, and every ``compositional`` scene contains at least once: a measure of
            zero-shot composition (each colour and each shape may still appear in other pairs). A scene is
            drawn again from the item's own RNG until it qualifies, so items stay deterministic, and without
            a holdout every scene is the one drawn first. Default: None (nothing held out).
        num_compositional: size of the ``compositional`` split. Default: 512.
        render_once: render the whole split on first use and keep it as uint8 arrays (items are
            deterministic; drawing them costs ~0.6 ms each at 32 px, which starves a GPU). Default: True.
        cache_dir: also keep those arrays in ``<cache_dir>/shapes-<hash>.npz`` (written atomically, keyed by
            every argument that changes the pixels), so later runs and worker processes load them. Default:
            None (memory only).

    Item keys (``provides``): ``image`` float ``[C,H,W]`` in ``[-1,1]``; ``label`` = index in
    :data:`SHAPES` of the *first* object's shape (the first object named in the caption;
    ``num_classes = len(SHAPES)``); ``caption`` (see :func:`caption_for`); ``mask`` float ``[1,H,W]``
    in {0,1}, the union of the objects' pixels (a pixel is in the mask when at least half of it is
    covered, which matches where its colour is mostly an object's colour); ``index``.

    Objects never overlap, their colours are distinct and the background colour is none of them
    (and differs in luminance by at least 40/255 from each, so grayscale images keep contrast).
    Structured attributes are available through :meth:`scene` and :meth:`describe`.
    """

    name = "shapes"
    provides = ("image", "label", "caption", "mask", "index")
    num_classes = len(SHAPES)
    classes = SHAPES
    splits = SPLITS

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        channels: int = 3,
        num_train: int = 4096,
        num_val: int = 512,
        num_test: int = 512,
        min_shapes: int = 1,
        max_shapes: int = 3,
        seed: int = 0,
        render_once: bool = True,
        cache_dir: str | None = None,
        holdout: Sequence[str] | None = None,
        num_compositional: int = 512,
    ) -> None:
        super().__init__(split, image_size, channels)
        if not 1 <= min_shapes <= max_shapes <= 4:
            raise ConfigError(f"need 1 <= min_shapes <= max_shapes <= 4, got min_shapes={min_shapes}, max_shapes={max_shapes}")
        self.holdout = parse_holdout(holdout)
        if split == "compositional" and not self.holdout:
            raise ConfigError("the compositional split holds scenes with held-out colour-shape pairs: set "
                              "data.dataset.holdout, e.g. holdout=[\"red circle\",\"blue square\"] (or data=shapes_single)")
        free = [c for c in COLORS if any((c, shape) not in self.holdout for shape in SHAPES)]
        if len(free) < min_shapes:
            raise ConfigError(f"holdout {[' '.join(p) for p in self.holdout]} leaves {len(free)} colours with a shape "
                              f"that is not held out, too few for min_shapes={min_shapes} objects of distinct colours")
        sizes = {"train": num_train, "val": num_val, "test": num_test, "compositional": num_compositional}
        for key, n in sizes.items():
            if not isinstance(n, int) or n < 0:
                raise ConfigError(f"num_{key} must be an integer >= 0, got {n!r}")
        if image_size < 8:
            raise ConfigError(f"ShapesDataset needs image_size >= 8 to draw recognisable shapes, got {image_size}")
        self.length = sizes[split]
        self.min_shapes = min_shapes
        self.max_shapes = max_shapes
        self.seed = int(seed)
        self.render_once = bool(render_once)
        self.cache_dir = cache_dir
        self._store: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def extra_repr(self) -> str:
        held = f", holdout={[' '.join(p) for p in self.holdout]}" if self.holdout else ""
        return f"seed={self.seed}, shapes={self.min_shapes}..{self.max_shapes}{held}"

    # -- scene generation -------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed % (1 << 64), SPLITS.index(self.split), index]))

    def scene(self, index: int) -> Scene:
        """The structured scene of item ``index`` (deterministic)."""
        index = self._check_index(index)
        rng = self._rng(index)
        for _ in range(_MAX_DRAWS):
            scene = self._draw_scene(rng)
            if self.admits(scene):
                return scene
        raise ConfigError(f"no {self.split} scene of {self.min_shapes}..{self.max_shapes} objects "
                          f"{'with' if self.split == 'compositional' else 'without'} a held-out pair "
                          f"{[' '.join(p) for p in self.holdout]} in {_MAX_DRAWS} draws (item {index}); hold out fewer pairs")

    def holds_out(self, scene: Scene) -> bool:
        """True when ``scene`` has an object whose colour-shape pair is held out."""
        return any((o.color, o.shape) in self.holdout for o in scene.objects)

    def admits(self, scene: Scene) -> bool:
        """Whether ``scene`` belongs in this split: ``compositional`` scenes hold out a pair, the others none."""
        if not self.holdout:
            return True
        return self.holds_out(scene) == (self.split == "compositional")

    def _draw_scene(self, rng: np.random.Generator) -> Scene:
        n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        color_names = list(COLORS)
        colors = [color_names[i] for i in rng.choice(len(color_names), size=n, replace=False)]
        objects: list[ShapeObject] = []
        for k in range(n):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            size = "large" if rng.random() < 0.5 else "small"
            extent = SIZES[size] * float(rng.uniform(0.92, 1.08))
            lo, hi = _MARGIN + extent / 2, 1 - _MARGIN - extent / 2
            for _ in range(64):
                center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
                cand = ShapeObject(shape, colors[k], size, center, extent)
                if all(not _boxes_close(cand.box, o.box) for o in objects):
                    objects.append(cand)
                    break
            # an object that does not fit after 64 tries is dropped (rare; only with 3-4 large ones)
        lumas = [_luma(COLORS[o.color]) for o in objects]
        bg_ok = [b for b, rgb in BACKGROUNDS.items() if min(abs(_luma(rgb) - l) for l in lumas) >= _MIN_LUMA_GAP]
        background = bg_ok[int(rng.integers(len(bg_ok)))]
        return Scene(background, tuple(objects))

    def describe(self, index: int) -> list[dict[str, Any]]:
        """Objects of item ``index`` in caption order, each a dict with ``shape``, ``color``, ``rgb``,
        ``size``, ``center`` and ``extent`` (fractions of the side) and ``bbox`` ``(x0, y0, x1, y1)``
        in pixels of this dataset's ``image_size`` (floats; x right, y down)."""
        s = self.image_size
        out = []
        for obj in self.scene(index).objects:
            d = asdict(obj)
            d["rgb"] = COLORS[obj.color]
            d["bbox"] = tuple(float(v) * s for v in obj.box)
            out.append(d)
        return out

    def captions(self) -> list[str]:
        if self.render_once:
            return [str(c) for c in self.rendered()["captions"]]
        return [caption_for(self.scene(i)) for i in range(len(self))]

    def caption(self, index: int) -> str:
        """The caption of item ``index``."""
        return caption_for(self.scene(index))

    # -- rendering --------------------------------------------------------------------------
    def render(self, scene: Scene) -> tuple[Image.Image, np.ndarray]:
        """Draw ``scene``: an RGB PIL image of ``image_size`` and the coverage ``[H, W]`` in [0, 1]."""
        s = self.image_size
        big = s * _SUPERSAMPLE
        img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
        cov = Image.new("L", (big, big), 0)
        draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(cov)
        for obj in scene.objects:
            pts = _outline(obj, big)
            for d, fill in ((draw, COLORS[obj.color]), (mdraw, 255)):
                if obj.shape == "circle":
                    d.ellipse(pts, fill=fill)
                elif obj.shape == "square":
                    d.rectangle(pts, fill=fill)
                else:
                    d.polygon(pts, fill=fill)
        img = img.resize((s, s), Image.Resampling.BOX)
        coverage = np.asarray(cov.resize((s, s), Image.Resampling.BOX), dtype=np.float32) / 255.0
        return img, coverage

    def _draw(self, index: int) -> tuple[Image.Image, np.ndarray, Scene]:
        """Item ``index`` drawn: the image in this dataset's channels, its object mask (bool) and its scene."""
        scene = self.scene(index)
        img, coverage = self.render(scene)
        if self.channels == 1:
            img = img.convert("L")
        return img, coverage >= 0.5, scene

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        if self.render_once:
            store = self.rendered()
            return {
                "image": uint8_to_tensor(store["images"][index]),
                "label": int(store["labels"][index]),
                "caption": str(store["captions"][index]),
                "mask": torch.from_numpy(store["masks"][index].astype(np.float32))[None],
                "index": index,
            }
        img, mask, scene = self._draw(index)
        return {
            "image": pil_to_tensor(img),
            "label": SHAPES.index(scene.objects[0].shape),
            "caption": caption_for(scene),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "index": index,
        }

    def __getitems__(self, indices: list[int]) -> Collated | list[dict[str, Any]]:
        """A batch of items (what ``DataLoader`` asks for): rendered once, slices of the split's arrays as one
        :class:`~mmexp.data.loaders.Collated` batch (equal to ``default_collate`` of the items, without a dict
        and five small tensors per item, for mmexp's loaders; a sequence of the items for any other collate
        function); otherwise the items one by one."""
        if not self.render_once:
            return [self[i] for i in indices]
        ii = np.fromiter((self._check_index(i) for i in indices), dtype=np.int64, count=len(indices))
        store = self.rendered()
        images = np.ascontiguousarray(store["images"][ii].transpose(0, 3, 1, 2))  # [B, C, H, W] uint8
        batch = {"image": torch.from_numpy(images).to(torch.float32).div_(127.5).sub_(1.0),
                 "label": torch.from_numpy(store["labels"][ii]),
                 "caption": [str(c) for c in store["captions"][ii]],
                 "mask": torch.from_numpy(store["masks"][ii, None].astype(np.float32)),
                 "index": torch.from_numpy(ii)}
        return Collated(batch, lambda j: self[int(ii[j])], len(ii))

    # -- render once ------------------------------------------------------------------------
    def cache_key(self) -> str:
        """A hash of everything that determines this split's pixels, captions and labels."""
        fields = {"version": RENDER_VERSION, "split": self.split, "n": self.length, "image_size": self.image_size,
                  "channels": self.channels, "min_shapes": self.min_shapes, "max_shapes": self.max_shapes,
                  "seed": self.seed}
        if self.holdout:  # absent when empty: renders cached before holdouts existed stay valid
            fields["holdout"] = [" ".join(p) for p in self.holdout]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]

    def rendered(self) -> dict[str, np.ndarray]:
        """The whole split as arrays: ``images`` uint8 ``[N, H, W, C]``, ``masks`` bool ``[N, H, W]``,
        ``labels`` int64 ``[N]``, ``captions`` str ``[N]``; rendered (or read from ``cache_dir``) once."""
        if self._store is None:
            path = os.path.join(os.path.expanduser(self.cache_dir), f"shapes-{self.cache_key()}.npz") \
                if self.cache_dir else None
            self._store = self._read(path) if path else None
            if self._store is None:
                self._store = self._render_all()
                if path:
                    self._write(path, self._store)
        return self._store

    def _render_all(self) -> dict[str, np.ndarray]:
        s, c, n = self.image_size, self.channels, self.length
        images = np.empty((n, s, s, c), dtype=np.uint8)
        masks = np.empty((n, s, s), dtype=bool)
        labels = np.empty(n, dtype=np.int64)
        captions = []
        for i in range(n):
            img, mask, scene = self._draw(i)
            images[i] = np.asarray(img, dtype=np.uint8).reshape(s, s, c)
            masks[i] = mask
            labels[i] = SHAPES.index(scene.objects[0].shape)
            captions.append(caption_for(scene))
        return {"images": images, "masks": masks, "labels": labels, "captions": np.array(captions, dtype=str)}

    def _read(self, path: str) -> dict[str, np.ndarray] | None:
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                store = {k: f[k] for k in ("images", "masks", "labels", "captions")}
        except Exception as err:  # noqa: BLE001 - a damaged cache file is re-rendered, never trusted
            log.warning("ignoring unreadable shapes cache %s (%s): rendering again", path, err)
            return None
        s, c = self.image_size, self.channels
        if store["images"].shape != (self.length, s, s, c) or len(store["captions"]) != self.length:
            log.warning("ignoring shapes cache %s of the wrong shape: rendering again", path)
            return None
        return store

    @staticmethod
    def _write(path: str, store: dict[str, np.ndarray]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        try:
            np.savez(tmp, **store)
            os.replace(tmp, path)
        except OSError as err:
            log.warning("could not write the shapes cache %s: %s", path, err)
            if os.path.exists(tmp):
                os.unlink(tmp)


def _boxes_close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return not (a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1])


def _outline(obj: ShapeObject, big: int) -> Any:
    x0, y0, x1, y1 = (v * big for v in obj.box)
    x1, y1 = x1 - 1, y1 - 1  # PIL includes the end coordinate
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if obj.shape in ("circle", "square"):
        return [x0, y0, x1, y1]
    if obj.shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if obj.shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    raise ValueError(f"unknown shape {obj.shape!r}")
