"""The networks a :class:`~mmexp.metrics.MetricSuite` scores with, loaded on first use.

They live outside the suite's module tree on purpose: a metric network must never end up in a model's
``state_dict`` (checkpoints would carry 100 MB of Inception weights), and a protocol that only asks for
PSNR must not load Inception at all. One :class:`MetricNetworks` per suite keeps one copy per network,
moved to the device of the images it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmexp.metrics.inception import (
    InceptionV3Features,
    InceptionWeights,
    resolve_inception_weights,
    to_uint8,
)
from mmexp.metrics.restoration import PerceptualDistance

PERCEPTUAL = ("lpips", "st_lpips")


class MetricNetworks:
    """Lazily loaded FID Inception-v3 and perceptual (LPIPS / ST-LPIPS) networks.

    Args:
        weights_path: explicit Inception weights (torch-fidelity layout); else resolved offline.
        allow_download: allow downloading torch-fidelity's weights as a last resort.
        perceptual: ``auto`` | ``lpips`` | ``st_lpips``: what the ``lpips`` entry is computed with
            (``auto``: LPIPS when torchvision's backbone weights are cached, else ST-LPIPS).
        perceptual_net: ``alex`` | ``vgg``.
        channels_last: run Inception in channels-last memory format (faster on GPUs and CPUs).
        batch_size: Inception batch size (inputs are split into chunks of this size).
    """

    def __init__(self, weights_path: str | None = None, allow_download: bool = False, perceptual: str = "auto",
                 perceptual_net: str = "alex", channels_last: bool = True, batch_size: int = 64) -> None:
        self.weights_path = weights_path
        self.allow_download = bool(allow_download)
        self.perceptual = perceptual
        self.perceptual_net = perceptual_net
        self.channels_last = bool(channels_last)
        self.batch_size = int(batch_size)
        self.loaded: dict[str, nn.Module] = {}
        self._weights: InceptionWeights | None = None

    def inception_weights(self) -> InceptionWeights:
        if self._weights is None:
            self._weights = resolve_inception_weights(self.weights_path, self.allow_download)
        return self._weights

    def get(self, name: str, device: torch.device) -> nn.Module:
        """``inception`` or ``perceptual`` on ``device`` (loaded on the first call)."""
        net = self.loaded.get(name)
        if net is None:
            if name == "inception":
                net = InceptionV3Features.from_weights(self.inception_weights())
                net.channels_last = self.channels_last
                if self.channels_last:
                    net = net.to(memory_format=torch.channels_last)
            elif name == "perceptual":
                net = PerceptualDistance(self.perceptual, self.perceptual_net)
            else:
                raise KeyError(f"unknown metric network {name!r}; choose inception or perceptual")
        if next(net.parameters()).device != device:
            net = net.to(device)
        self.loaded[name] = net
        return net

    @torch.inference_mode()
    def features(self, x: torch.Tensor, want_logits: bool):
        """Inception pool features ``[N, 2048]`` (and logits ``[N, 1008]`` when asked and available)
        of images in [-1, 1], on ``x.device``."""
        net = self.get("inception", x.device)
        feats, logits = [], []
        # in float32 whatever the run's precision (bf16-mixed training): the protocol's numbers stay exact
        with torch.autocast(x.device.type, enabled=False):
            for chunk in x.float().split(self.batch_size):
                f, lg = net(to_uint8(chunk), logits=want_logits)
                feats.append(f)
                if lg is not None:
                    logits.append(lg)
        return torch.cat(feats), (torch.cat(logits) if logits else None)

    @torch.inference_mode()
    def perceptual_distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image perceptual distance ``[N]`` of paired images in [-1, 1]."""
        net = self.get("perceptual", pred.device)
        with torch.autocast(pred.device.type, enabled=False):
            return torch.cat([net(a, b) for a, b in zip(pred.float().split(self.batch_size),
                                                        target.float().split(self.batch_size))])

    def perceptual_name(self, metrics: Sequence[str]) -> str | None:
        """``lpips`` or ``st_lpips``: what the ``lpips`` entry of ``metrics`` is reported as (None if absent)."""
        if not any(m in PERCEPTUAL for m in metrics):
            return None
        if "perceptual" in self.loaded:
            return self.loaded["perceptual"].name
        if self.perceptual == "auto":
            from mmexp.metrics.restoration import lpips_available

            return "lpips" if lpips_available(self.perceptual_net) else "st_lpips"
        return self.perceptual

    def perceptual_identity(self, metrics: Sequence[str]) -> dict | None:
        name = self.perceptual_name(metrics)
        if name is None:
            return None
        if "perceptual" in self.loaded:
            return self.loaded["perceptual"].identity()
        return {"name": name, "net": self.perceptual_net}
