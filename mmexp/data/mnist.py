"""MNIST (and the shared code of IDX-file datasets such as Fashion-MNIST).

Files are read with mmexp's own IDX reader (``.gz`` or uncompressed, magic numbers checked), from
any of ``root``, ``root/<Name>/raw`` (torchvision's layout) or ``root/raw``. torchvision is used
only to download (``download: true``), into ``root/<Name>/raw``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from mmexp.errors import DatasetNotFoundError

from .base import DatasetFormatError, LabelledArrayDataset
from .idx import read_idx_cached

__all__ = ["IDXImageDataset", "MNISTDataset", "MNIST_FILES"]

#: split file -> (images, labels) base names, as distributed (add ``.gz`` for the compressed files).
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IDXImageDataset(LabelledArrayDataset):
    """Base of 28x28 grayscale classification datasets stored as the four (Fashion-)MNIST IDX files.

    ``train``/``val`` come from the train files (val = the *last* ``val_size`` images), ``test`` is
    the ``t10k`` files. Subclasses set ``classes``, ``torchvision_name`` (torchvision class and
    sub-folder), ``how_to_get`` (install hint) and implement :meth:`caption_for`.

    Args:
        root: directory holding the files (see the module docstring for the accepted layouts).
        split: ``train``, ``val`` or ``test``.
        image_size: output side; resized bilinearly when not 28.
        channels: 1, or 3 (gray repeated).
        val_size: number of train images held out for ``val``.
        download: download with torchvision when the files are missing.
    """

    torchvision_name: ClassVar[str] = ""
    how_to_get: ClassVar[str] = ""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 28,
        channels: int = 1,
        val_size: int = 5000,
        download: bool = False,
    ) -> None:
        super().__init__(split, image_size, channels)
        self.root = Path(os.path.expanduser(str(root)))
        directory = self._find_files()
        if directory is None:
            if not download:
                raise DatasetNotFoundError(self._missing_message())
            self._download()
            directory = self._find_files()
            if directory is None:
                raise DatasetNotFoundError(self._missing_message() + " (a download was attempted)")
        self.directory = directory
        which = "test" if split == "test" else "train"
        img_path, lbl_path = (self._resolve(directory, name) for name in MNIST_FILES[which])
        images, labels = read_idx_cached(img_path), read_idx_cached(lbl_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetFormatError(f"{img_path} should hold uint8 images [N, H, W], got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetFormatError(
                f"{lbl_path} should hold {len(images)} labels to match {img_path}, got shape {labels.shape}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DatasetFormatError(f"{lbl_path} has labels outside 0..{len(self.classes) - 1}")
        self.set_rows(images, labels, val_size, source=str(img_path))

    # -- files --------------------------------------------------------------------------------
    def _candidate_dirs(self) -> list[Path]:
        return [self.root, self.root / self.torchvision_name / "raw", self.root / "raw"]

    @staticmethod
    def _resolve(directory: Path, name: str) -> Path | None:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _find_files(self) -> Path | None:
        needed = [name for pair in MNIST_FILES.values() for name in pair]
        for d in self._candidate_dirs():
            if all(self._resolve(d, name) is not None for name in needed):
                return d
        return None

    def _missing_message(self) -> str:
        names = ", ".join(f"{a}[.gz], {b}[.gz]" for a, b in MNIST_FILES.values())
        where = " or ".join(str(d) for d in self._candidate_dirs()[:2])
        state = "does not exist" if not self.root.exists() else "does not contain them"
        return (
            f"{type(self).__name__}: files not found under {self.root} ({state}). Expected {names} in {where}. "
            f"{self.how_to_get}"
        )

    def _download(self) -> None:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.torchvision_name)
        try:
            for train in (True, False):
                cls(str(self.root), train=train, download=True)
        except Exception as e:  # network errors, checksum errors...
            raise DatasetNotFoundError(
                f"downloading {self.torchvision_name} into {self.root / self.torchvision_name / 'raw'} failed: "
                f"{type(e).__name__}: {e}. {self.how_to_get}"
            ) from e

    def extra_repr(self) -> str:
        return f"root={str(self.directory)!r}"


class MNISTDataset(IDXImageDataset):
    """MNIST handwritten digits (60k train incl. val, 10k test). Caption: ``"a handwritten digit 7"``.

    Default ``root`` in configs: ``${paths.data_dir}/mnist``; torchvision downloads to
    ``root/MNIST/raw`` with ``data.download=true``.
    """

    name = "mnist"
    classes = tuple(str(i) for i in range(10))
    torchvision_name = "MNIST"
    how_to_get = (
        "Set data.download=true to download it with torchvision, or put the four files (from "
        "https://ossci-datasets.s3.amazonaws.com/mnist/) there and set data.root=..."
    )

    def caption_for(self, label: int) -> str:
        return f"a handwritten digit {int(label)}"
