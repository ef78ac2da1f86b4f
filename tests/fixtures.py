"""Writers of tiny datasets in the exact on-disk formats mmexp reads (test helpers, not installed).

Every writer is deterministic (fixed seed), writes under ``root`` (created if needed) and returns
the path to pass as ``data.root``. Images carry simple structure (a bright blob whose position and
colour depend on the label) rather than pure noise, so a model can fit them in smoke tests.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmexp.data.celeba import CELEBA_ATTRIBUTES
from mmexp.data.cifar10 import CIFAR10_CLASSES, CIFAR10_FOLDER
from mmexp.data.idx import write_idx
from mmexp.data.mnist import MNIST_FILES

__all__ = [
    "write_celeba_fixture",
    "write_mnist_fixture",
    "write_fashion_mnist_fixture",
    "write_cifar10_fixture",
    "write_image_folder_fixture",
]


def _blob_images(rng: np.random.Generator, labels: np.ndarray, h: int, w: int, channels: int) -> np.ndarray:
    """uint8 images ``[N, h, w]`` (channels=1) or ``[N, h, w, 3]`` with a label-dependent blob."""
    n = len(labels)
    out = np.zeros((n, h, w, 3), np.uint8)
    for i, y in enumerate(labels):
        bg = tuple(int(v) for v in rng.integers(0, 60, 3))
        img = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(img)
        cx = (0.2 + 0.6 * ((int(y) * 0.37) % 1.0)) * w + rng.uniform(-2, 2)
        cy = (0.2 + 0.6 * ((int(y) * 0.61) % 1.0)) * h + rng.uniform(-2, 2)
        r = max(2.0, 0.18 * min(h, w))
        colour = tuple(int(v) for v in (150 + 100 * np.array([(y % 3) == 0, (y % 3) == 1, (y % 3) == 2])))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        out[i] = np.asarray(img)
    if channels == 1:
        return (out @ np.array([0.299, 0.587, 0.114])).round().clip(0, 255).astype(np.uint8)
    return out


def _write_idx_set(directory: Path, n_train: int, n_test: int, compress: bool, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for which, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = _blob_images(rng, labels, 28, 28, 1)
        img_name, lbl_name = MNIST_FILES[which]
        write_idx(directory / f"{img_name}{suffix}", images)
        write_idx(directory / f"{lbl_name}{suffix}", labels)
    return directory


def write_mnist_fixture(root: str | os.PathLike, n_train: int = 30, n_test: int = 10, seed: int = 0) -> Path:
    """MNIST in torchvision's layout: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    (uncompressed, as torchvision leaves them after extracting). Returns ``root``."""
    root = Path(root)
    _write_idx_set(root / "MNIST" / "raw", n_train, n_test, compress=False, seed=seed)
    return root


def write_fashion_mnist_fixture(root: str | os.PathLike, n_train: int = 30, n_test: int = 10, seed: int = 1) -> Path:
    """Fashion-MNIST as distributed (and as Debian installs it): the four ``*.gz`` IDX files directly in ``root``."""
    root = Path(root)
    _write_idx_set(root, n_train, n_test, compress=True, seed=seed)
    return root


def write_cifar10_fixture(root: str | os.PathLike, n_per_batch: int = 6, n_test: int = 10, seed: int = 0) -> Path:
    """CIFAR-10 python version: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``,
    pickled dicts with ``data`` (uint8 ``[N, 3072]``, channel-major rows), ``labels``, ``batch_label``,
    ``filenames`` (and ``label_names`` in ``batches.meta``). Returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{i}", n_per_batch, f"training batch {i} of 5") for i in range(1, 6)]
    batches.append(("test_batch", n_test, "testing batch 1 of 1"))
    for name, n, batch_label in batches:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        images = _blob_images(rng, np.asarray(labels), 32, 32, 3)  # [N, 32, 32, 3]
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        entry = {
            "batch_label": batch_label,
            "labels": labels,
            "data": data,
            "filenames": [f"{CIFAR10_CLASSES[y]}_s_{k:06d}.png" for k, y in enumerate(labels)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {"num_cases_per_batch": n_per_batch, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return Path(root)


def write_celeba_fixture(root: str | os.PathLike, n: int = 12, seed: int = 0) -> Path:
    """CelebA's official layout in ``root``: ``img_align_celeba/000001.jpg..`` (178x218 JPEGs),
    ``list_eval_partition.txt`` (first 60% train, next 20% val, rest test, at least one each when
    ``n >= 3``) and ``list_attr_celeba.txt`` (count, header, ``-1``/`` 1`` rows). Returns ``root``."""
    if n < 3:
        raise ValueError("write_celeba_fixture needs n >= 3 (one image per split)")
    rng = np.random.default_rng(seed)
    root = Path(root)
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    files = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    n_train = max(1, int(0.6 * n))
    n_val = max(1, int(0.2 * n))
    codes = [0] * n_train + [1] * n_val + [2] * (n - n_train - n_val)
    attrs = np.where(rng.random((n, len(CELEBA_ATTRIBUTES))) < 0.4, 1, -1)
    for name, a in zip(files, attrs):
        img = Image.new("RGB", (178, 218), tuple(int(v) for v in rng.integers(40, 200, 3)))
        d = ImageDraw.Draw(img)
        skin = (230, 190, 160) if a[CELEBA_ATTRIBUTES.index("Pale_Skin")] < 0 else (250, 235, 225)
        d.ellipse([49, 59, 129, 159], fill=skin)  # a face in the centre crop
        d.ellipse([69, 89, 81, 99], fill=(30, 30, 30))
        d.ellipse([97, 89, 109, 99], fill=(30, 30, 30))
        if a[CELEBA_ATTRIBUTES.index("Smiling")] > 0:
            d.arc([74, 110, 104, 140], 20, 160, fill=(150, 30, 30), width=3)
        else:
            d.line([77, 128, 101, 128], fill=(150, 30, 30), width=3)
        img.save(img_dir / name, quality=90)
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {c}\n" for f, c in zip(files, codes)))
    lines = [f"{n}\n", " ".join(CELEBA_ATTRIBUTES) + " \n"]
    lines += [f"{f} " + " ".join(f"{int(v):2d}" for v in a) + "\n" for f, a in zip(files, attrs)]
    (root / "list_attr_celeba.txt").write_text("".join(lines))
    return root


def write_image_folder_fixture(
    root: str | os.PathLike, n: int = 12, labels: bool = True, seed: int = 0, classes: tuple[str, ...] = ("cat", "dog")
) -> Path:
    """A folder of small images of mixed sizes, modes (RGB, RGBA, L, P) and formats (PNG, JPEG).

    With ``labels`` the images go into ``root/<class>/`` sub-folders, else directly into ``root``.
    Writes two equivalent caption sidecars: ``captions.jsonl`` (Hugging Face ``file_name``/``text``)
    and ``captions.txt`` (``file<TAB>caption``). Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    modes = ("RGB", "RGBA", "L", "P")
    for i in range(n):
        cls = classes[i % len(classes)]
        rel = f"{cls}/img_{i:03d}" if labels else f"img_{i:03d}"
        w, h = int(rng.integers(40, 100)), int(rng.integers(40, 100))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        img = Image.new("RGB", (w, h), colour)
        ImageDraw.Draw(img).rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(255 - colour[0], 128, colour[2]))
        mode = modes[i % len(modes)]
        ext = ".jpg" if mode in ("RGB", "L") and i % 3 == 0 else ".png"
        img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.Palette.ADAPTIVE)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / f"{rel}{ext}")
        records.append((f"{rel}{ext}", f"a {w}x{h} picture of a {cls} number {i}"))
    with open(root / "captions.jsonl", "w", encoding="utf-8") as f:
        for name, text in records:
            f.write(json.dumps({"file_name": name, "text": text}) + "\n")
    (root / "captions.txt").write_text("".join(f"{name}\t{text}\n" for name, text in records), encoding="utf-8")
    return root
