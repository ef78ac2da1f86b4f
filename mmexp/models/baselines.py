"""Classical restorers as models without trained weights: the peers every trained network is measured against.

They have the API of every :class:`~mmexp.models.restoration.Restorer` (``restore``, ``validation_step``,
``preview``), so ``task=eval`` and ``task=restore`` run them exactly as trained networks, without a checkpoint:

- :class:`Identity`: the degraded input itself (the "noisy input" / "masked input" row of the tables: the floor
  every restorer must beat).
- :class:`Bicubic`: upsampling by the scale (SR peer). ``kernel="matlab"`` is MATLAB's ``imresize`` bicubic
  (Keys a = -0.5, symmetric borders; :func:`mmexp.degradations.resize.imresize`), the upsampler of the SR
  literature's "Bicubic" rows (BasicSR's); ``kernel="torch"`` is ``F.interpolate(mode="bicubic")`` (a = -0.75,
  replicated borders).
- :class:`NLMeans`: non-local means (Buades, Coll & Morel, CVPR 2005), OpenCV's
  ``fastNlMeansDenoisingColored`` (denoising peer).
- :class:`BM3D`: block-matching 3-D filtering (Dabov et al., IEEE TIP 2007), the ``bm3d`` package (optional
  extra: ``pip install bm3d``; denoising peer).
- :class:`Telea`: fast-marching inpainting (Telea, J. Graphics Tools 2004), OpenCV's ``inpaint`` (inpainting
  peer).
- :class:`PullPush`: pull-push interpolation (Gortler et al., SIGGRAPH 1996;
  :func:`mmexp.networks.inpainting.pull_push_fill`), the fill ``model=inpaint`` starts from (inpainting peer:
  what the learned residual adds over it).

The denoisers take the noise level in grey levels of 255 (``sigma``) or, with ``sigma=None``, estimate it per
image from the finest diagonal Haar wavelet coefficients (:func:`estimate_sigma`; Donoho & Johnstone 1994),
so one configuration serves every noise level of a blind benchmark.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmexp.errors import ConfigError, MissingDependencyError
from mmexp.models.restoration import Restorer


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [-1, 1] -> ``[H, W, C]`` uint8 (rounded, clipped), as an 8-bit image file holds it."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def from_uint8(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``[H, W(, C)]`` uint8 -> ``[C, H, W]`` in [-1, 1] on ``like``'s device and dtype."""
    t = torch.from_numpy(np.ascontiguousarray(a if a.ndim == 3 else a[..., None])).permute(2, 0, 1)
    return (t.to(like.dtype) / 127.5 - 1).to(like.device)


def estimate_sigma(x: torch.Tensor) -> torch.Tensor:
    """Noise standard deviation of each image ``[B, C, H, W]`` in [-1, 1], in grey levels of 255: the median
    absolute finest diagonal Haar coefficient / 0.6745 (robust to edges), averaged over channels."""
    x = x.float()[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    sigma = hh.flatten(2).abs().median(dim=2).values / 0.6745  # [B, C], on the [-1, 1] scale
    return sigma.mean(dim=1) * 255 / 2


class Baseline(Restorer):
    """A classical restorer (no trained weights: ``needs_checkpoint = False``); see the module docstring.

    Args:
        channels (int): image channels. Default: 3.
        num_preview (int): images in the preview grid. Default: 4.
    """

    needs_checkpoint = False

    def configure_optimizers(self):
        raise ConfigError(f"{type(self).__name__} is a classical method without trained weights: nothing to train; "
                          "score it with task=eval or run it with task=restore")


class Identity(Baseline):
    """The degraded input, unchanged (same size: degradations that keep the size, e.g. noise, JPEG, masks).

    Its output is clipped to the image range like every restorer's (as an 8-bit file of the input would be), so
    with unclipped Gaussian noise its PSNR is a little above the textbook ``20 log10(255 / sigma)`` on images
    with pixels near black or white.

    Args:
        channels, num_preview: see :class:`Baseline`.
    """

    def predict(self, input, hole=None, caption=None):
        return input


class Bicubic(Baseline):
    """Bicubic upsampling by ``scale``.

    Args:
        scale (int): upsampling factor. Default: 4.
        kernel (str): ``"matlab"`` (MATLAB's imresize, as the SR literature's bicubic rows) or ``"torch"``
            (``F.interpolate``). Default: ``"matlab"``.
        channels, num_preview: see :class:`Baseline`.
    """

    def __init__(self, scale: int = 4, kernel: str = "matlab", channels: int = 3, num_preview: int = 4) -> None:
        super().__init__(channels, num_preview=num_preview)
        if kernel not in ("matlab", "torch"):
            raise ConfigError(f"Bicubic: kernel must be 'matlab' or 'torch', got {kernel!r}")
        if int(scale) < 1:
            raise ConfigError(f"Bicubic: scale must be >= 1, got {scale}")
        self.scale, self.kernel = int(scale), kernel

    def predict(self, input, hole=None, caption=None):
        if self.kernel == "torch":
            return F.interpolate(input, scale_factor=self.scale, mode="bicubic", align_corners=False)
        from mmexp.degradations.resize import imresize

        return imresize(input, scale=float(self.scale))


class _Denoiser(Baseline):
    def __init__(self, sigma: float | None = None, channels: int = 3, num_preview: int = 4) -> None:
        super().__init__(channels, num_preview=num_preview)
        if sigma is not None and float(sigma) < 0:
            raise ConfigError(f"{type(self).__name__}: sigma must be >= 0 (grey levels of 255) or null, got {sigma}")
        self.sigma = None if sigma is None else float(sigma)

    def sigmas(self, x: torch.Tensor) -> list[float]:
        if self.sigma is not None:
            return [self.sigma] * len(x)
        return estimate_sigma(x).tolist()

    def predict(self, input, hole=None, caption=None):
        return torch.stack([self.denoise(image, s) for image, s in zip(input, self.sigmas(input))])

    def denoise(self, image: torch.Tensor, sigma: float) -> torch.Tensor:
        raise NotImplementedError


class NLMeans(_Denoiser):
    """Non-local means (OpenCV ``fastNlMeansDenoisingColored``; grey: ``fastNlMeansDenoising``) on 8-bit images.

    Args:
        sigma (float | None): noise std in grey levels of 255, or None to estimate it per image. Default: None.
        h_factor (float): filter strength ``h = h_factor * sigma`` (luma and colour). Default: 0.8.
        template_window (int): patch side. Default: 7.
        search_window (int): search window side. Default: 21.
        channels, num_preview: see :class:`Baseline`.
    """

    def __init__(self, sigma: float | None = None, h_factor: float = 0.8, template_window: int = 7,
                 search_window: int = 21, channels: int = 3, num_preview: int = 4) -> None:
        super().__init__(sigma, channels, num_preview)
        self.h_factor, self.template_window, self.search_window = float(h_factor), int(template_window), int(search_window)

    def denoise(self, image, sigma):
        cv2 = _cv2()
        h = max(self.h_factor * sigma, 1e-3)
        a = to_uint8(image)
        if a.shape[2] == 3:
            out = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(a), None, h, h, self.template_window,
                                                  self.search_window)
        else:
            out = cv2.fastNlMeansDenoising(np.ascontiguousarray(a[..., 0]), None, h, self.template_window,
                                           self.search_window)
        return from_uint8(out, image)


class BM3D(_Denoiser):
    """BM3D (the ``bm3d`` package, ``bm3d_rgb`` for colour, in its YCbCr-like opponent space) on float images.

    Args:
        sigma (float | None): noise std in grey levels of 255, or None to estimate it per image. Default: None.
        channels, num_preview: see :class:`Baseline`.
    """

    def __init__(self, sigma: float | None = None, channels: int = 3, num_preview: int = 4) -> None:
        super().__init__(sigma, channels, num_preview)
        _bm3d()  # fail at construction, not at the first image

    def denoise(self, image, sigma):
        bm3d = _bm3d()
        z = ((image.detach().double().cpu() + 1) / 2).permute(1, 2, 0).numpy()
        s = max(sigma, 1e-3) / 255
        out = bm3d.bm3d_rgb(z, s) if z.shape[2] == 3 else bm3d.bm3d(z[..., 0], s)[..., None]
        return (torch.from_numpy(np.asarray(out, dtype=np.float32)).permute(2, 0, 1) * 2 - 1).to(image)


class Telea(Baseline):
    """Telea's fast-marching inpainting (OpenCV ``inpaint(..., INPAINT_TELEA)``) of ``hole`` on 8-bit images.

    Args:
        radius (int): neighbourhood radius in pixels. Default: 5.
        channels, num_preview: see :class:`Baseline`.
    """

    def __init__(self, radius: int = 5, channels: int = 3, num_preview: int = 4) -> None:
        super().__init__(channels, inpainting=True, num_preview=num_preview)
        self.radius = int(radius)

    def predict(self, input, hole=None, caption=None):
        cv2 = _cv2()
        out = []
        for image, h in zip(input, hole):
            a = to_uint8(image)
            mask = (h[0] > 0.5).to(torch.uint8).cpu().numpy() * 255
            res = cv2.inpaint(np.ascontiguousarray(a), mask, self.radius, cv2.INPAINT_TELEA)
            out.append(from_uint8(res, image))
        return torch.stack(out)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("this baseline needs OpenCV: pip install opencv-python-headless "
                                     '(or pip install "mmexp[restore]")') from None
    return cv2


def _bm3d():
    try:
        import bm3d
    except ImportError:
        raise MissingDependencyError('model=bm3d needs the bm3d package: pip install bm3d (or "mmexp[bm3d]")') from None
    return bm3d


class PullPush(Baseline):
    """Pull-push interpolation of ``hole`` (:func:`mmexp.networks.inpainting.pull_push_fill`), in floating point.

    Args:
        gain (float): see :func:`~mmexp.networks.inpainting.pull_push_fill`. Default: 4.
        channels, num_preview: see :class:`Baseline`.
    """

    def __init__(self, gain: float = 4.0, channels: int = 3, num_preview: int = 4) -> None:
        super().__init__(channels, inpainting=True, num_preview=num_preview)
        self.gain = float(gain)

    def predict(self, input, hole=None, caption=None):
        from mmexp.networks.inpainting import pull_push_fill

        return pull_push_fill(input, 1 - hole.to(input.dtype), self.gain)
