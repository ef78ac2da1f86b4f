"""JPEG compression artefacts: each sample encoded and decoded by OpenCV (libjpeg) at a random quality."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmexp.errors import ConfigError, MissingDependencyError

from .base import Degradation, Sample, generator, with_input

__all__ = ["JPEG", "jpeg_roundtrip"]


def _cv2():
    try:
        import cv2
    except ImportError as err:  # opencv-python comes with the metrics stack; say so if it is gone
        raise MissingDependencyError("JPEG degradations need OpenCV: pip install opencv-python-headless") from err
    return cv2


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x`` (``[N, C, H, W]`` in ``[-1, 1]``, C = 1 or 3, RGB) through JPEG at ``quality`` (1-100).

    Values are clipped and rounded to 8 bits first (JPEG stores 8-bit pixels); the result is on ``x``'s device.
    RGB goes to OpenCV as BGR, so libjpeg's colour transform sees the channels it expects.
    """
    cv2 = _cv2()
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ConfigError(f"JPEG needs 1 or 3 channels, got {c}")
    u8 = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    out = np.empty_like(u8)
    for i in range(n):
        img = u8[i].transpose(1, 2, 0)
        if c == 3:
            img = img[:, :, ::-1]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a {h}x{w}x{c} image")
        dec = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR)
        dec = dec[:, :, None] if c == 1 else dec[:, :, ::-1]
        out[i] = dec.transpose(2, 0, 1)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32) \
        .div_(127.5).sub_(1.0)


class JPEG(Degradation):
    """JPEG-compress ``input`` at a quality drawn uniformly (integers) from ``quality``.

    Args:
        quality: a fixed quality (1-100) or ``[low, high]`` (default ``[30, 95]``, Real-ESRGAN's first round).
        prob: probability of compressing at all. Default 1.

    The output is quantised to 8 bits (clipped to ``[-1, 1]``), as any decoded JPEG. Runs on the CPU (OpenCV),
    one sample at a time; every frame of a clip at the sample's quality.
    """

    def __init__(self, quality: int | Sequence[int] = (30, 95), prob: float = 1.0) -> None:
        if isinstance(quality, (int, float)):
            lo = hi = int(quality)
        else:
            lo, hi = (int(v) for v in quality)
        if not 1 <= lo <= hi <= 100:
            raise ConfigError(f"JPEG quality must satisfy 1 <= low <= high <= 100, got {quality!r}")
        if not 0 <= prob <= 1:
            raise ConfigError(f"JPEG prob must be in [0, 1], got {prob}")
        self.quality, self.prob = (lo, hi), float(prob)
        _cv2()

    def apply(self, sample: Sample, seed: int) -> Sample:
        g = generator(seed)
        if torch.rand(1, generator=g).item() >= self.prob:
            return sample
        lo, hi = self.quality
        q = int(torch.randint(lo, hi + 1, (1,), generator=g).item())
        return with_input(sample, jpeg_roundtrip(sample.input, q))
