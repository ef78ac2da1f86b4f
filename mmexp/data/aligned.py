"""``AlignedImageDataset``: the pix2pix datasets' format (Isola et al. 2017: facades, cityscapes, maps,
edges2shoes, edges2handbags, night2day), each file one image A and its partner B side by side (``A|B``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mmexp.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

from .base import STANDARD_SPLITS, BaseImageDataset, files_fingerprint, split_permutation
from .folder import IMAGE_EXTENSIONS
from .paired import PairedImageDataset, image_size_of

__all__ = ["AlignedImageDataset", "split_aligned"]

DIRECTIONS = ("AtoB", "BtoA")


def split_aligned(pixels: np.ndarray, path: Path | str = "image") -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)``: the left and right halves of an ``A|B`` array ``[H, 2W, ...]``; an odd width is an error naming
    the file (the halves would not be the same size)."""
    w = pixels.shape[1]
    if w % 2:
        raise DatasetFormatError(f"{path} is {w} px wide: an A|B file holds two images of the same width side by "
                                 "side, so its width must be even")
    return pixels[:, : w // 2], pixels[:, w // 2:]


class AlignedImageDataset(PairedImageDataset):
    """Pairs stored as single ``A|B`` files (the pix2pix datasets): the left half is A, the right half B.

    Layout: ``root/{train,val,test}/*`` as the pix2pix datasets ship them (a missing ``test`` folder falls back
    to ``val``, as edges2shoes and maps ship only those two), or a flat ``root/*`` split by
    ``val_fraction``/``test_fraction`` (deterministic by seed).

    Args:
        root: the folder.
        split: ``train``, ``val`` or ``test``.
        image_size: side of the (aligned) crops of A and B. Default: 256.
        channels: 3 (RGB) or 1 (luminance). Default: 3.
        direction: ``"AtoB"`` (input A, target B) or ``"BtoA"``. Default: "AtoB".
        load_size: resize each half to ``load_size`` square (bicubic) before cropping (pix2pix: 286 for 256
            crops, its "random jitter"); None keeps the files' size. Default: None.
        val_fraction, test_fraction: held-out shares for a flat folder. Default: 0.1.
        seed: split seed, and with the index and the epoch, the training crops'.
        crops_per_pair: training items per file and epoch. Default: 1.
        augment: random horizontal flip of training crops, the same on A and B (pix2pix's; no rotation: a
            street or a map is not rotation invariant). Default: True.
        eval_crops: ``"center"`` (default) or ``"full"`` (whole halves, batches of 1).

    Items: ``image`` (= ``target``), ``input``, ``target``, ``index``, ``name``. A file of odd width, a grey file
    with ``channels=3`` or an unreadable file is an error naming it.
    """

    name = "aligned"
    rotate = False

    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 256, channels: int = 3,
                 direction: str = "AtoB", load_size: int | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, crops_per_pair: int = 1, augment: bool = True,
                 eval_crops: str = "center") -> None:
        BaseImageDataset.__init__(self, split, image_size, channels)
        if direction not in DIRECTIONS:
            raise ConfigError(f"AlignedImageDataset: direction must be one of {DIRECTIONS}, got {direction!r}")
        if eval_crops not in ("center", "full"):
            raise ConfigError(f"eval_crops must be 'center' or 'full', got {eval_crops!r}")
        if load_size is not None and int(load_size) < image_size:
            raise ConfigError(f"load_size={load_size} is smaller than the {image_size} px crops")
        self.direction, self.load_size = direction, None if load_size is None else int(load_size)
        self.scale, self.seed, self.eval_crops = 1, int(seed), eval_crops
        self.augment, self.crops_per_pair = bool(augment), int(crops_per_pair)
        self.variable_size = split != "train" and eval_crops == "full"
        self.root = Path(os.path.expanduser(str(root)))
        how = (f"Put A|B files (A and B side by side, as the pix2pix datasets) in {self.root}/{{train,val,test}}/ "
               f"or directly in {self.root}/.")
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"aligned data: folder {self.root} does not exist. {how}")
        if any((self.root / s).is_dir() for s in STANDARD_SPLITS):
            folder = self.root / split
            if split == "test" and not folder.is_dir():
                folder = self.root / "val"
            if not folder.is_dir():
                raise DatasetNotFoundError(f"aligned data: no {split} folder {folder}. {how}")
            files = self._files(folder)
        else:
            files = self._files(self.root)
            files = [files[i] for i in split_permutation(len(files), self.seed, val_fraction, test_fraction)[split]]
        if not files:
            raise DatasetNotFoundError(f"aligned data: no image files for the {split} split under {self.root}. {how}")
        self.pairs = [(p.relative_to(self.root).with_suffix("").as_posix(), p, p) for p in files]
        self.sizes = [self._check_file(p) for p in files]
        if split == "train" or eval_crops == "center":
            for p, (h, w) in zip(files, self.sizes):
                if self.load_size is None and min(h, w) < image_size:
                    raise ConfigError(f"{p} holds {h}x{w} halves, smaller than the {image_size}x{image_size} "
                                      "crops: lower data.image_size or set data.dataset.load_size")

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]

    def _check_file(self, path: Path) -> tuple[int, int]:
        """The size ``(h, w)`` of each half of ``path``, checked without decoding the pixels."""
        h, w = image_size_of(path, self.channels)
        if w % 2:
            split_aligned(np.empty((0, w)), path)  # the error naming the file
        return h, w // 2

    def fingerprint(self) -> str:
        return files_fingerprint(self.root, [p.relative_to(self.root).as_posix() for _, p, _ in self.pairs])

    def _load(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.pairs[p][1]
        a, b = split_aligned(self._read(path), path)
        if self.load_size is not None:
            a, b = (self._resize(x) for x in (a, b))
        return (a, b) if self.direction == "AtoB" else (b, a)

    def _resize(self, x: np.ndarray) -> np.ndarray:
        s = self.load_size
        img = Image.fromarray(x[..., 0] if self.channels == 1 else x).resize((s, s), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8).reshape(s, s, self.channels)
