"""MATLAB's ``imresize`` (bicubic, antialiased) in torch, and the resizing degradations built on it.

The super-resolution literature makes its low-resolution inputs with MATLAB's ``imresize(x, 1/s, 'bicubic')``
(Set5/Set14/DIV2K's ``LR_bicubic``; BasicSR's ``matlab_functions.imresize`` reproduces it in Python), and
reports numbers that depend on it. Its rules, from MATLAB's documentation and ``imresize.m``:

* the bicubic kernel of Keys (1981) with ``a = -0.5``;
* output pixel ``x`` (1-based) samples input coordinate ``u = x / s + 0.5 * (1 - 1 / s)`` (pixel centres
  aligned);
* when shrinking (``s < 1``) with antialiasing the kernel is stretched by ``1 / s`` (``h(x) = s * k(s * x)``,
  width ``4 / s``), so it also low-pass filters;
* each output pixel's weights are normalised to sum to 1;
* outside the image the input is mirrored with the edge pixel repeated (``symmetric`` padding);
* one axis after the other, the one with the smaller scale factor first.

Here the two axes are dense ``[out, in]`` matrices (mirroring folded into them, cached per size), applied as
two matrix products on the batch's device: ``Y = A_h X A_w^T`` for any number of leading dimensions.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from mmexp.errors import ConfigError, ShapeMismatchError

from .base import Degradation, Sample, generator, with_input

__all__ = ["cubic", "resize_matrix", "imresize", "Downsample", "RandomResize"]


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's and PIL's bicubic)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def _matrix_cpu(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    width = 4.0
    shrink = scale < 1 and antialias
    if shrink:
        width /= scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]  # 1-based input positions
    dist = u[:, None] - idx
    w = scale * cubic(dist * scale) if shrink else cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # symmetric padding: 1-based position p maps into [1, in_len] by mirroring with the edge repeated
    period = 2 * in_len
    p = torch.remainder(idx.long() - 1, period)
    p = torch.where(p >= in_len, period - 1 - p, p)
    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    mat.scatter_add_(1, p, w)
    return mat


def resize_matrix(in_len: int, out_len: int, scale: float | None = None, antialias: bool = True,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[out_len, in_len]`` matrix of MATLAB's bicubic ``imresize`` along one axis.

    ``scale`` defaults to ``out_len / in_len`` (MATLAB's when given an output size); its rows sum to 1.
    """
    if in_len < 1 or out_len < 1:
        raise ConfigError(f"cannot resize a length {in_len} axis to {out_len}")
    scale = out_len / in_len if scale is None else float(scale)
    return _matrix_cpu(int(in_len), int(out_len), scale, bool(antialias)).to(device=device, dtype=dtype)


def imresize(x: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True) -> torch.Tensor:
    """MATLAB ``imresize(x, scale)`` / ``imresize(x, size)`` with the bicubic kernel, on ``[..., H, W]``.

    Args:
        x: float tensor with the image axes last (any leading dims, any device); not rounded or clipped
            (bicubic overshoots at edges, as in MATLAB before its uint8 conversion).
        scale: one factor for both axes (``0.25`` shrinks 4x); the output is ``ceil(H * scale)`` by
            ``ceil(W * scale)`` as in MATLAB.
        size: ``(height, width)`` instead of ``scale``; each axis then uses its own factor ``out / in``.
        antialias: stretch the kernel when shrinking (MATLAB's default: True).

    Computed in float64 for float64 input, else float32 (half inputs are promoted and cast back).
    """
    if (scale is None) == (size is None):
        raise ConfigError("imresize takes exactly one of scale= or size=")
    h, w = x.shape[-2:]
    if size is None:
        if scale <= 0:
            raise ConfigError(f"imresize scale must be > 0, got {scale}")
        out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
        sh = sw = float(scale)
    else:
        out_h, out_w = int(size[0]), int(size[1])
        sh, sw = out_h / h, out_w / w
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(dtype)
    # MATLAB resizes along the axis with the smaller factor first; with exact arithmetic the order does not
    # matter, in floating point it does by ~1e-7, so keep MATLAB's order
    a_h = resize_matrix(h, out_h, sh, antialias, y.device, dtype)
    a_w = resize_matrix(w, out_w, sw, antialias, y.device, dtype)
    if sh <= sw:
        y = torch.matmul(a_h, y)
        y = torch.matmul(y, a_w.t())
    else:
        y = torch.matmul(y, a_w.t())
        y = torch.matmul(a_h, y)
    return y.to(x.dtype)


def _check_scale(scale: int, target: torch.Tensor, who: str) -> tuple[int, int]:
    h, w = target.shape[-2:]
    if h % scale or w % scale:
        raise ShapeMismatchError(
            f"{who} (x{scale}) needs image sides divisible by {scale}, got {h}x{w}; pick data.image_size as a "
            f"multiple of {scale} (96 serves x2, x3 and x4), or crop full images to a multiple (data.dataset.mod)")
    return h // scale, w // scale


class Downsample(Degradation):
    """Bicubic downsampling by an integer ``scale``: ``input`` = MATLAB ``imresize(target, 1/scale)``.

    The size is always the *target's* divided by ``scale``, whatever earlier stages did to ``input`` (a random
    resize in a second-order pipeline), so it also ends those pipelines at the right size.

    Args:
        scale: 2, 3, 4, ... (image sides must be divisible by it; else a clear error).
        mode: ``"bicubic"`` (MATLAB's antialiased bicubic, default), or ``"area"``, ``"bilinear"``,
            ``"nearest"`` (torch's ``interpolate``; bilinear antialiased).
        clip: clamp to ``[-1, 1]`` after resizing (bicubic overshoots a little). Default: False, as BasicSR's
            ``imresize`` on float images; SR benchmarks quantise their PNGs, which clips.
    """

    def __init__(self, scale: int = 4, mode: str = "bicubic", clip: bool = False) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ConfigError(f"Downsample scale must be an integer >= 1, got {scale!r}")
        if mode not in _MODES:
            raise ConfigError(f"unknown resize mode {mode!r}; choose one of {sorted(_MODES)}")
        self.scale, self.mode, self.clip = scale, mode, bool(clip)

    def apply(self, sample: Sample, seed: int) -> Sample:
        size = _check_scale(self.scale, sample.target, "Downsample")
        y = resize(sample.input, size, self.mode)
        return with_input(sample, y.clamp(-1, 1) if self.clip else y)


_MODES = ("bicubic", "area", "bilinear", "nearest")


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``[N, C, H, W]`` to ``size`` with ``mode``: ``bicubic`` is MATLAB's (:func:`imresize`)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bicubic":
        return imresize(x, size=size)
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(x, size=size, mode=mode)


class RandomResize(Degradation):
    """Resize ``input`` by a random factor (Real-ESRGAN's resize step): up with probability ``up_prob``,
    down with ``down_prob``, else keep; the factor is uniform in ``up_range`` / ``down_range``; the mode is
    drawn from ``modes``. A later :class:`Downsample` brings the input to its final size.

    Args:
        up_prob, down_prob: probabilities of enlarging / shrinking (default 0.2, 0.7; Real-ESRGAN's).
        up_range: factor range when enlarging (default ``[1, 1.5]``).
        down_range: factor range when shrinking (default ``[0.15, 1]``).
        modes: resize modes drawn uniformly (default ``["area", "bilinear", "bicubic"]``).
    """

    def __init__(self, up_prob: float = 0.2, down_prob: float = 0.7, up_range: tuple[float, float] = (1.0, 1.5),
                 down_range: tuple[float, float] = (0.15, 1.0),
                 modes: tuple[str, ...] = ("area", "bilinear", "bicubic")) -> None:
        if not (0 <= up_prob and 0 <= down_prob and up_prob + down_prob <= 1):
            raise ConfigError(f"RandomResize needs up_prob, down_prob >= 0 with sum <= 1, got {up_prob}, {down_prob}")
        bad = [m for m in modes if m not in _MODES]
        if bad or not modes:
            raise ConfigError(f"unknown resize modes {bad or modes}; choose among {sorted(_MODES)}")
        self.up_prob, self.down_prob = float(up_prob), float(down_prob)
        self.up_range, self.down_range = tuple(map(float, up_range)), tuple(map(float, down_range))
        self.modes = tuple(modes)

    def apply(self, sample: Sample, seed: int) -> Sample:
        g = generator(seed)
        r, t, m = torch.rand(3, generator=g).tolist()
        if r < self.up_prob:
            lo, hi = self.up_range
        elif r < self.up_prob + self.down_prob:
            lo, hi = self.down_range
        else:
            lo = hi = 1.0
        factor = lo + (hi - lo) * t
        mode = self.modes[min(int(m * len(self.modes)), len(self.modes) - 1)]
        h, w = sample.input.shape[-2:]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return with_input(sample, resize(sample.input, size, mode))
