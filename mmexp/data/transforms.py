"""Image helpers shared by every dataset, so none of them repeats this logic.

Conventions (see ``docs/interfaces.md``): a dataset returns ``image`` as a float32 tensor
``[C, H, W]`` with values in ``[-1, 1]`` and ``C`` in ``{1, 3}``. 8-bit pixel values ``v`` map to
``v / 127.5 - 1`` so ``0 -> -1`` and ``255 -> 1`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmexp.errors import ConfigError

__all__ = [
    "check_channels",
    "check_image_size",
    "convert_channels",
    "center_crop",
    "center_square_crop",
    "resize",
    "pil_to_tensor",
    "uint8_to_tensor",
    "float_array_to_tensor",
    "tensor_to_uint8",
    "prepare_image",
]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def check_channels(channels: int) -> int:
    """Return ``channels`` if it is 1 (grayscale) or 3 (RGB), else raise :class:`ConfigError`."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}; set data.channels=1 or 3")
    return int(channels)


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if it is a positive int, else raise :class:`ConfigError`."""
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}; set data.image_size=...")
    return int(image_size)


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert a PIL image to grayscale (``channels=1``, mode ``L``) or RGB (``channels=3``).

    Palette, alpha and 16-bit images are handled by PIL's own conversions (alpha is dropped).
    """
    mode = "L" if check_channels(channels) == 1 else "RGB"
    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bit before converting.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return img if mode == "L" else img.convert(mode)
    if img.mode in ("P", "PA", "LA", "RGBA") and mode == "L":
        img = img.convert("RGB")
    return img.convert(mode)


def center_crop(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Crop the central ``size`` (``int`` for a square, or ``(height, width)``) out of ``img``.

    If the image is smaller than ``size`` in a dimension, the crop is clamped to the image.
    """
    h, w = (size, size) if isinstance(size, int) else size
    h, w = min(h, img.height), min(w, img.width)
    top = int(round((img.height - h) / 2.0))
    left = int(round((img.width - w) / 2.0))
    return img.crop((left, top, left + w, top + h))


def center_square_crop(img: Image.Image) -> Image.Image:
    """Crop the largest centred square out of ``img``."""
    side = min(img.width, img.height)
    return center_crop(img, side)


def resize(img: Image.Image, size: int | tuple[int, int], resample: str = "bicubic") -> Image.Image:
    """Resize ``img`` to ``size`` (``int`` for a square, or ``(height, width)``).

    ``resample`` is one of ``nearest``, ``bilinear``, ``bicubic``, ``lanczos``, ``box``. PIL
    antialiases when downsampling with all filters except ``nearest``. A no-op if the size matches.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if (img.height, img.width) == (h, w):
        return img
    try:
        filt = _RESAMPLE[resample]
    except KeyError:
        raise ConfigError(f"unknown resample filter {resample!r}; choose one of {sorted(_RESAMPLE)}") from None
    return img.resize((w, h), filt)


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``uint8`` array ``[H, W]`` or ``[H, W, C]`` -> float32 tensor ``[C, H, W]`` in ``[-1, 1]``."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.tensor(arr.transpose(2, 0, 1), dtype=torch.float32)  # copies (PIL/IDX arrays are read-only)
    return t.div_(127.5).sub_(1.0)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image in mode ``L`` or ``RGB`` -> float32 tensor ``[C, H, W]`` in ``[-1, 1]``."""
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"expected a PIL image in mode L or RGB, got {img.mode}; call convert_channels first")
    return uint8_to_tensor(np.asarray(img, dtype=np.uint8))


def float_array_to_tensor(
    arr: np.ndarray, vmin: float, vmax: float, image_size: int, channels: int, resample: str = "bilinear"
) -> torch.Tensor:
    """A float grayscale array ``[H, W]`` with values in ``[vmin, vmax]`` -> ``[C, S, S]`` in ``[-1, 1]``.

    The array is resized in floating point (PIL mode ``F``, so no 8-bit rounding) and, for
    ``channels=3``, repeated over three channels.
    """
    check_channels(channels)
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))  # mode F
    img = resize(img, image_size, resample)
    x = torch.from_numpy(np.array(img, dtype=np.float32))
    x = ((x - vmin) / (vmax - vmin)).clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
    return x.unsqueeze(0).repeat(channels, 1, 1)


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`uint8_to_tensor`: ``[C, H, W]`` in ``[-1, 1]`` -> uint8 ``[H, W, C]``."""
    x = ((x.detach().cpu().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def prepare_image(
    img: Image.Image,
    image_size: int,
    channels: int,
    crop: int | Sequence[int] | str | None = None,
    resample: str = "bicubic",
) -> torch.Tensor:
    """The standard pipeline: channel conversion, optional centre crop, resize, to ``[-1, 1]``.

    Args:
        img: any PIL image.
        image_size: output side length (square output).
        channels: 1 or 3.
        crop: ``None`` (no crop), ``"square"`` (largest centred square), an int (centred square of
            that side) or ``(height, width)``.
        resample: resize filter, see :func:`resize`.
    """
    img = convert_channels(img, channels)
    if crop == "square":
        img = center_square_crop(img)
    elif crop is not None:
        img = center_crop(img, crop if isinstance(crop, int) else (int(crop[0]), int(crop[1])))
    img = resize(img, image_size, resample)
    return pil_to_tensor(img)
