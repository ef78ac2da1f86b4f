"""Additive white Gaussian noise, with its standard deviation on the 0-255 scale of the denoising literature.

DnCNN, FFDNet, SwinIR... report "sigma = 25" meaning a standard deviation of 25 grey levels of 255. mmexp's
images span ``[-1, 1]`` (255 levels over a range of 2), so sigma 25 is a standard deviation of
``25 / 255 * 2 = 50 / 255`` here (``25 / 255`` on a ``[0, 1]`` scale). :func:`sigma_to_unit_range` is that
conversion, used everywhere a sigma is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmexp.errors import ConfigError

from .base import Degradation, Sample, generator, with_input

__all__ = ["GaussianNoise", "PoissonNoise", "sigma_to_unit_range"]


def sigma_to_unit_range(sigma_255: float) -> float:
    """A standard deviation in grey levels of 255 -> the same on mmexp's ``[-1, 1]`` scale (``x 2 / 255``)."""
    return float(sigma_255) * 2.0 / 255.0



def _level_range(value: float | Sequence[float], name: str, unit: str, gray_prob: float) -> tuple[float, float]:
    """``(low, high)`` from a number or a ``[low, high]`` pair, with ``0 <= low <= high``; ``gray_prob`` in [0, 1].
    ConfigError naming ``name`` otherwise."""
    try:
        lo, hi = (float(value), float(value)) if isinstance(value, (int, float)) else (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number or [low, high], got {value!r}") from None
    if not 0 <= lo <= hi:
        raise ConfigError(f"{name} must satisfy 0 <= low <= high{unit}, got {value!r}")
    if not 0 <= gray_prob <= 1:
        raise ConfigError(f"gray_prob must be in [0, 1], got {gray_prob}")
    return lo, hi

class GaussianNoise(Degradation):
    """``input = input + n``, ``n ~ N(0, sigma^2)`` per pixel, sigma in grey levels of 255.

    Args:
        sigma: a fixed standard deviation (e.g. 25; non-blind denoising), or ``[low, high]``: drawn uniformly
            per sample (blind denoising, e.g. ``[0, 50]``; DnCNN-B uses ``[0, 55]``).
        gray_prob: probability that the noise is the same on every channel (Real-ESRGAN's grey noise).
            Default 0: independent per channel.
        clip: clamp the result to ``[-1, 1]``. Default False, as the denoising benchmarks add noise to float
            images without clipping (so the noise keeps its exact sigma); True inside SR pipelines that
            quantise afterwards (JPEG), as Real-ESRGAN.

    Every frame of a clip gets its own noise field with the sample's sigma. The noise is drawn on the CPU from
    the sample's generator (the same field on every device) and moved to the batch's device.
    """

    def __init__(self, sigma: float | Sequence[float] = 25.0, gray_prob: float = 0.0, clip: bool = False) -> None:
        lo, hi = _level_range(sigma, "GaussianNoise sigma", " (grey levels of 255)", gray_prob)
        self.sigma = (lo, hi)
        self.gray_prob, self.clip = float(gray_prob), bool(clip)

    def draw_sigma(self, g: torch.Generator) -> float:
        """The sample's sigma (grey levels of 255)."""
        lo, hi = self.sigma
        u = torch.rand(1, generator=g).item()
        return lo + (hi - lo) * u

    def apply(self, sample: Sample, seed: int) -> Sample:
        g = generator(seed)
        sigma = self.draw_sigma(g)
        gray = torch.rand(1, generator=g).item() < self.gray_prob
        x = sample.input
        n, c, h, w = x.shape
        noise = torch.randn((n, 1 if gray else c, h, w), generator=g, dtype=torch.float32)
        noise = noise.to(device=x.device, dtype=x.dtype).mul_(sigma_to_unit_range(sigma))
        y = x + noise
        return with_input(sample, y.clamp(-1, 1) if self.clip else y)


class PoissonNoise(Degradation):
    """Signal-dependent shot noise, as Real-ESRGAN's: on the ``[0, 1]`` scale, ``noise = Poisson(x * v) / v - x``
    with ``v = 2 ** ceil(log2(distinct values))`` (255-level images: ``v = 256``), added as
    ``x + scale * noise`` with ``scale`` uniform in ``scale`` per sample; with probability ``gray_prob`` the noise
    is computed on the luma and shared by every channel.

    Args:
        scale: ``[low, high]`` noise scale (Real-ESRGAN: ``[0.05, 3]`` first round, ``[0.05, 2.5]`` second), or
            a number.
        gray_prob: probability of grey (luma) noise. Default 0.4.
        clip: clamp the result to ``[-1, 1]``. Default True (it is followed by JPEG in the pipelines).
    """

    def __init__(self, scale: float | Sequence[float] = (0.05, 3.0), gray_prob: float = 0.4, clip: bool = True) -> None:
        lo, hi = _level_range(scale, "PoissonNoise scale", "", gray_prob)
        self.scale, self.gray_prob, self.clip = (lo, hi), float(gray_prob), bool(clip)

    def apply(self, sample: Sample, seed: int) -> Sample:
        g = generator(seed)
        u, gray = torch.rand(2, generator=g).tolist()
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * u
        x = sample.input
        unit = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)  # drawn on the CPU: the same field on every device
        if gray < self.gray_prob and unit.shape[1] == 3:
            unit = (0.299 * unit[:, 0:1] + 0.587 * unit[:, 1:2] + 0.114 * unit[:, 2:3])
        levels = 2 ** math.ceil(math.log2(max(len(torch.unique((unit * 255).round())), 2)))
        noise = torch.poisson(unit * levels, generator=g) / levels - unit
        y = x + (noise * 2 * scale).to(device=x.device, dtype=x.dtype)  # [0, 1] -> [-1, 1] doubles the amplitude
        return with_input(sample, y.clamp(-1, 1) if self.clip else y)
