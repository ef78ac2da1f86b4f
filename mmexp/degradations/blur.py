"""Gaussian blur kernels, isotropic and anisotropic (the blur of the classical degradation model
``y = (x * k) downsampled + n``, and of Real-ESRGAN's rounds)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmexp.errors import ConfigError

from .base import Degradation, Sample, generator, with_input

__all__ = ["gaussian_kernel", "GaussianBlur"]


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> torch.Tensor:
    """A ``[size, size]`` Gaussian kernel summing to 1 (float64).

    ``sigma_x``, ``sigma_y``: standard deviations (pixels) along the kernel's own axes (``sigma_y`` defaults to
    ``sigma_x``: isotropic); ``theta``: rotation of those axes (radians), as Real-ESRGAN's anisotropic kernels.
    """
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"blur kernel size must be odd and >= 1, got {size}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if sigma_x <= 0 or sigma_y <= 0:
        raise ConfigError(f"blur sigmas must be > 0, got {sigma_x}, {sigma_y}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy
    v = -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


class GaussianBlur(Degradation):
    """Blur ``input`` with a random Gaussian kernel (reflect padding, same size out).

    Args:
        kernel_size: odd side of the kernel (default 21, Real-ESRGAN's largest).
        sigma: ``[low, high]`` range of the standard deviations in pixels (default ``[0.2, 3.0]``), or a number.
        anisotropic_prob: probability of an anisotropic kernel (independent ``sigma_x``, ``sigma_y`` and a
            uniform rotation); else isotropic. Default 0.5.
        prob: probability of blurring at all (Real-ESRGAN's second round: 0.8). Default 1.
    """

    def __init__(self, kernel_size: int = 21, sigma: float | Sequence[float] = (0.2, 3.0),
                 anisotropic_prob: float = 0.5, prob: float = 1.0) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"GaussianBlur kernel_size must be an odd integer >= 1, got {kernel_size!r}")
        lo, hi = (float(sigma), float(sigma)) if isinstance(sigma, (int, float)) else (float(v) for v in sigma)
        if not 0 < lo <= hi:
            raise ConfigError(f"GaussianBlur sigma must satisfy 0 < low <= high, got {sigma!r}")
        for name, p in (("anisotropic_prob", anisotropic_prob), ("prob", prob)):
            if not 0 <= p <= 1:
                raise ConfigError(f"GaussianBlur {name} must be in [0, 1], got {p}")
        self.kernel_size, self.sigma = kernel_size, (lo, hi)
        self.anisotropic_prob, self.prob = float(anisotropic_prob), float(prob)

    def draw_kernel(self, g: torch.Generator) -> torch.Tensor | None:
        """The sample's kernel (None: no blur this time)."""
        r = torch.rand(5, generator=g).tolist()
        if r[0] >= self.prob:
            return None
        lo, hi = self.sigma
        sx = lo + (hi - lo) * r[1]
        if r[2] < self.anisotropic_prob:
            sy = lo + (hi - lo) * r[3]
            theta = (r[4] * 2 - 1) * math.pi
            return gaussian_kernel(self.kernel_size, sx, sy, theta)
        return gaussian_kernel(self.kernel_size, sx)

    def apply(self, sample: Sample, seed: int) -> Sample:
        k = self.draw_kernel(generator(seed))
        if k is None:
            return sample
        return with_input(sample, filter2d(sample.input, k))


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of ``x`` ``[N, C, H, W]`` with ``kernel`` ``[k, k]`` (reflect padding)."""
    n, c, h, w = x.shape
    k = kernel.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < h and pad < w else "replicate"
    y = F.pad(x.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, kernel.to(device=x.device, dtype=x.dtype)[None, None])
    return y.reshape(n, c, h, w)
