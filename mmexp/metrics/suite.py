"""``MetricSuite``: the one metric module used by the validation callback, ``task=eval``/``task=sample``
and ``python -m mmexp.score``.

Usage::

    suite = hydra.utils.instantiate(cfg.metrics)      # cheap: nothing is loaded yet
    key = suite.reference_key(dataset="cifar10", split="test", resolution=32)
    if suite.needs_real and not suite.load_reference(key):
        for batch in dm.dataloader("test"):
            suite.update_real(batch["image"].to(device))
        suite.save_reference(key)
    for fake in generated_batches:
        suite.update_fake(fake)                          # features stay on fake.device
    results = suite.compute()                            # {"fid": ..., "kid_mean": ..., ...}
    record = {"metrics": results, "protocol": suite.protocol}
    suite.reset()                                        # keeps a loaded reference

Generation metrics (fid, kid, is, pr) use the FID Inception-v3 (see :mod:`.inception`), reproduce
torch-fidelity's definitions and defaults (KID: 100 subsets of up to 1000, cubic kernel; IS: 10 splits;
PR: k = 3; RNG seed 2020 for subsets/shuffles), and accumulate features on the input's device.
Paired metrics (psnr, ssim, lpips/st_lpips) are computed per image and averaged (see
:mod:`.restoration`). The suite holds its networks outside ``state_dict`` and loads them lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from mmexp.errors import ConfigError, WeightsNotFoundError
from mmexp.metrics import reference as refcache
from mmexp.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from mmexp.metrics.generation import inception_score, kernel_inception_distance, precision_recall
from mmexp.metrics.inception import (
    EXTRACTOR_NAME,
    INPUT_CONVERSION,
    RESIZE,
    InceptionV3Features,
    InceptionWeights,
    resolve_inception_weights,
    to_uint8,
)
from mmexp.metrics.restoration import PerceptualDistance, prepare, psnr_per_image, ssim_per_image

log = logging.getLogger(__name__)

GENERATION_METRICS = ("fid", "kid", "is", "pr")
PAIRED_METRICS = ("psnr", "ssim", "lpips", "st_lpips")
METRIC_CHOICES = GENERATION_METRICS + PAIRED_METRICS
FEATURE_METRICS = ("fid", "kid", "pr")  # those that need real-image features
_FRECHET_GRAM_MAX = 2048  # use the (exact) Gram-matrix form of the Fréchet distance up to this many samples


def parse_metrics(metrics: str | Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(" ", "").split(",") if m]
    out = []
    for m in metrics:
        m = str(m).strip().lower()
        if m not in METRIC_CHOICES:
            raise ConfigError(f"unknown metric {m!r}; choose from: {', '.join(METRIC_CHOICES)}")
        if m not in out:
            out.append(m)
    if "lpips" in out and "st_lpips" in out:
        raise ConfigError("choose one of lpips and st_lpips")
    return tuple(out)


class MetricSuite(nn.Module):
    """A named metric protocol. See the module docstring.

    Args:
        name: protocol name (``fid10k_test``, ``val``...).
        metrics: subset of ``fid, kid, is, pr, psnr, ssim, lpips, st_lpips`` (list or comma string).
            ``lpips`` reports ``lpips`` when torchvision's backbone weights are cached and otherwise
            ``st_lpips`` (see ``perceptual``); ``st_lpips`` always uses Shift-Tolerant LPIPS.
        reference_split: the real split the generated samples are compared with.
        num_samples: generated samples the protocol uses; ``update_fake`` ignores samples beyond it.
        reference_samples: real samples used (None: the whole split); ``update_real`` ignores the rest.
        weights_path: explicit Inception weights (torch-fidelity layout); else resolved offline.
        allow_download: allow downloading torch-fidelity's weights as a last resort.
        resize: must be torch-fidelity's TF1-compatible bilinear resize to 299 (recorded in the protocol).
        batch_size: Inception batch size (inputs are split into chunks of this size).
        seed: RNG seed of the KID subsets and the IS shuffle (torch-fidelity's default 2020).
        kid_subset_size: adapted down to the number of samples when there are fewer.
        y_channel, crop_border, quantize: PSNR/SSIM options (BasicSR definitions).
        perceptual: ``auto`` | ``lpips`` | ``st_lpips`` for the ``lpips`` entry; perceptual_net: alex | vgg.
        refstats_dir: reference statistics cache dir (default ``~/.cache/mmexp/refstats``).
    """

    def __init__(
        self,
        name: str = "custom",
        metrics: str | Sequence[str] = ("fid", "kid"),
        reference_split: str | None = "test",
        num_samples: int | None = None,
        reference_samples: int | None = None,
        feature_extractor: str = EXTRACTOR_NAME,
        weights_path: str | None = None,
        allow_download: bool = False,
        resize: str = RESIZE,
        batch_size: int = 64,
        seed: int = 2020,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        is_splits: int = 10,
        pr_k: int = 3,
        y_channel: bool = False,
        crop_border: int = 0,
        quantize: bool = False,
        perceptual: str = "auto",
        perceptual_net: str = "alex",
        refstats_dir: str | None = None,
        channels_last: bool = True,
        description: str = "",
    ) -> None:
        super().__init__()
        self.name = str(name)
        self.metrics = parse_metrics(metrics)
        if feature_extractor != EXTRACTOR_NAME:
            raise ConfigError(f"feature_extractor must be {EXTRACTOR_NAME!r}, got {feature_extractor!r}")
        if resize != RESIZE:
            raise ConfigError(f"resize must be {RESIZE!r} (the only one implemented), got {resize!r}")
        if perceptual not in ("auto", "lpips", "st_lpips"):
            raise ConfigError(f"perceptual must be auto, lpips or st_lpips, got {perceptual!r}")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.reference_split = reference_split
        self.num_samples = None if num_samples is None else int(num_samples)
        self.reference_samples = None if reference_samples is None else int(reference_samples)
        self.feature_extractor = feature_extractor
        self.weights_path = weights_path
        self.allow_download = bool(allow_download)
        self.resize = resize
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.kid_subsets = int(kid_subsets)
        self.kid_subset_size = int(kid_subset_size)
        self.is_splits = int(is_splits)
        self.pr_k = int(pr_k)
        self.y_channel = bool(y_channel)
        self.crop_border = int(crop_border)
        self.quantize = bool(quantize)
        self.perceptual = "st_lpips" if "st_lpips" in self.metrics else perceptual
        self.perceptual_net = perceptual_net
        self.refstats_dir = Path(refstats_dir).expanduser() if refstats_dir else None
        self.channels_last = bool(channels_last)
        self.description = description
        # networks live outside the module tree: never in a state_dict, loaded on first use
        self._nets: dict = {}
        self._weights: InceptionWeights | None = None
        self._reference: dict[str, torch.Tensor] | None = None
        self._reference_key: str | None = None
        self._key_fields: dict[str, dict] = {}
        self._last_counts: dict[str, int] = {}
        self._warned_is = False
        self.reset(keep_real=False)

    # ------------------------------------------------------------------ properties
    @property
    def generation_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in GENERATION_METRICS)

    @property
    def paired_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in PAIRED_METRICS)

    @property
    def needs_features(self) -> bool:
        return bool(self.generation_metrics)

    @property
    def needs_real(self) -> bool:
        """True when real images must be fed (feature metrics requested and no reference loaded)."""
        return any(m in FEATURE_METRICS for m in self.metrics) and self._reference is None

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    @property
    def num_fake(self) -> int:
        return self._n_fake

    @property
    def num_real(self) -> int:
        if self._reference is not None:
            return int(self._reference["n"])
        return self._n_real

    @property
    def num_pairs(self) -> int:
        return self._n_pairs

    # ------------------------------------------------------------------ networks (lazy)
    def inception_weights(self) -> InceptionWeights:
        if self._weights is None:
            self._weights = resolve_inception_weights(self.weights_path, self.allow_download)
        return self._weights

    def _extractor(self, device: torch.device) -> InceptionV3Features:
        net = self._nets.get("inception")
        if net is None:
            net = InceptionV3Features.from_weights(self.inception_weights())
            net.channels_last = self.channels_last
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
            self._nets["inception"] = net
        if next(net.parameters()).device != device:
            net = net.to(device)
            self._nets["inception"] = net
        return net

    def _perceptual(self, device: torch.device) -> PerceptualDistance:
        net = self._nets.get("perceptual")
        if net is None:
            net = PerceptualDistance(self.perceptual, self.perceptual_net)
            self._nets["perceptual"] = net
        if next(net.parameters()).device != device:
            net = net.to(device)
            self._nets["perceptual"] = net
        return net

    @property
    def perceptual_name(self) -> str | None:
        """``lpips`` or ``st_lpips`` (what the ``lpips`` entry will be reported as), None if not requested."""
        if not any(m in ("lpips", "st_lpips") for m in self.metrics):
            return None
        if "perceptual" in self._nets:
            return self._nets["perceptual"].name
        if self.perceptual == "auto":
            from mmexp.metrics.restoration import lpips_available

            return "lpips" if lpips_available(self.perceptual_net) else "st_lpips"
        return self.perceptual

    # ------------------------------------------------------------------ state
    def reset(self, keep_real: bool = False) -> None:
        """Forget generated samples and pairs (and accumulated real features unless ``keep_real``).
        A reference loaded with :meth:`load_reference` is kept (see :meth:`clear_reference`)."""
        self._fake_feats: list[torch.Tensor] = []
        self._fake_logits: list[torch.Tensor] = []
        self._n_fake = 0
        if not keep_real:
            self._real_feats: list[torch.Tensor] = []
            self._n_real = 0
        self._psnr: list[torch.Tensor] = []
        self._ssim: list[torch.Tensor] = []
        self._lp: list[torch.Tensor] = []
        self._n_pairs = 0

    def clear_reference(self) -> None:
        self._reference = None
        self._reference_key = None

    # ------------------------------------------------------------------ updates
    @torch.inference_mode()
    def _features(self, x: torch.Tensor, want_logits: bool):
        net = self._extractor(x.device)
        feats, logits = [], []
        for chunk in x.split(self.batch_size):
            f, lg = net(to_uint8(chunk), logits=want_logits)
            feats.append(f)
            if lg is not None:
                logits.append(lg)
        return torch.cat(feats), (torch.cat(logits) if logits else None)

    @staticmethod
    def _take(x: torch.Tensor, seen: int, limit: int | None) -> torch.Tensor:
        if limit is None:
            return x
        return x[: max(0, limit - seen)]

    def update_fake(self, x: torch.Tensor) -> None:
        """Generated images ``[B, C, H, W]`` in [-1, 1] (C = 1 or 3)."""
        if not self.generation_metrics:
            return
        x = self._take(x, self._n_fake, self.num_samples)
        if x.shape[0] == 0:
            return
        f, lg = self._features(x, want_logits="is" in self.metrics)
        self._fake_feats.append(f)
        if lg is not None:
            self._fake_logits.append(lg)
        self._n_fake += x.shape[0]

    def update_real(self, x: torch.Tensor) -> None:
        """Real images in [-1, 1]. A no-op when a reference is loaded or no metric needs them."""
        if not self.needs_real:
            return
        x = self._take(x, self._n_real, self.reference_samples)
        if x.shape[0] == 0:
            return
        f, _ = self._features(x, want_logits=False)
        self._real_feats.append(f)
        self._n_real += x.shape[0]

    @torch.inference_mode()
    def update_pair(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Paired prediction/target images in [-1, 1] (same shape) for psnr/ssim/lpips."""
        if not self.paired_metrics:
            return
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if "psnr" in self.metrics or "ssim" in self.metrics:
            p = prepare(pred, self.y_channel, self.crop_border, self.quantize)
            t = prepare(target, self.y_channel, self.crop_border, self.quantize)
            if "psnr" in self.metrics:
                self._psnr.append(psnr_per_image(p, t))
            if "ssim" in self.metrics:
                self._ssim.append(ssim_per_image(p, t))
        if "lpips" in self.metrics or "st_lpips" in self.metrics:
            net = self._perceptual(pred.device)
            for a, b in zip(pred.split(self.batch_size), target.split(self.batch_size)):
                self._lp.append(net(a, b))
        self._n_pairs += pred.shape[0]

    # ------------------------------------------------------------------ compute
    def _real_features(self) -> torch.Tensor | None:
        if self._reference is not None:
            return self._reference.get("features")
        return torch.cat(self._real_feats) if self._real_feats else None

    @torch.inference_mode()
    def compute(self) -> dict[str, float]:
        """Flat dict of the metrics there was data for (see ``docs/interfaces.md``)."""
        out: dict[str, float] = {}
        fake = torch.cat(self._fake_feats) if self._fake_feats else None
        real = self._real_features()
        have_real = real is not None or self._reference is not None
        if fake is not None and have_real:
            dev = fake.device
            if "fid" in self.metrics:
                if fake.shape[0] < 2:
                    log.warning("FID skipped: needs at least 2 generated samples, got %d", fake.shape[0])
                elif real is not None and max(real.shape[0], fake.shape[0]) <= _FRECHET_GRAM_MAX:
                    out["fid"] = frechet_distance_from_features(fake, real.to(dev))
                else:
                    mu_f, sig_f = feature_statistics(fake)
                    if self._reference is not None:
                        mu_r, sig_r = self._reference["mu"].to(dev), self._reference["sigma"].to(dev)
                    else:
                        mu_r, sig_r = feature_statistics(real)
                    out["fid"] = frechet_distance(mu_f, sig_f, mu_r, sig_r)
            if "kid" in self.metrics and real is not None:
                if min(fake.shape[0], real.shape[0]) < 2:
                    log.warning("KID skipped: needs at least 2 samples per set")
                else:
                    m, s, size = kernel_inception_distance(
                        fake, real.to(dev), self.kid_subsets, self.kid_subset_size, seed=self.seed)
                    out["kid_mean"], out["kid_std"] = m, s
                    self._last_counts["kid_subset_size"] = size
            if "pr" in self.metrics and real is not None:
                if min(fake.shape[0], real.shape[0]) <= self.pr_k:
                    log.warning("precision/recall skipped: needs more than k=%d samples per set", self.pr_k)
                else:
                    out["precision"], out["recall"] = precision_recall(fake, real.to(dev), k=self.pr_k)
        if "is" in self.metrics and fake is not None:
            if not self._fake_logits:
                if not self._warned_is:
                    log.warning(
                        "Inception Score skipped: the Inception weights in use (%s) have no logits (fc) layer. "
                        "Place torch-fidelity's full 'weights-inception-2015-12-05-6726825d.pth' in the torch hub "
                        "cache or set metrics.weights_path to compute it.", self.inception_weights().path.name)
                    self._warned_is = True
            elif fake.shape[0] < self.is_splits:
                log.warning("Inception Score skipped: needs at least %d samples", self.is_splits)
            else:
                out["is_mean"], out["is_std"] = inception_score(
                    torch.cat(self._fake_logits), self.is_splits, self.seed)
        if self._n_pairs:
            if self._psnr:
                out["psnr"] = float(torch.cat(self._psnr).mean())
            if self._ssim:
                out["ssim"] = float(torch.cat(self._ssim).mean())
            if self._lp:
                out[self._nets["perceptual"].name] = float(torch.cat(self._lp).double().mean())
        self._last_counts.update(num_fake=self._n_fake, num_real=self.num_real if have_real else 0,
                                 num_pairs=self._n_pairs)
        return out

    # ------------------------------------------------------------------ protocol
    @property
    def protocol(self) -> dict:
        """The protocol that travels with every number (JSON-serialisable)."""
        p: dict = {
            "name": self.name,
            "metrics": list(self.metrics),
            "reference_split": self.reference_split,
            "num_samples": self.num_samples,
            "reference_samples": self.reference_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }
        if self.generation_metrics:
            try:
                weights = self.inception_weights().identity()
            except WeightsNotFoundError:
                weights = "missing"
            p.update(
                feature_extractor={"name": self.feature_extractor, "features": "pool3 (2048)", "weights": weights},
                resize=self.resize,
                input_conversion=INPUT_CONVERSION,
            )
            if "kid" in self.metrics:
                p["kid"] = {"subsets": self.kid_subsets, "subset_size": self.kid_subset_size,
                            "kernel": "poly(degree=3, gamma=1/d, coef0=1)", "estimator": "unbiased"}
            if "is" in self.metrics:
                p["is"] = {"splits": self.is_splits, "logits": "unbiased (torch-fidelity)"}
            if "pr" in self.metrics:
                p["pr"] = {"k": self.pr_k}
            if self._reference_key is not None:
                p["reference_key"] = self._reference_key
        if self.paired_metrics:
            p["restoration"] = {
                "color": "y" if self.y_channel else "rgb",
                "crop_border": self.crop_border,
                "quantize": self.quantize,
                "ssim": "gaussian 11x11 sigma=1.5 K1=0.01 K2=0.03 valid",
                "reduction": "mean over images",
            }
            pn = self.perceptual_name
            if pn is not None:
                p["perceptual"] = (self._nets["perceptual"].identity() if "perceptual" in self._nets
                                   else {"name": pn, "net": self.perceptual_net})
        if self._last_counts:
            p["counts"] = dict(self._last_counts)
        return p

    # ------------------------------------------------------------------ reference statistics cache
    def _refstats_dir(self) -> Path:
        return self.refstats_dir or refcache.default_dir()

    def reference_fields(self, dataset: str, split: str | None = None, resolution=None, **extra) -> dict:
        w = self.inception_weights().identity()
        return {
            "dataset": str(dataset),
            "split": str(split if split is not None else self.reference_split),
            "resolution": resolution if not isinstance(resolution, (tuple, list)) else list(resolution),
            "protocol": self.name,
            "reference_samples": self.reference_samples,
            "features": any(m in ("kid", "pr") for m in self.metrics),
            "extractor": self.feature_extractor,
            "weights_sha256": w["sha256"],
            "resize": self.resize,
            "input_conversion": INPUT_CONVERSION,
            **{k: v for k, v in sorted(extra.items())},
        }

    def reference_key(self, dataset: str, split: str | None = None, resolution=None, **extra) -> str:
        """Cache key of the real statistics for (dataset, split, resolution, protocol, weights...)."""
        fields = self.reference_fields(dataset, split, resolution, **extra)
        key = refcache.make_key(fields)
        self._key_fields[key] = fields
        return key

    def reference_path(self, key: str) -> Path:
        return self._refstats_dir() / f"{key}.pt"

    def load_reference(self, key: str) -> bool:
        """Load cached real statistics; False (and nothing loaded) when missing, stale or corrupt."""
        if key not in self._key_fields:
            raise KeyError(f"unknown reference key {key!r}: obtain it from reference_key() first")
        tensors = refcache.load(self.reference_path(key), self._key_fields[key])
        if tensors is None:
            return False
        self._reference = tensors
        self._reference_key = key
        return True

    @torch.inference_mode()
    def save_reference(self, key: str) -> Path:
        """Save the real features accumulated with ``update_real`` under ``key`` and use them."""
        if key not in self._key_fields:
            raise KeyError(f"unknown reference key {key!r}: obtain it from reference_key() first")
        if not self._real_feats:
            raise ValueError("no real features to save: call update_real() first")
        real = torch.cat(self._real_feats)
        mu, sigma = feature_statistics(real)
        tensors = {"mu": mu, "sigma": sigma, "n": torch.tensor(real.shape[0])}
        if self._key_fields[key]["features"]:
            tensors["features"] = real.float()
        path = refcache.save(self.reference_path(key), self._key_fields[key], tensors)
        self._reference = {k: v.cpu() for k, v in tensors.items()}
        self._reference_key = key
        self._real_feats = []
        self._n_real = 0
        return path

    def ensure_reference(self, batches: Iterable, dataset: str, split: str | None = None, resolution=None,
                         device: torch.device | str | None = None) -> bool:
        """Load the cached reference, or compute it from ``batches`` (tensors or dicts with ``image``) and
        cache it. Returns True when it came from the cache. A no-op when no metric needs real images."""
        if not any(m in FEATURE_METRICS for m in self.metrics):
            return True
        key = self.reference_key(dataset, split, resolution)
        if self.load_reference(key):
            log.info("Reference statistics loaded from %s", self.reference_path(key))
            return True
        self.clear_reference()
        self._real_feats, self._n_real = [], 0
        for b in batches:
            x = b["image"] if isinstance(b, dict) else b
            if device is not None:
                x = x.to(device)
            self.update_real(x)
            if self.reference_samples is not None and self._n_real >= self.reference_samples:
                break
        path = self.save_reference(key)
        log.info("Reference statistics saved to %s", path)
        return False

    def extra_repr(self) -> str:
        return f"name={self.name!r}, metrics={list(self.metrics)}"
