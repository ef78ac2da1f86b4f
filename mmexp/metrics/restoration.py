"""Paired (restoration) metrics: PSNR, SSIM, LPIPS / ST-LPIPS.

Conventions (BasicSR's ``calculate_psnr`` / ``calculate_ssim``):

- inputs are float images in [-1, 1], mapped to [0, 1] (``quantize=True`` first rounds to 8 bit, as
  when images are saved as PNG and re-read);
- RGB by default (data range 1, i.e. 255 on the 8-bit scale); ``y_channel=True`` uses BasicSR's
  ITU-R BT.601 luma ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in [0, 1], Y on the
  [0, 255] scale), evaluated as Y / 255 with data range 1 (PSNR and SSIM are unchanged by the scale);
- ``crop_border=c`` drops c pixels on each side before computing;
- SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, "valid" region only,
  mean of the SSIM map per channel, then the mean over channels (= skimage ``structural_similarity(
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` and BasicSR ``_ssim``);
- each metric is computed per image and averaged over images;
- ``psnr_hole`` (inpainting): PSNR over the hole's pixels only (after the same conversion and crop), averaged
  over the images that have a hole.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmexp.errors import WeightsNotFoundError

log = logging.getLogger(__name__)

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def prepare(x: torch.Tensor, y_channel: bool = False, crop_border: int = 0, quantize: bool = False):
    """[-1, 1] images -> [0, 1] float32 (optionally Y channel, cropped), as PSNR/SSIM see them."""
    x = x.detach().to(torch.float32)
    x = (x + 1) / 2
    if quantize:
        x = (x * 255).round().clamp(0, 255) / 255
    if y_channel and x.shape[1] == 3:
        w = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = ((x * w).sum(dim=1, keepdim=True) + 16.0) / 255.0
    if crop_border:
        c = int(crop_border)
        x = x[..., c:-c, c:-c]
    return x


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR of each image pair ``[N, C, H, W]`` (float64 accumulation); inf for identical images."""
    mse = (pred.to(torch.float64) - target.to(torch.float64)).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def psnr_masked_per_image(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          data_range: float = 1.0) -> torch.Tensor:
    """PSNR of each image pair ``[N, C, H, W]`` over the pixels where ``mask [N, 1, H, W]`` is set (an inpainting
    hole: the known pixels around it, equal in every method's output, no longer dilute the difference); every
    channel of those pixels counts. NaN for an image whose mask is empty."""
    m = (mask > 0.5).to(torch.float64).expand_as(pred)
    err = (pred.to(torch.float64) - target.to(torch.float64)).pow(2) * m
    count = m.flatten(1).sum(dim=1)
    mse = err.flatten(1).sum(dim=1) / count
    return torch.where(count > 0, 10 * torch.log10(data_range**2 / mse), torch.full_like(mse, float("nan")))


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def ssim_per_image(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """SSIM of each image pair ``[N, C, H, W]``: mean over the valid SSIM map, then over channels."""
    x = pred.to(torch.float64)
    y = target.to(torch.float64)
    n, c, h, w = x.shape
    if h < win_size or w < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size}, got {h}x{w}")
    g = _gaussian_window(win_size, sigma, x.device, x.dtype)
    gh = g.view(1, 1, 1, win_size).expand(c, 1, 1, win_size)
    gv = g.view(1, 1, win_size, 1).expand(c, 1, win_size, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return smap.mean(dim=(2, 3)).mean(dim=1)


# --------------------------------------------------------------------------------------------------
# perceptual metrics
# --------------------------------------------------------------------------------------------------
_TV_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def lpips_backbone_file(net: str = "alex") -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _TV_BACKBONE_FILES[net]


def lpips_available(net: str = "alex") -> bool:
    """The full LPIPS needs torchvision's ImageNet backbone in the hub cache (online-only otherwise)."""
    return lpips_backbone_file(net).is_file()


def _import_stlpips():
    """Import ``stlpips_pytorch.stlpips``; it imports ``torchsummary`` and ``IPython`` at module level
    without using them for inference, so absent ones are stubbed for the duration of the import."""
    added = []
    for name, attr in (("torchsummary", "summary"), ("IPython", "embed")):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            mod = types.ModuleType(name)
            setattr(mod, attr, lambda *a, **k: None)
            sys.modules[name] = mod
            added.append(name)
    try:
        from stlpips_pytorch import stlpips
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return stlpips


def stlpips_weights_file(net: str = "alex") -> Path | None:
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"


class PerceptualDistance(nn.Module):
    """LPIPS (torchmetrics' implementation, torchvision backbone + LPIPS v0.1 linear layers) or
    Shift-Tolerant LPIPS (stlpips-pytorch, backbone and linear layers bundled). ``name`` says which.

    ``forward(pred, target)`` takes [-1, 1] images and returns one distance per pair.
    """

    def __init__(self, kind: str = "auto", net: str = "alex") -> None:
        super().__init__()
        if kind not in ("auto", "lpips", "st_lpips"):
            raise ValueError(f"perceptual kind must be auto, lpips or st_lpips, got {kind!r}")
        if kind == "auto":
            kind = "lpips" if lpips_available(net) else "st_lpips"
            if kind == "st_lpips":
                log.info("LPIPS backbone %s not in the torch hub cache: reporting st_lpips (Shift-Tolerant "
                         "LPIPS, bundled weights) instead of lpips", _TV_BACKBONE_FILES[net])
        self.net_name = net
        if kind == "lpips":
            if not lpips_available(net):
                raise WeightsNotFoundError(
                    f"LPIPS needs torchvision's ImageNet {net} weights '{_TV_BACKBONE_FILES[net]}' in "
                    f"{lpips_backbone_file(net).parent}. Provide them by copying the file there (download from "
                    "https://download.pytorch.org/models/ on a machine with internet), or use "
                    "metrics.perceptual=st_lpips (Shift-Tolerant LPIPS, weights bundled with "
                    "`pip install stlpips-pytorch`)."
                )
            from torchmetrics.functional.image.lpips import _LPIPS

            self.model = _LPIPS(pretrained=True, net=net, resize=None)
            self.weights_file = _TV_BACKBONE_FILES[net]
        else:
            wf = stlpips_weights_file(net)
            if wf is None or not wf.is_file():
                raise WeightsNotFoundError(
                    f"ST-LPIPS weights '{net}_shift_tolerant.pth' not found"
                    + (f" at {wf}" if wf else "")
                    + ". Provide them with `pip install stlpips-pytorch` (bundles them), or place torchvision's "
                    f"'{_TV_BACKBONE_FILES[net]}' in {lpips_backbone_file(net).parent} to use lpips."
                )
            stlpips = _import_stlpips()
            self.model = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False, model_path=str(wf))
            self.weights_file = wf.name
        self.name = kind
        self.model.requires_grad_(False)
        self.model.eval()

    def identity(self) -> dict:
        return {"name": self.name, "net": self.net_name, "weights_file": self.weights_file}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.float()
        target = target.float()
        if pred.shape[1] == 1:
            pred = pred.expand(-1, 3, -1, -1)
            target = target.expand(-1, 3, -1, -1)
        out = self.model(pred, target)
        return out.reshape(pred.shape[0], -1).mean(dim=1)
