"""Blur kernels: Gaussian (isotropic and anisotropic; the blur of the classical degradation model
``y = (x * k) downsampled + n``), and Real-ESRGAN's mixture (Wang et al., "Real-ESRGAN: Training Real-World Blind
Super-Resolution with Pure Synthetic Data", ICCVW 2021): generalized Gaussian and plateau kernels, and the 2-D
sinc (ideal circular low-pass) that imitates ringing and overshoot artifacts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmexp.errors import ConfigError

from .base import Degradation, Sample, generator, with_input

__all__ = ["gaussian_kernel", "generalized_gaussian_kernel", "plateau_kernel", "sinc_kernel", "GaussianBlur",
           "KernelMixtureBlur", "SincFilter"]


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


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """``d^T Sigma^-1 d`` over a ``[size, size]`` grid centred on the kernel (float64)."""
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"blur kernel size must be odd and >= 1, got {size}")
    if sigma_x <= 0 or sigma_y <= 0:
        raise ConfigError(f"blur sigmas must be > 0, got {sigma_x}, {sigma_y}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                                beta: float = 1.0) -> torch.Tensor:
    """``k ~ exp(-(d^T Sigma^-1 d / 2) ^ beta)`` (sums to 1): ``beta`` 1 is the Gaussian, < 1 heavier tails,
    > 1 flatter tops (Real-ESRGAN draws ``beta`` in [0.5, 4])."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    k = torch.exp(-((0.5 * q) ** beta))
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                   beta: float = 1.5) -> torch.Tensor:
    """``k ~ 1 / (1 + (d^T Sigma^-1 d) ^ beta)`` (sums to 1): a flat top with polynomial tails (Real-ESRGAN,
    ``beta`` in [1, 2])."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    k = 1.0 / (1.0 + q ** beta)
    return k / k.sum()


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """The ideal circular low-pass filter with angular cutoff frequency ``cutoff`` (radians per pixel, in
    ``(0, pi]``), truncated to ``[size, size]`` and normalised to sum 1:
    ``k(r) = cutoff J1(cutoff r) / (2 pi r)``, ``k(0) = cutoff^2 / (4 pi)``."""
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"sinc kernel size must be odd and >= 1, got {size}")
    if not 0 < cutoff <= math.pi:
        raise ConfigError(f"sinc cutoff must be in (0, pi], got {cutoff}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    d = torch.sqrt(xx ** 2 + yy ** 2)
    safe = torch.where(d > 0, d, torch.ones_like(d))
    k = torch.where(d > 0, cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe),
                    torch.full_like(d, cutoff ** 2 / (4 * math.pi)))
    return k / k.sum()


def _positive_range(value: float | Sequence[float], name: str, who: str) -> tuple[float, float]:
    """A number or ``[low, high]`` as ``(low, high)`` with ``0 < low <= high``; else a clear error."""
    a, b = (float(value), float(value)) if isinstance(value, (int, float)) else (float(v) for v in value)
    if not 0 < a <= b:
        raise ConfigError(f"{who} {name} must be a number or [low, high] with 0 < low <= high, got {value!r}")
    return a, b


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


KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


class KernelMixtureBlur(Degradation):
    """Real-ESRGAN's blur: per sample, a kernel of a random odd size in ``kernel_range``, either a 2-D sinc
    (probability ``sinc_prob``) or one of :data:`KERNEL_KINDS` drawn with ``kernel_probs``.

    Args:
        kernel_range: ``[low, high]`` odd kernel sides (default ``[7, 21]``).
        kernel_probs: probabilities of ``iso, aniso, generalized_iso, generalized_aniso, plateau_iso,
            plateau_aniso`` (Real-ESRGAN's: 0.45, 0.25, 0.12, 0.03, 0.12, 0.03).
        sigma: ``[low, high]`` standard deviations in pixels (first round 0.2-3, second 0.2-1.5).
        beta_gaussian: shape range of the generalized Gaussians (default ``[0.5, 4]``).
        beta_plateau: shape range of the plateau kernels (default ``[1, 2]``).
        sinc_prob: probability of a sinc kernel instead (default 0.1); its cutoff is uniform in
            ``[pi/3, pi]`` (``[pi/2, pi]`` for sides below 13, as Real-ESRGAN).
        prob: probability of blurring at all (second round: 0.8). Default 1.
    """

    def __init__(self, kernel_range: Sequence[int] = (7, 21),
                 kernel_probs: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                 sigma: float | Sequence[float] = (0.2, 3.0), beta_gaussian: float | Sequence[float] = (0.5, 4.0),
                 beta_plateau: float | Sequence[float] = (1.0, 2.0), sinc_prob: float = 0.1,
                 prob: float = 1.0) -> None:
        lo, hi = (int(v) for v in kernel_range)
        if not (3 <= lo <= hi and lo % 2 == 1 and hi % 2 == 1):
            raise ConfigError(f"KernelMixtureBlur kernel_range must be odd sides [low, high], 3 <= low <= high, "
                              f"got {kernel_range!r}")
        probs = [float(p) for p in kernel_probs]
        if len(probs) != len(KERNEL_KINDS) or min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ConfigError(f"KernelMixtureBlur kernel_probs must be {len(KERNEL_KINDS)} probabilities of "
                              f"{', '.join(KERNEL_KINDS)} summing to 1, got {kernel_probs!r}")
        for name, p in (("sinc_prob", sinc_prob), ("prob", prob)):
            if not 0 <= p <= 1:
                raise ConfigError(f"KernelMixtureBlur {name} must be in [0, 1], got {p}")
        self.kernel_range, self.kernel_probs = (lo, hi), probs
        self.sigma = _positive_range(sigma, "sigma", "KernelMixtureBlur")
        self.beta_gaussian = _positive_range(beta_gaussian, "beta_gaussian", "KernelMixtureBlur")
        self.beta_plateau = _positive_range(beta_plateau, "beta_plateau", "KernelMixtureBlur")
        self.sinc_prob, self.prob = float(sinc_prob), float(prob)

    def draw_kernel(self, g: torch.Generator) -> torch.Tensor | None:
        """The sample's kernel (None: no blur this time). Always draws the same number of values."""
        r = torch.rand(9, generator=g).tolist()
        if r[0] >= self.prob:
            return None
        sides = list(range(self.kernel_range[0], self.kernel_range[1] + 1, 2))
        size = sides[min(int(r[1] * len(sides)), len(sides) - 1)]
        if r[2] < self.sinc_prob:
            low = math.pi / 3 if size >= 13 else math.pi / 2
            return sinc_kernel(size, low + (math.pi - low) * r[3])
        kind = KERNEL_KINDS[int(np.searchsorted(np.cumsum(self.kernel_probs), r[4], side="right").clip(0, 5))]
        lo, hi = self.sigma
        sx = lo + (hi - lo) * r[5]
        sy, theta = (lo + (hi - lo) * r[6], (r[7] * 2 - 1) * math.pi) if kind.endswith("aniso") else (sx, 0.0)
        if kind.startswith("generalized"):
            b = self.beta_gaussian
            beta = b[0] + (b[1] - b[0]) * r[8]
            return generalized_gaussian_kernel(size, sx, sy, theta, beta)
        if kind.startswith("plateau"):
            b = self.beta_plateau
            return plateau_kernel(size, sx, sy, theta, b[0] + (b[1] - b[0]) * r[8])
        return gaussian_kernel(size, sx, sy, theta)

    def apply(self, sample: Sample, seed: int) -> Sample:
        k = self.draw_kernel(generator(seed))
        return sample if k is None else with_input(sample, filter2d(sample.input, k))


class SincFilter(Degradation):
    """Real-ESRGAN's final sinc filter (ringing and overshoot): with probability ``prob`` a 2-D sinc of side
    ``kernel_size`` and cutoff uniform in ``cutoff`` (radians per pixel); the result is clamped to [-1, 1].

    Args:
        kernel_size: odd side (default 21).
        cutoff: ``[low, high]`` within ``(0, pi]`` (default ``[pi/3, pi]``).
        prob: probability of filtering (Real-ESRGAN: 0.8). Default 0.8.
    """

    def __init__(self, kernel_size: int = 21, cutoff: float | Sequence[float] = (math.pi / 3, math.pi),
                 prob: float = 0.8) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"SincFilter kernel_size must be an odd integer >= 1, got {kernel_size!r}")
        self.cutoff = _positive_range(cutoff, "cutoff", "SincFilter")
        if self.cutoff[1] > math.pi + 1e-9:
            raise ConfigError(f"SincFilter cutoff must be within (0, pi], got {cutoff!r}")
        if not 0 <= prob <= 1:
            raise ConfigError(f"SincFilter prob must be in [0, 1], got {prob}")
        self.kernel_size, self.prob = kernel_size, float(prob)

    def apply(self, sample: Sample, seed: int) -> Sample:
        r = torch.rand(2, generator=generator(seed)).tolist()
        if r[0] >= self.prob:
            return sample
        lo, hi = self.cutoff
        k = sinc_kernel(self.kernel_size, min(lo + (hi - lo) * r[1], math.pi))
        # its negative lobes overshoot: clamp to the image range, as Real-ESRGAN's final quantisation does
        return with_input(sample, filter2d(sample.input, k).clamp(-1, 1))


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of ``x`` ``[N, C, H, W]`` with ``kernel`` ``[k, k]`` (reflect padding)."""
    n, c, h, w = x.shape
    k = kernel.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < h and pad < w else "replicate"
    y = F.pad(x.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, kernel.to(device=x.device, dtype=x.dtype)[None, None])
    return y.reshape(n, c, h, w)
