"""CelebA (aligned & cropped faces) from the official files, with attribute-based captions.

Expected layout (the official Google-Drive/Baidu distribution, unpacked), in ``root`` or
``root/celeba`` (torchvision's layout)::

    img_align_celeba/000001.jpg ... 202599.jpg     (178 x 218 JPEGs)
    list_eval_partition.txt                        ("000001.jpg 0"; 0 train, 1 val, 2 test)
    list_attr_celeba.txt                           (count line, 40 attribute names, then
                                                    "000001.jpg -1  1  1 ..." per image)

mmexp parses these itself (torchvision md5-checks the files, rejecting fixtures and mirrors).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmexp.errors import ConfigError, DatasetNotFoundError

from .base import BaseImageDataset, DatasetFormatError, files_fingerprint, open_image
from .transforms import prepare_image

__all__ = ["CelebADataset", "CELEBA_ATTRIBUTES", "celeba_caption", "read_celeba_attributes", "read_celeba_partition"]

#: The 40 attributes, in file order.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_IMAGES = "img_align_celeba"
_PARTITION = "list_eval_partition.txt"
_ATTRS = "list_attr_celeba.txt"
_HOW = (
    "Download img_align_celeba.zip, list_eval_partition.txt and list_attr_celeba.txt from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive 'Align&Cropped Images' and 'Anno'/'Eval'), "
    "unpack them into one folder and set data.root=<that folder>."
)

# Caption vocabulary ----------------------------------------------------------------------------
_ADJECTIVES = (("Smiling", "smiling"), ("Chubby", "chubby"), ("Pale_Skin", "pale-skinned"), ("Young", "young"), ("Bald", "bald"))
_HAIR_COLOURS = (("Black_Hair", "black"), ("Blond_Hair", "blond"), ("Brown_Hair", "brown"), ("Gray_Hair", "gray"))
_FACIAL_HAIR = (
    ("Goatee", "a goatee"), ("Mustache", "a mustache"), ("Sideburns", "sideburns"),
    ("5_o_Clock_Shadow", "a five o'clock shadow"),
)
_FEATURES = (
    ("Arched_Eyebrows", "arched eyebrows"), ("Bushy_Eyebrows", "bushy eyebrows"), ("Narrow_Eyes", "narrow eyes"),
    ("Bags_Under_Eyes", "bags under the eyes"), ("High_Cheekbones", "high cheekbones"), ("Rosy_Cheeks", "rosy cheeks"),
    ("Oval_Face", "an oval face"), ("Double_Chin", "a double chin"), ("Big_Nose", "a big nose"),
    ("Pointy_Nose", "a pointy nose"), ("Big_Lips", "big lips"), ("Mouth_Slightly_Open", "a slightly open mouth"),
    ("Heavy_Makeup", "heavy makeup"),
)
_WEARING = (
    ("Wearing_Hat", "a hat"), ("Wearing_Earrings", "earrings"), ("Wearing_Necklace", "a necklace"),
    ("Wearing_Necktie", "a necktie"), ("Wearing_Lipstick", "lipstick"),
)


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def celeba_caption(attributes: Mapping[str, Any] | Sequence[int]) -> str:
    """English caption from CelebA attributes (a name -> bool mapping, or 40 values in file order,
    1/True = present; ``-1``/0/False = absent).

    Mapping: ``Male`` picks *man*/*woman*; ``Smiling``, ``Chubby``, ``Pale_Skin``, ``Young``, ``Bald``
    become adjectives; hair colour (first of black/blond/brown/gray) and texture (wavy/straight),
    ``Bangs``, ``Receding_Hairline``, ``Eyeglasses``, facial hair (``No_Beard`` absent -> "a beard",
    goatee, mustache, sideburns, five o'clock shadow) and the face features follow "with"; hats,
    earrings, necklaces, neckties and lipstick follow "wearing"; ``Blurry`` makes it "a blurry photo".
    ``Attractive`` is subjective and deliberately not used.

    Example: ``"a photo of a smiling young woman with wavy black hair and eyeglasses, wearing earrings"``.
    """
    if not isinstance(attributes, Mapping):
        values = list(attributes)
        if len(values) != len(CELEBA_ATTRIBUTES):
            raise ValueError(f"expected {len(CELEBA_ATTRIBUTES)} attribute values, got {len(values)}")
        attributes = dict(zip(CELEBA_ATTRIBUTES, values))
    unknown = set(attributes) - set(CELEBA_ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown CelebA attributes {sorted(unknown)}")

    def has(name: str) -> bool:
        return int(attributes.get(name, 0)) > 0

    words = [adj for key, adj in _ADJECTIVES if has(key)] + ["man" if has("Male") else "woman"]
    subject = ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)
    with_: list[str] = []
    if not has("Bald"):
        colour = next((c for key, c in _HAIR_COLOURS if has(key)), None)
        texture = "wavy" if has("Wavy_Hair") else "straight" if has("Straight_Hair") else None
        if colour or texture:
            with_.append(" ".join(w for w in (texture, colour, "hair") if w))
        if has("Bangs"):
            with_.append("bangs")
    if has("Receding_Hairline"):
        with_.append("a receding hairline")
    if has("Eyeglasses"):
        with_.append("eyeglasses")
    if "No_Beard" in attributes and not has("No_Beard"):
        with_.append("a beard")
    with_ += [p for key, p in _FACIAL_HAIR + _FEATURES if has(key)]
    wearing = [p for key, p in _WEARING if has(key)]
    text = f"{'a blurry photo' if has('Blurry') else 'a photo'} of {subject}"
    if with_:
        text += f" with {_join(with_)}"
    if wearing:
        text += f"{',' if with_ else ''} wearing {_join(wearing)}"
    return text


def read_celeba_partition(path: str | os.PathLike) -> dict[str, int]:
    """``list_eval_partition.txt`` -> {file name: 0/1/2}."""
    path = Path(path)
    out: dict[str, int] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetFormatError(f"{path}:{lineno}: expected '<file> <0|1|2>', got {line.strip()!r}")
            out[parts[0]] = int(parts[1])
    return out


def read_celeba_attributes(path: str | os.PathLike) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """``list_attr_celeba.txt`` -> (attribute names, file names, int8 array ``[N, 40]`` in {0, 1})."""
    path = Path(path)
    with open(path) as f:
        lines = f.read().splitlines()
    if len(lines) < 2:
        raise DatasetFormatError(f"{path}: expected a count line and a header line of attribute names")
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise DatasetFormatError(f"{path}:1: expected the number of images, got {lines[0]!r}") from None
    names = tuple(lines[1].split())
    if not names:
        raise DatasetFormatError(f"{path}:2: expected the attribute names")
    files: list[str] = []
    rows: list[list[int]] = []
    for lineno, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or any(v not in ("1", "-1", "0") for v in parts[1:]):
            raise DatasetFormatError(
                f"{path}:{lineno}: expected a file name and {len(names)} values in {{1, -1}}, got {line.strip()[:120]!r}"
            )
        files.append(parts[0])
        rows.append([1 if v == "1" else 0 for v in parts[1:]])
    if len(files) != count:
        raise DatasetFormatError(f"{path}: the first line announces {count} images but {len(files)} rows follow")
    return names, files, np.asarray(rows, dtype=np.int8).reshape(len(files), len(names))


@functools.lru_cache(maxsize=2)
def _read_annotations(folder: str, stamp: tuple[int, int]) -> tuple[dict[str, int], tuple[str, ...], dict[str, int], np.ndarray]:
    partition = read_celeba_partition(Path(folder) / _PARTITION)
    names, files, attrs = read_celeba_attributes(Path(folder) / _ATTRS)
    return partition, names, {f: i for i, f in enumerate(files)}, attrs


class CelebADataset(BaseImageDataset):
    """Aligned CelebA faces: centre crop ``crop_size`` x ``crop_size``, then resize to ``image_size``.

    Args:
        root: folder with ``img_align_celeba/``, ``list_eval_partition.txt`` and
            ``list_attr_celeba.txt`` (or ``root/celeba`` holding them).
        split: ``train`` (partition 0), ``val`` (1) or ``test`` (2).
        image_size: output side (bicubic, antialiased).
        channels: 3, or 1 (grayscale).
        crop_size: side of the centred square crop of the 178x218 aligned images (140 by default,
            the common choice for 64px CelebA) or ``None`` for no crop.
        label_attribute: attribute name (or index) whose presence is ``label`` (``num_classes=2``);
            default ``"Smiling"`` (a balanced attribute). ``None``: no ``label``.

    Items: ``image``, ``attributes`` int64 ``[40]`` in {0,1} (order :data:`CELEBA_ATTRIBUTES`),
    ``label`` (0/1, if ``label_attribute``), ``caption`` (:func:`celeba_caption`), ``index``.
    """

    name = "celeba"
    attribute_names = CELEBA_ATTRIBUTES

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 64,
        channels: int = 3,
        crop_size: int | None = 140,
        label_attribute: str | int | None = "Smiling",
    ) -> None:
        super().__init__(split, image_size, channels)
        self.root = Path(os.path.expanduser(str(root)))
        folder = self._find()
        self.folder = folder
        self.image_dir = folder / _IMAGES
        stamp = ((folder / _PARTITION).stat().st_mtime_ns, (folder / _ATTRS).stat().st_mtime_ns)
        partition, names, row_of, attrs = _read_annotations(str(folder), stamp)
        if names != CELEBA_ATTRIBUTES:
            raise DatasetFormatError(
                f"{folder / _ATTRS}: unexpected attribute header (got {len(names)} names starting {names[:3]}); "
                f"expected the 40 official CelebA attributes"
            )
        code = _SPLIT_CODES[split]
        self.files = sorted(f for f, c in partition.items() if c == code)
        missing = [f for f in self.files if f not in row_of]
        if missing:
            raise DatasetFormatError(
                f"{folder / _ATTRS} has no attributes for {len(missing)} images of {folder / _PARTITION}, e.g. {missing[0]}"
            )
        self._attrs = attrs[[row_of[f] for f in self.files]].astype(np.int64) if self.files else np.zeros((0, 40), np.int64)
        if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 1):
            raise ConfigError(f"crop_size must be a positive integer or null, got {crop_size!r}")
        self.crop_size = crop_size
        if label_attribute is None:
            self.label_index = None
        elif isinstance(label_attribute, int) and not isinstance(label_attribute, bool):
            if not 0 <= label_attribute < 40:
                raise ConfigError(f"label_attribute index must be in 0..39, got {label_attribute}")
            self.label_index = label_attribute
        elif label_attribute in CELEBA_ATTRIBUTES:
            self.label_index = CELEBA_ATTRIBUTES.index(label_attribute)
        else:
            raise ConfigError(
                f"unknown CelebA label_attribute {label_attribute!r}; use null, an index 0..39 or one of {CELEBA_ATTRIBUTES}"
            )
        self.provides = ("image", "attributes", "caption", "index") + (("label",) if self.label_index is not None else ())
        self.num_classes = None if self.label_index is None else 2
        self._fingerprint: str | None = None

    def _find(self) -> Path:
        candidates = [self.root, self.root / "celeba"]
        for d in candidates:
            if (d / _IMAGES).is_dir() and (d / _PARTITION).is_file() and (d / _ATTRS).is_file():
                return d
        if not self.root.exists():
            raise DatasetNotFoundError(f"CelebA not found: {self.root} does not exist. {_HOW}")
        have = [p.name for p in self.root.iterdir()][:10]
        raise DatasetNotFoundError(
            f"CelebA not found in {self.root}: expected {_IMAGES}/, {_PARTITION} and {_ATTRS} there or in "
            f"{self.root / 'celeba'} (found {have}). {_HOW}"
        )

    def fingerprint(self) -> str:
        """:func:`~mmexp.data.base.files_fingerprint` of this split's image files (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = files_fingerprint(self.image_dir, self.files)
        return self._fingerprint

    @property
    def label_attribute(self) -> str | None:
        return None if self.label_index is None else CELEBA_ATTRIBUTES[self.label_index]

    def __len__(self) -> int:
        return len(self.files)

    def captions(self) -> list[str]:
        return [celeba_caption(a.tolist()) for a in self._attrs]

    def extra_repr(self) -> str:
        return f"root={str(self.folder)!r}, label_attribute={self.label_attribute!r}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        img = open_image(self.image_dir / self.files[index])
        attrs = self._attrs[index]
        item: dict[str, Any] = {
            "image": prepare_image(img, self.image_size, self.channels, crop=self.crop_size, resample="bicubic"),
            "attributes": torch.from_numpy(attrs.copy()),
            "caption": celeba_caption(attrs.tolist()),
            "index": index,
        }
        if self.label_index is not None:
            item["label"] = int(attrs[self.label_index])
        return item
