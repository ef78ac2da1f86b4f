"""The batch contract: every batch is a dict, and these are its keys.

Datasets declare the keys they provide (``provides``), degradations the keys they add, models the keys
they consume (``required_keys``); :func:`check_keys` fails early, naming the key and what was provided.
Images are float32 in ``[-1, 1]``; ``B`` is the batch size, ``C`` 1 or 3 channels.

This module is the one place the keys are defined; ``docs/interfaces.md`` repeats the table for readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mmexp.errors import MissingBatchKeyError

#: key -> (type and shape in a batch, meaning)
KEYS: dict[str, tuple[str, str]] = {
    "image": ("float32 [B, C, H, W] in [-1, 1]", "the (clean) image; always present"),
    "index": ("int64 [B]", "position in the dataset: seeds per-sample randomness, pairs outputs with files"),
    "label": ("int64 [B]", "class index (datasets with classes; shapes: the first object's shape)"),
    "attributes": ("int64 [B, A] in {0, 1}", "binary attributes (CelebA: A = 40)"),
    "caption": ("list[str] of length B", "an English description of the image"),
    "mask": ("float32 [B, 1, H, W] in {0, 1}", "1 = object / foreground pixel (shapes' object mask)"),
    "hole": ("float32 [B, 1, H, W] in {0, 1}", "1 = pixel to fill (inpainting); not the object mask"),
    "input": ("float32 [B, C, h, w] in [-1, 1]", "degraded input of a restoration model (h, w: e.g. H/scale)"),
    "target": ("float32 [B, C, H, W] in [-1, 1]", "what a restoration model should output"),
    "frames": ("float32 [B, T, C, H, W] in [-1, 1]", "a clip of T frames (one item: [T, C, H, W])"),
    "name": ("list[str] of length B", "the item's source name (file path without suffix) for data read from files"),
}


def check_keys(batch_keys: Iterable[str], required: Iterable[str], consumer: str, provider: str = "the data") -> None:
    """Raise :class:`MissingBatchKeyError` naming the first of ``required`` missing from ``batch_keys``."""
    available = sorted(batch_keys)
    for key in required:
        if key not in available:
            meaning = KEYS.get(key, ("", "a key outside the contract"))[1]
            raise MissingBatchKeyError(
                f"{consumer} needs batch key {key!r} ({meaning}), but {provider} provides only {available}; "
                f"choose data (or a degradation) that provides {key!r}")


def batch_size(batch: Mapping[str, Any]) -> int:
    """``B`` of a batch (from ``image``, else the first tensor or list)."""
    value = batch.get("image")
    if value is None:
        value = next(v for v in batch.values() if hasattr(v, "__len__"))
    return len(value)
