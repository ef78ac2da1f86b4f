"""``PairedImageDataset``: real degraded inputs beside their ground truths (a folder of low-quality images and a
folder of the matching clean ones), for restoration without a synthetic degradation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmexp.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, ShapeMismatchError

from .base import STANDARD_SPLITS, BaseImageDataset, files_fingerprint, open_image, split_permutation
from .folder import IMAGE_EXTENSIONS
from .loaders import EpochSeeded
from .transforms import uint8_to_tensor

__all__ = ["PairedImageDataset"]

_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_size_of(path: Path, channels: int) -> tuple[int, int]:
    """``(h, w)`` of an image file, read from its header without decoding the pixels; a clear error for a file
    PIL cannot read, and for a single-channel file given to an RGB model (``channels`` 3)."""
    try:
        with Image.open(path) as img:
            mode, (w, h) = img.mode, img.size
    except Exception as err:  # noqa: BLE001 - PIL raises many types
        raise DatasetFormatError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err
    if channels == 3 and mode in _GRAY_MODES:
        raise ShapeMismatchError(f"{path} is a single-channel image (mode {mode}) but data.channels=3 (an RGB "
                                 "model); set data.channels=1 or convert the files to RGB")
    return h, w


def _images(folder: Path) -> dict[str, Path]:
    """{path under ``folder`` without suffix: file} of the image files under ``folder``."""
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in sorted(folder.rglob("*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


class PairedImageDataset(EpochSeeded, BaseImageDataset):
    """Pairs of a low-quality image (``lq_dir``) and its ground truth (``gt_dir``), matched by file name.

    Layout: ``root/lq/*`` and ``root/gt/*`` (split by ``val_fraction``/``test_fraction``, deterministic by seed),
    or ``root/{train,val,test}/{lq,gt}/*`` when those exist (the splits as given).

    Args:
        root: the folder.
        split: ``train``, ``val`` or ``test``.
        image_size: side of the ground-truth crops (the input crops are ``image_size / scale``).
        channels: 3 (RGB) or 1 (luminance).
        scale: ground truth size / input size, per side (1 for denoising, deblurring, JPEG; 4 for x4 SR). Every
            pair must satisfy it exactly: else an error naming the pair and both sizes.
        lq_dir, gt_dir: the two folder names (default ``lq`` and ``gt``).
        lq_suffix: what input names add to the ground truth's (DIV2K: ``x4`` for ``0001x4.png``). Default "".
        val_fraction, test_fraction: held-out shares when the splits are not given as folders (default 0.1).
        seed: split seed, and with the index and the epoch, the training crops'.
        crops_per_pair: training items per pair and epoch (default 1), each a new random aligned crop.
        augment: random flip and 90-degree rotation of training crops, the same on both sides. Default True.
        eval_crops: ``"center"`` (default) or ``"full"`` (whole images, batches of 1).

    Items: ``image`` (= ``target``, the ground truth), ``input``, ``target``, ``index``, ``name``. A
    single-channel file with ``channels=3`` is an error naming it (set ``data.channels=1``), as is an
    unreadable one or a file without its partner.
    """

    name = "paired"
    provides = ("image", "input", "target", "index", "name")
    #: augmentation rotates by multiples of 90 degrees, beside flipping (a subclass may flip only)
    rotate = True

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 96,
        channels: int = 3,
        scale: int = 1,
        lq_dir: str = "lq",
        gt_dir: str = "gt",
        lq_suffix: str = "",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        crops_per_pair: int = 1,
        augment: bool = True,
        eval_crops: str = "center",
    ) -> None:
        super().__init__(split, image_size, channels)
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ConfigError(f"scale must be an integer >= 1, got {scale!r}")
        if image_size % scale:
            raise ConfigError(f"data.image_size={image_size} must be a multiple of the scale {scale} (aligned crops)")
        if eval_crops not in ("center", "full"):
            raise ConfigError(f"eval_crops must be 'center' or 'full', got {eval_crops!r}")
        self.scale, self.seed, self.augment, self.eval_crops = scale, int(seed), bool(augment), eval_crops
        self.crops_per_pair = int(crops_per_pair)
        self.variable_size = split != "train" and eval_crops == "full"
        self.root = Path(os.path.expanduser(str(root)))
        how = (f"Put low-quality images in {self.root}/{lq_dir}/ and their ground truths, with the same file names, "
               f"in {self.root}/{gt_dir}/ (or {self.root}/{{train,val,test}}/{{{lq_dir},{gt_dir}}}/).")
        if all((self.root / s / lq_dir).is_dir() for s in STANDARD_SPLITS):
            base, by_fraction = self.root / split, False
        else:
            base, by_fraction = self.root, True
        lq_root, gt_root = base / lq_dir, base / gt_dir
        for folder in (lq_root, gt_root):
            if not folder.is_dir():
                raise DatasetNotFoundError(f"paired data: folder {folder} does not exist. {how}")
        gts, lqs = _images(gt_root), _images(lq_root)
        if not gts:
            raise DatasetNotFoundError(f"paired data: {gt_root} holds no images. {how}")
        wanted = {name + lq_suffix: name for name in gts}
        no_lq = sorted(n for n in gts if n + lq_suffix not in lqs)
        no_gt = sorted(n for n in lqs if n not in wanted)
        if no_lq or no_gt:
            parts = []
            if no_lq:
                parts.append(f"{len(no_lq)} ground truths without an input in {lq_root} (e.g. {no_lq[:3]}; input "
                             f"names are the ground truth's + lq_suffix={lq_suffix!r})")
            if no_gt:
                parts.append(f"{len(no_gt)} inputs without a ground truth in {gt_root} (e.g. {no_gt[:3]})")
            raise DatasetFormatError("paired data: " + "; ".join(parts))
        names = sorted(gts)
        if by_fraction:
            names = [names[i] for i in split_permutation(len(names), self.seed, val_fraction, test_fraction)[split]]
        self.pairs = [(n, lqs[n + lq_suffix], gts[n]) for n in names]
        self.sizes = [self._check_pair(lq, gt) for _, lq, gt in self.pairs]
        if split == "train" or eval_crops == "center":
            for (n, _, gt), (h, w) in zip(self.pairs, self.sizes):
                if min(h, w) < image_size:
                    raise ConfigError(f"ground truth {gt} is {h}x{w}, smaller than the {image_size}x{image_size} crops: "
                                      "lower data.image_size" + ("" if split == "train" else " or use eval_crops=full"))
        self._root_for_fingerprint = base

    def _check_pair(self, lq: Path, gt: Path) -> tuple[int, int]:
        (lh, lw), (gh, gw) = (image_size_of(path, self.channels) for path in (lq, gt))
        if (gh, gw) != (lh * self.scale, lw * self.scale):
            raise ShapeMismatchError(
                f"pair {gt.name}: ground truth {gh}x{gw} is not scale={self.scale} times the input {lh}x{lw} "
                f"({lq}); set data.dataset.scale, or crop the ground truth to a multiple of the scale")
        return gh, gw

    def __len__(self) -> int:
        return len(self.pairs) * (self.crops_per_pair if self.split == "train" else 1)

    def fingerprint(self) -> str:
        files = [p.relative_to(self._root_for_fingerprint).as_posix() for _, lq, gt in self.pairs for p in (lq, gt)]
        return files_fingerprint(self._root_for_fingerprint, files)

    def _read(self, path: Path) -> np.ndarray:
        img = open_image(path)
        img = img.convert("L") if self.channels == 1 else img.convert("RGB")
        return np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, self.channels)

    def _load(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``p`` as ``(input, ground truth)`` uint8 ``[h, w, C]`` arrays (subclasses read other layouts)."""
        _, lq_path, gt_path = self.pairs[p]
        return self._read(lq_path), self._read(gt_path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        p = index % len(self.pairs)
        name = self.pairs[p][0]
        lq, gt = self._load(p)
        s, k = self.image_size, self.scale
        ls = s // k
        h, w = lq.shape[:2]
        if self.split == "train":
            g = self.item_generator(self.seed, 0, index)
            top = int(torch.randint(0, h - ls + 1, (1,), generator=g))
            left = int(torch.randint(0, w - ls + 1, (1,), generator=g))
            flip, rot = (int(torch.randint(0, 2, (1,), generator=g)), int(torch.randint(0, 4, (1,), generator=g))) \
                if self.augment else (0, 0)
        elif self.eval_crops == "center":
            top, left, flip, rot = (h - ls) // 2, (w - ls) // 2, 0, 0
        else:
            top, left, ls, flip, rot = 0, 0, None, 0, 0
        if ls is not None:
            lq = lq[top : top + ls, left : left + ls]
            gt = gt[top * k : top * k + s, left * k : left * k + s]
        if flip:
            lq, gt = lq[:, ::-1], gt[:, ::-1]
        if rot and self.rotate:
            lq, gt = np.rot90(lq, rot), np.rot90(gt, rot)
        target = uint8_to_tensor(np.ascontiguousarray(gt))
        return {"image": target, "input": uint8_to_tensor(np.ascontiguousarray(lq)), "target": target,
                "index": index, "name": name}
