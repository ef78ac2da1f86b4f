"""CIFAR-10 from the official python pickle batches (``cifar-10-batches-py``).

torchvision's ``CIFAR10`` md5-checks every batch when it is constructed, which rejects anything but
the exact official files; mmexp reads the (same) pickle layout itself and uses torchvision only to
download (``download: true``). The pickles are the official distribution format: only point
``root`` at files you trust (unpickling can run code).
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mmexp.errors import DatasetNotFoundError

from .base import DatasetFormatError, LabelledArrayDataset

__all__ = ["CIFAR10Dataset", "CIFAR10_CLASSES", "CIFAR10_FOLDER", "read_cifar_batch"]

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCHES = ("test_batch",)
_HOW = (
    "Set data.download=true to download it with torchvision (into data.root), or unpack "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz so that data.root/cifar-10-batches-py/ holds "
    "data_batch_1..5, test_batch and batches.meta."
)


def _str_keys(d: dict) -> dict[str, Any]:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 pickle batch -> (uint8 images ``[N, 32, 32, 3]``, int64 labels ``[N]``).

    Accepts the official (python 2, latin1) pickles and python 3 ones with bytes or str keys.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"CIFAR-10 batch {path} does not exist. {_HOW}")
    try:
        with open(path, "rb") as f:
            d = _str_keys(pickle.load(f, encoding="latin1"))
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except Exception as e:
        raise DatasetFormatError(
            f"cannot read CIFAR-10 batch {path} (expected a pickled dict with 'data' and 'labels'): "
            f"{type(e).__name__}: {e}"
        ) from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetFormatError(
            f"{path}: expected 'data' of shape [N, 3072] and N labels, got {data.shape} and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


@functools.lru_cache(maxsize=4)
def _load(folder: str, names: tuple[str, ...], stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(Path(folder) / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class CIFAR10Dataset(LabelledArrayDataset):
    """CIFAR-10: 32x32 colour photos in 10 classes (50k train incl. val, 10k test).

    Args:
        root: directory containing ``cifar-10-batches-py/`` (``root`` may also be that folder itself).
        split: ``train``, ``val`` (the last ``val_size`` images of ``data_batch_1..5``) or ``test``.
        image_size: output side (bicubic resize when not 32).
        channels: 3, or 1 (grayscale luma).
        val_size: images held out from train for ``val``.
        download: download with torchvision when missing.

    Items: ``image``, ``label``, ``caption`` (``"a photo of an airplane"``), ``index``.
    """

    name = "cifar10"
    classes = CIFAR10_CLASSES
    resample = "bicubic"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 32,
        channels: int = 3,
        val_size: int = 5000,
        download: bool = False,
    ) -> None:
        super().__init__(split, image_size, channels)
        self.root = Path(os.path.expanduser(str(root)))
        folder = self._find()
        if folder is None:
            if not download:
                state = "does not exist" if not self.root.exists() else f"has no complete {CIFAR10_FOLDER}/"
                raise DatasetNotFoundError(f"CIFAR-10 not found: {self.root} {state}. {_HOW}")
            self._download()
            folder = self._find()
            if folder is None:
                raise DatasetNotFoundError(f"CIFAR-10 not found in {self.root} even after downloading. {_HOW}")
        self.folder = folder
        names = _TEST_BATCHES if split == "test" else _TRAIN_BATCHES
        stamp = tuple((folder / n).stat().st_mtime_ns for n in names)
        images, labels = _load(str(folder), names, stamp)
        if len(labels) and (labels.min() < 0 or labels.max() >= 10):
            raise DatasetFormatError(f"CIFAR-10 labels in {folder} are outside 0..9")
        self.set_rows(images, labels, val_size, source=str(folder))

    def _find(self) -> Path | None:
        for d in (self.root / CIFAR10_FOLDER, self.root):
            if all((d / n).is_file() for n in _TRAIN_BATCHES + _TEST_BATCHES):
                return d
        return None

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(self.root), train=True, download=True)
        except Exception as e:
            raise DatasetNotFoundError(f"downloading CIFAR-10 into {self.root} failed: {type(e).__name__}: {e}. {_HOW}") from e

    @staticmethod
    def caption_for(label: int) -> str:
        name = CIFAR10_CLASSES[int(label)]
        return f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}"

    def extra_repr(self) -> str:
        return f"root={str(self.folder)!r}"
