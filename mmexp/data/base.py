"""Common base for mmexp datasets: split names, the item contract, and shared error helpers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mmexp.errors import DatasetFormatError, ConfigError, DatasetNotFoundError

from .transforms import check_channels, check_image_size

__all__ = ["SPLITS", "STANDARD_SPLITS", "BaseImageDataset", "DatasetFormatError", "LabelledArrayDataset", "check_split", "split_permutation",
           "open_image", "files_fingerprint"]

#: Every split name. ``compositional`` holds scenes made of combinations held out of the other three (see
#: ``ShapesDataset(holdout=...)``); only datasets that list it in their ``splits`` have it. The position of a
#: name is part of the seeds derived from it, so names are only ever appended.
SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")

#: The splits every dataset has.
STANDARD_SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`; otherwise raise :class:`ConfigError`."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def split_permutation(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Deterministically partition ``range(n)`` into sorted train/val/test index arrays.

    The permutation depends only on ``(n, seed)``. A positive fraction always gets at least one item
    (when there are enough items); train must keep at least one item.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 else 0
    n_test = max(1, int(round(test_fraction * n))) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise ConfigError(
            f"only {n} items: cannot hold out {n_val} for val and {n_test} for test and keep any for train; "
            "lower val_fraction/test_fraction or add data"
        )
    perm = np.random.default_rng(np.random.SeedSequence([_u64(seed), n])).permutation(n)
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


def _u64(seed: int) -> int:
    return int(seed) % (1 << 64)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, raising :class:`DatasetFormatError` naming the file on failure."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if img.mode != "P" else img.convert("RGBA")
    except FileNotFoundError:
        raise DatasetNotFoundError(f"image file {path} does not exist (was it deleted after the dataset was indexed?)")
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise DatasetFormatError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e


def files_fingerprint(root: str | os.PathLike, files: Iterable[str]) -> str:
    """A cheap fingerprint of the files ``root/f`` for ``f`` in ``files``: a hash of each one's relative
    path, size and modification time (no content is read). It changes when a file is added,
    removed, replaced or edited in place, which the dataset's config does not show."""
    h = hashlib.sha256()
    for rel in files:
        st = os.stat(os.path.join(root, rel))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


class BaseImageDataset(Dataset):
    """Base class of mmexp datasets.

    ``__getitem__`` returns a dict following ``docs/interfaces.md``: ``image`` (float32
    ``[C, H, W]`` in ``[-1, 1]``), ``index`` (int) and the optional keys listed in ``provides``.

    Subclasses set the class attributes ``name`` (short id such as ``"shapes"``) and ``provides``
    (may be overridden per instance when keys depend on arguments), ``num_classes`` (``None``
    for datasets without class labels) and, beyond ``train``/``val``/``test``, ``splits``.
    """

    name: ClassVar[str] = "dataset"
    provides: tuple[str, ...] = ("image", "index")
    num_classes: int | None = None
    #: the splits this dataset has (a subset of :data:`SPLITS`)
    splits: ClassVar[tuple[str, ...]] = STANDARD_SPLITS

    def __init__(self, split: str, image_size: int, channels: int) -> None:
        super().__init__()
        self.split = check_split(split)
        if split not in self.splits:
            raise ConfigError(
                f"{type(self).__name__} has no {split!r} split (it has {', '.join(self.splits)})"
                + ("; held-out combinations exist only for data=shapes with data.dataset.holdout=[...]"
                   if split == "compositional" else ""))
        self.image_size = check_image_size(image_size)
        self.channels = check_channels(channels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every ``image`` this dataset returns."""
        return (self.channels, self.image_size, self.image_size)

    def fingerprint(self) -> str | None:
        """What identifies this split's images beyond the config (used in reference-statistics cache
        keys): a :func:`files_fingerprint` for datasets read from image files, None for those the
        config fully determines."""
        return None

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__}(split={self.split!r}) of length {n}")
        return int(index) % n if n else int(index)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra = f", {extra}" if extra else ""
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, "
            f"image_shape={self.image_shape}{extra})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def captions(self) -> list[str]:
        """Every item's caption in index order (``[]`` without captions): what a text encoder's vocabulary and
        embedding cache are built from. Subclasses that hold captions without decoding images override it."""
        if "caption" not in self.provides:
            return []
        return [self[i]["caption"] for i in range(len(self))]


def require_dir(path: str | os.PathLike, what: str, how: str) -> Path:
    """Return ``Path(path)`` if it is a directory, else raise :class:`DatasetNotFoundError`.

    ``what`` names the dataset, ``how`` says how to obtain the data.
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.is_dir():
        raise DatasetNotFoundError(f"{what} not found: directory {p} does not exist. {how}")
    return p


class LabelledArrayDataset(BaseImageDataset):
    """Base of datasets read into memory as uint8 images with integer class labels (MNIST, Fashion-MNIST,
    CIFAR-10): ``train`` and ``val`` split the training files (``val`` = the *last* ``val_size`` images),
    ``test`` is the test files. Subclasses read their files, call :meth:`set_rows`, and define ``classes``,
    ``caption_for(label)`` and ``resample`` (used when ``image_size`` differs from the files').

    Items: ``image``, ``label``, ``caption``, ``index``.
    """

    provides = ("image", "label", "caption", "index")
    classes: ClassVar[tuple[str, ...]] = ()
    resample: ClassVar[str] = "bilinear"

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.classes)

    def set_rows(self, images: np.ndarray, labels: np.ndarray, val_size: int, source: str) -> None:
        """Keep the rows of this split from the train (``train``/``val``) or test (``test``) arrays."""
        n = len(images)
        if self.split == "test":
            rows = slice(0, n)
        else:
            if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < n:
                raise ConfigError(f"val_size must be an integer in [0, {n}) ({source} has {n} training images), "
                                  f"got {val_size!r}")
            rows = slice(0, n - val_size) if self.split == "train" else slice(n - val_size, n)
        self.val_size = val_size
        self._images, self._labels = images[rows], labels[rows]

    def caption_for(self, label: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def captions(self) -> list[str]:
        return [self.caption_for(int(label)) for label in self._labels]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from .transforms import prepare_image

        index = self._check_index(index)
        label = int(self._labels[index])
        img = Image.fromarray(np.asarray(self._images[index]))
        return {
            "image": prepare_image(img, self.image_size, self.channels, resample=self.resample),
            "label": label,
            "caption": self.caption_for(label),
            "index": index,
        }
