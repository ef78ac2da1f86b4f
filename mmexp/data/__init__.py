"""mmexp data layer: datasets returning dict items, and the ``ImageDataModule`` wrapping them.

Item / batch contract (``docs/interfaces.md``): ``image`` float32 ``[C, H, W]`` in ``[-1, 1]``,
``index`` int64, and per dataset (its ``provides``) ``label`` int64, ``caption`` str (a
``list[str]`` in batches), ``mask`` float32 ``[1, H, W]`` in {0, 1}, ``attributes`` int64 ``[40]``,
``frames`` ``[T, C, H, W]`` (clips), ``input``/``target`` (paired data), ``name`` str.
"""

from .aligned import AlignedImageDataset
from .base import SPLITS, BaseImageDataset, DatasetFormatError
from .celeba import CelebADataset
from .cifar10 import CIFAR10Dataset
from .datamodule import ImageDataModule
from .digits import DigitsDataset
from .fashion_mnist import FashionMNISTDataset
from .folder import ImageFolderDataset
from .idx import read_idx, write_idx
from .loaders import EpochSampler, ResumableDataLoader
from .mnist import MNISTDataset
from .paired import PairedImageDataset
from .photos import PhotoDataset
from .shapes import ShapesDataset
from .video import MovingShapesDataset, VideoClipDataset

__all__ = [
    "SPLITS",
    "AlignedImageDataset",
    "BaseImageDataset",
    "CIFAR10Dataset",
    "CelebADataset",
    "DatasetFormatError",
    "DigitsDataset",
    "EpochSampler",
    "FashionMNISTDataset",
    "ImageDataModule",
    "ImageFolderDataset",
    "MNISTDataset",
    "MovingShapesDataset",
    "PairedImageDataset",
    "PhotoDataset",
    "ResumableDataLoader",
    "ShapesDataset",
    "VideoClipDataset",
    "read_idx",
    "write_idx",
]
