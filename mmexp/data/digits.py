"""``DigitsDataset``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, offline)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .base import BaseImageDataset, split_permutation
from .transforms import float_array_to_tensor

__all__ = ["DigitsDataset"]



@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, never downloads

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


class DigitsDataset(BaseImageDataset):
    """The UCI optical-recognition digits bundled with scikit-learn (``load_digits``).

    The 8x8 images (values 0..16) are resized bilinearly (in float, no 8-bit rounding) to
    ``image_size`` and mapped to ``[-1, 1]`` (0 -> -1, 16 -> 1); ``channels=3`` repeats the gray
    channel. The 1,797 images are split by a permutation fixed by ``seed`` into train / val / test
    (default 80 / 10 / 10 %, not stratified).

    Items: ``image``, ``label`` (the digit, ``num_classes = 10``), ``caption``
    (``"a handwritten digit 7"``), ``index``.
    """

    name = "digits"
    provides = ("image", "label", "caption", "index")
    num_classes = 10
    classes = tuple(str(i) for i in range(10))

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        channels: int = 1,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ) -> None:
        super().__init__(split, image_size, channels)
        images, targets = _load_digits()
        self.seed = int(seed)
        self.indices = split_permutation(len(images), self.seed, val_fraction, test_fraction)[split]
        self._images = images
        self._targets = targets

    def __len__(self) -> int:
        return len(self.indices)

    @staticmethod
    def caption_for(label: int) -> str:
        """``"a handwritten digit 7"``."""
        return f"a handwritten digit {int(label)}"

    def captions(self) -> list[str]:
        return [self.caption_for(int(self._targets[int(j)])) for j in self.indices]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        j = int(self.indices[index])
        label = int(self._targets[j])
        return {
            "image": float_array_to_tensor(self._images[j], 0.0, 16.0, self.image_size, self.channels, "bilinear"),
            "label": label,
            "caption": self.caption_for(label),
            "index": index,
        }
