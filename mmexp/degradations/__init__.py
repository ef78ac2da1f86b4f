"""Degradations: what turns a clean batch into a restoration problem (``input``, ``target``, ``hole``).

Config group ``degradation=`` (``conf/degradation/``), applied by ``ImageDataModule`` on the device after
collation with per-sample seeds; see ``docs/interfaces.md`` and :mod:`mmexp.degradations.base`.
"""

from .base import Compose, Degradation, Sample, derive_stage_seed, generator
from .blur import GaussianBlur, gaussian_kernel
from .jpeg import JPEG, jpeg_roundtrip
from .masks import BoxMask, FileMask, FreeFormMask, MaskDegradation, MixedMask, ObjectMask, OutpaintMask
from .noise import GaussianNoise, sigma_to_unit_range
from .resize import Downsample, RandomResize, imresize, resize_matrix
from .translation import EdgeMap, ObjectMaskMap, canny_edges

__all__ = [
    "BoxMask",
    "Compose",
    "Degradation",
    "Downsample",
    "EdgeMap",
    "FileMask",
    "FreeFormMask",
    "GaussianBlur",
    "GaussianNoise",
    "JPEG",
    "MaskDegradation",
    "MixedMask",
    "ObjectMask",
    "ObjectMaskMap",
    "OutpaintMask",
    "RandomResize",
    "Sample",
    "canny_edges",
    "derive_stage_seed",
    "gaussian_kernel",
    "generator",
    "imresize",
    "jpeg_roundtrip",
    "resize_matrix",
    "sigma_to_unit_range",
]
