"""Fashion-MNIST from its original IDX files (e.g. Debian's ``dataset-fashion-mnist`` package)."""

from __future__ import annotations

import os

from .mnist import IDXImageDataset

__all__ = ["FashionMNISTDataset", "FASHION_CLASSES"]

#: Official class names, in label order.
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_PHRASES: tuple[str, ...] = (
    "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
    "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot",
)


class FashionMNISTDataset(IDXImageDataset):
    """Zalando's Fashion-MNIST: 28x28 grayscale clothing photos in 10 classes.

    Reads ``train-images-idx3-ubyte(.gz)``, ``train-labels-idx1-ubyte(.gz)``,
    ``t10k-images-idx3-ubyte(.gz)`` and ``t10k-labels-idx1-ubyte(.gz)`` from ``root`` (or
    ``root/FashionMNIST/raw``, torchvision's layout). ``val`` is the last ``val_size`` images of the
    train files; ``test`` is ``t10k``. Items: ``image``, ``label`` (see :data:`FASHION_CLASSES`),
    ``caption`` (``"a photo of a sneaker"``, ``"a photo of a pair of trousers"``), ``index``.
    """

    name = "fashion_mnist"
    classes = FASHION_CLASSES
    torchvision_name = "FashionMNIST"
    how_to_get = (
        "Install it with `apt-get install dataset-fashion-mnist` (Debian; files go to "
        "/usr/share/datasets/fashion-mnist), or download the four files from "
        "https://github.com/zalandoresearch/fashion-mnist and set data.root=..., "
        "or set data.download=true to download with torchvision."
    )

    def __init__(
        self,
        root: str | os.PathLike = "/usr/share/datasets/fashion-mnist",
        split: str = "train",
        image_size: int = 28,
        channels: int = 1,
        val_size: int = 5000,
        download: bool = False,
    ) -> None:
        super().__init__(root, split, image_size, channels, val_size, download)

    def caption_for(self, label: int) -> str:
        return f"a photo of {_PHRASES[int(label)]}"
