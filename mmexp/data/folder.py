"""``ImageFolderDataset``: any folder of images, optional captions sidecar and folder-name labels."""

from __future__ import annotations

import csv
import json
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmexp.errors import ConfigError, DatasetNotFoundError

from .base import BaseImageDataset, DatasetFormatError, files_fingerprint, open_image, require_dir, split_permutation
from .transforms import prepare_image

__all__ = ["ImageFolderDataset", "IMAGE_EXTENSIONS", "read_captions"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_HOW = "Point data.root at a folder of images (searched recursively)."


def _norm(rel: str) -> str:
    return posixpath.normpath(rel.replace("\\", "/"))


def read_captions(path: str | os.PathLike, root: str | os.PathLike) -> dict[str, str]:
    """Read a captions sidecar into {path relative to ``root`` (posix): caption}.

    Formats (by extension):

    * ``.jsonl``: one JSON object per line with ``file_name`` and ``text`` (or ``caption``), as
      Hugging Face ``imagefolder``'s ``metadata.jsonl``;
    * ``.csv``: a header row with ``file_name`` and ``text`` (or ``caption``) columns (``metadata.csv``);
    * anything else (``.txt``, ``.tsv``): ``file<TAB>caption`` per line.

    File names are relative to the sidecar's own folder (as in Hugging Face's layout).
    """
    path, root = Path(path), Path(root)
    base = path.parent.resolve().relative_to(root.resolve()) if path.parent.resolve() != root.resolve() else Path()
    pairs: list[tuple[str, str, int]] = []
    try:
        if path.suffix.lower() == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        text = rec["text"] if "text" in rec else rec["caption"]
                        pairs.append((str(rec["file_name"]), str(text), lineno))
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise DatasetFormatError(
                            f"{path}:{lineno}: expected a JSON object with 'file_name' and 'text' (or 'caption'): {e}"
                        ) from e
        elif path.suffix.lower() == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                cols = reader.fieldnames or []
                text_col = "text" if "text" in cols else "caption" if "caption" in cols else None
                if "file_name" not in cols or text_col is None:
                    raise DatasetFormatError(f"{path}: the CSV header must have 'file_name' and 'text' (or 'caption'), got {cols}")
                for lineno, row in enumerate(reader, 2):
                    pairs.append((row["file_name"], row[text_col] or "", lineno))
        else:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    line = line.rstrip("\r\n")
                    if not line.strip():
                        continue
                    if "\t" not in line:
                        raise DatasetFormatError(f"{path}:{lineno}: expected 'file<TAB>caption', got {line[:120]!r}")
                    name, text = line.split("\t", 1)
                    pairs.append((name, text, lineno))
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path} is not UTF-8 text: {e}") from e
    out: dict[str, str] = {}
    for name, text, _ in pairs:
        out[(base / _norm(name.strip())).as_posix()] = text.strip()
    return out


class ImageFolderDataset(BaseImageDataset):
    """Images found recursively under ``root`` (sorted by relative path), split deterministically.

    Args:
        root: the folder.
        split: ``train``, ``val`` or ``test``; a permutation fixed by ``seed`` assigns
            ``test_fraction`` of the files to test, ``val_fraction`` to val, the rest to train.
        image_size: output side; images are centre-cropped to a square (``center_crop=True``) then
            resized (bicubic, antialiased).
        channels: 3 (RGB) or 1 (grayscale); alpha is dropped.
        extensions: file suffixes to include (case-insensitive).
        captions: ``None`` or a sidecar file (relative to ``root`` or absolute), see :func:`read_captions`.
            Every image must have a caption; files named in the sidecar but absent are ignored.
        labels: if true, ``label`` is the index of the first-level sub-folder name (sorted) and
            ``classes`` lists the names; images directly in ``root`` are then an error.
        val_fraction, test_fraction: split fractions (a positive fraction gets at least one image).
        seed: split seed.
        center_crop: crop the largest centred square before resizing (else the aspect ratio changes).

    Items: ``image``, ``index``, ``caption`` (with ``captions``), ``label`` (with ``labels``),
    ``path`` is available through :meth:`path` (not in batches). An unreadable image raises
    :class:`~mmexp.data.base.DatasetFormatError` naming the file.
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 64,
        channels: int = 3,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        captions: str | os.PathLike | None = None,
        labels: bool = False,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
        center_crop: bool = True,
    ) -> None:
        super().__init__(split, image_size, channels)
        self.root = require_dir(root, "image folder", _HOW)
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        if not exts:
            raise ConfigError("extensions must list at least one file suffix such as .png")
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                if not fn.startswith(".") and fn.lower().endswith(exts):
                    files.append((Path(dirpath) / fn).relative_to(self.root).as_posix())
        files.sort()
        if not files:
            raise DatasetNotFoundError(f"no images with extensions {list(exts)} found under {self.root}. {_HOW}")
        self.all_files = files
        idx = split_permutation(len(files), seed, val_fraction, test_fraction)[split]
        self.files = [files[i] for i in idx]
        self.center_crop = bool(center_crop)
        self.seed = int(seed)

        self.classes: tuple[str, ...] | None = None
        self._labels: list[int] | None = None
        if labels:
            top = [f for f in files if "/" not in f]
            if top:
                raise ConfigError(
                    f"labels=true takes class names from the first-level sub-folders of {self.root}, but "
                    f"{len(top)} images lie directly in it (e.g. {top[0]}); move them into class folders or set labels=false"
                )
            self.classes = tuple(sorted({f.split("/", 1)[0] for f in files}))
            self._labels = [self.classes.index(f.split("/", 1)[0]) for f in self.files]

        self._captions: list[str] | None = None
        if captions is not None:
            cpath = Path(os.path.expanduser(str(captions)))
            cpath = cpath if cpath.is_absolute() else self.root / cpath
            if not cpath.is_file():
                raise DatasetNotFoundError(f"captions file {cpath} does not exist (data.captions={str(captions)!r})")
            table = read_captions(cpath, self.root)
            missing = [f for f in files if f not in table]
            if missing:
                raise DatasetFormatError(
                    f"{cpath} has no caption for {len(missing)} of {len(files)} images, e.g. {missing[0]!r}; "
                    "every image needs one (file names are relative to the captions file's folder)"
                )
            self._captions = [table[f] for f in self.files]

        keys = ["image"]
        if self._labels is not None:
            keys.append("label")
        if self._captions is not None:
            keys.append("caption")
        self.provides = (*keys, "index")
        self.num_classes = None if self.classes is None else len(self.classes)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """:func:`~mmexp.data.base.files_fingerprint` of this split's files (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = files_fingerprint(self.root, self.files)
        return self._fingerprint

    def captions(self) -> list[str]:
        return list(self._captions or [])

    def path(self, index: int) -> Path:
        """Absolute path of item ``index``."""
        return self.root / self.files[self._check_index(index)]

    def extra_repr(self) -> str:
        return f"root={str(self.root)!r}, classes={None if self.classes is None else len(self.classes)}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        img = open_image(self.root / self.files[index])
        item: dict[str, Any] = {
            "image": prepare_image(
                img, self.image_size, self.channels, crop="square" if self.center_crop else None, resample="bicubic"
            ),
            "index": index,
        }
        if self._labels is not None:
            item["label"] = self._labels[index]
        if self._captions is not None:
            item["caption"] = self._captions[index]
        return item
