"""``MetricSuite``: the one metric module used by the validation callback, ``task=eval``/``task=sample``
and ``python -m mmexp.score``.

Usage::

    suite = hydra.utils.instantiate(cfg.metrics)      # cheap: nothing is loaded yet
    key = suite.reference_key(dataset="cifar10", split="test", resolution=32)
    if suite.needs_real and not suite.load_reference(key):
        for batch in dm.dataloader("test"):
            suite.update_real(batch["image"].to(device), batch["index"])
        suite.save_reference(key)
    for fake, index in generated_batches:
        suite.update_fake(fake, index)                   # features stay on fake.device
    results = suite.compute()                            # {"fid": ..., "kid_mean": ..., ...}
    record = {"metrics": results, "protocol": suite.protocol}
    suite.reset()                                        # keeps a loaded reference

Generation metrics (fid, kid, is, pr) use the FID Inception-v3 (see :mod:`.inception`), reproduce
torch-fidelity's definitions and defaults (KID: 100 subsets of up to 1000, cubic kernel; IS: 10 splits;
PR: k = 3; RNG seed 2020 for subsets/shuffles), and accumulate features on the input's device.
Paired metrics (psnr, ssim, lpips/st_lpips) are computed per image and averaged (see
:mod:`.restoration`). Fed reconstructions of real images (:meth:`MetricSuite.update_reconstruction`)
instead of generated samples, the generation metrics are reported as ``rfid``, ``rkid_mean``...
The suite holds its networks outside ``state_dict`` and loads them lazily.

Every sample carries an index (its position in its set: ``batch["index"]``, or the order of arrival).
Under DDP (``torch.distributed`` initialised) :meth:`~MetricSuite.compute`,
:meth:`~MetricSuite.load_reference`, :meth:`~MetricSuite.save_reference` and
:meth:`~MetricSuite.missing_fake_indices` are collective: every rank calls them, each rank's samples
are gathered, one per index (``DistributedSampler`` pads with repeats), sorted by index, so every
rank computes the same numbers as a single process over the same samples (see :mod:`.distributed`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from mmexp.errors import ConfigError
from mmexp.metrics import reference as refcache
from mmexp.metrics.distributed import (
    IndexedSamples,
    all_gather_cat,
    all_gather_object,
    positions_to_indices,
)
from mmexp.metrics.generation import compare_features, inception_score
from mmexp.metrics.inception import EXTRACTOR_NAME, RESIZE, InceptionWeights
from mmexp.metrics.networks import MetricNetworks
from mmexp.metrics.protocol import (  # noqa: F401 - re-exported: the suite's names
    FAITHFULNESS_METRICS,
    FEATURE_METRICS,
    GENERATED,
    GENERATION_METRICS,
    METRIC_CHOICES,
    PAIRED_METRICS,
    RECONSTRUCTIONS,
    describe,
    parse_metrics,
    result_name,
)
from mmexp.metrics.reference import ReferenceStatistics
from mmexp.metrics.restoration import prepare, psnr_masked_per_image, psnr_per_image, ssim_per_image

log = logging.getLogger(__name__)

class MetricSuite(ReferenceStatistics, nn.Module):
    """A named metric protocol. See the module docstring.

    Args:
        name: protocol name (``fid10k_test``, ``val``...).
        metrics: subset of ``fid, kid, is, pr, psnr, ssim, lpips, st_lpips, caption_acc, label_acc`` (list or
            comma string). ``caption_acc`` / ``label_acc`` score generated shapes images against the captions /
            labels they were generated from (see :mod:`.faithfulness`).
            ``lpips`` reports ``lpips`` when torchvision's backbone weights are cached and otherwise
            ``st_lpips`` (see ``perceptual``); ``st_lpips`` always uses Shift-Tolerant LPIPS.
        reference_split: the real split the generated samples are compared with.
        num_samples: generated samples the protocol uses (those of index < num_samples; without
            indices, the first ones); ``update_fake`` ignores the others.
        reference_samples: real samples used (None: the whole split), chosen the same way.
        weights_path: explicit Inception weights (torch-fidelity layout); else resolved offline.
        allow_download: allow downloading torch-fidelity's weights as a last resort.
        resize: must be torch-fidelity's TF1-compatible bilinear resize to 299 (recorded in the protocol).
        batch_size: Inception batch size (inputs are split into chunks of this size).
        seed: RNG seed of the KID subsets and the IS shuffle (torch-fidelity's default 2020).
        kid_subset_size: adapted down to the number of samples when there are fewer.
        y_channel, crop_border, quantize: PSNR/SSIM options (BasicSR definitions).
        perceptual: ``auto`` | ``lpips`` | ``st_lpips`` for the ``lpips`` entry; perceptual_net: alex | vgg.
        refstats_dir: reference statistics cache dir (default ``~/.cache/mmexp/refstats``).
        attribute_reader: the :class:`~mmexp.metrics.faithfulness.AttributeReader` of ``caption_acc`` /
            ``label_acc`` (default: one with its default training config, cached beside ``refstats_dir``).
        splits: the splits ``task=eval`` scores, in order (default: ``[reference_split]``); e.g. ``[val,
            compositional]`` also scores scenes of held-out colour-shape pairs, reported as
            ``eval_compositional/...``.
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
        attribute_reader=None,
        splits: Sequence[str] | None = None,
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
        self.scored_split = reference_split  # the split actually scored (the callback sets it)
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
        self.channels_last = bool(channels_last)
        self.description = description
        # networks live outside the module tree: never in a state_dict, loaded on first use
        self._nets = MetricNetworks(weights_path, allow_download, self.perceptual, perceptual_net,
                                    self.channels_last, self.batch_size)
        self._store = refcache.ReferenceStore(refstats_dir)
        self._last_counts: dict[str, int] = {}
        self._warned_is = False
        self._fake, self._real, self._pairs = IndexedSamples(), IndexedSamples(), IndexedSamples()
        self.splits = tuple(splits) if splits else ((reference_split,) if reference_split else ())
        self._reader = attribute_reader
        # per-image faithfulness checks of generated images (captions, labels) and of real ones (the ceiling)
        self._captions, self._labels, self._real_captions = IndexedSamples(), IndexedSamples(), IndexedSamples()
        self._arrived = {"fake": 0, "real": 0, "pairs": 0}  # per rank, for samples given without index
        self._fake_kind: str | None = None
        self.reset(keep_real=False)

    # ------------------------------------------------------------------ properties
    @property
    def generation_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in GENERATION_METRICS)

    @property
    def paired_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in PAIRED_METRICS)

    @property
    def faithfulness_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in FAITHFULNESS_METRICS)

    @property
    def attribute_reader(self):
        """The shapes attribute reader (built on first access; trained or loaded on first read)."""
        if self._reader is None:
            from mmexp.metrics.faithfulness import AttributeReader

            refstats = self._store.directory or refcache.default_dir()
            self._reader = AttributeReader(cache_dir=str(refstats.parent))
        return self._reader

    @property
    def needs_features(self) -> bool:
        return bool(self.generation_metrics)

    @property
    def needs_reference(self) -> bool:
        """True when a requested metric compares with real images (fid, kid, pr)."""
        return any(m in FEATURE_METRICS for m in self.metrics)

    @property
    def needs_real(self) -> bool:
        """True when real images must be fed (feature metrics requested and no reference loaded)."""
        return self.needs_reference and self._store.tensors is None

    @property
    def fake_kind(self) -> str | None:
        """``generated`` or ``reconstructions``: what this rank was fed since :meth:`reset` (after
        :meth:`compute`, what any rank was fed), or None."""
        return self._fake_kind

    @property
    def num_fake(self) -> int:
        """Generated (or reconstructed) samples kept on this rank."""
        return len(self._fake)

    @property
    def num_real(self) -> int:
        """Real samples of the loaded reference, else those fed on this rank."""
        if self._store.tensors is not None:
            return int(self._store.tensors["n"])
        return len(self._real)

    @property
    def num_pairs(self) -> int:
        return len(self._pairs)

    @property
    def last_counts(self) -> dict[str, int]:
        """Sample counts of the last :meth:`compute` (over all ranks)."""
        return dict(self._last_counts)

    # ------------------------------------------------------------------ networks (lazy, see MetricNetworks)
    def inception_weights(self) -> InceptionWeights:
        return self._nets.inception_weights()

    @property
    def perceptual_name(self) -> str | None:
        """``lpips`` or ``st_lpips`` (what the ``lpips`` entry will be reported as), None if not requested."""
        return self._nets.perceptual_name(self.metrics)

    def perceptual_identity(self) -> dict | None:
        return self._nets.perceptual_identity(self.metrics)

    # ------------------------------------------------------------------ state
    def reset(self, keep_real: bool = False) -> None:
        """Forget generated samples and pairs (and accumulated real features unless ``keep_real``).
        A reference loaded with :meth:`load_reference` is kept (see :meth:`clear_reference`)."""
        self._fake.clear()
        self._pairs.clear()
        self._captions.clear()
        self._labels.clear()
        self._real_captions.clear()
        self._fake_kind = None
        self._arrived.update(fake=0, pairs=0)
        if not keep_real:
            self._real.clear()
            self._arrived["real"] = 0

    # ------------------------------------------------------------------ updates
    def _indices(self, kind: str, indices, n: int) -> torch.Tensor:
        if indices is None:
            index = positions_to_indices(self._arrived[kind], n)
        else:
            index = torch.as_tensor(indices).reshape(-1).to(device="cpu", dtype=torch.long)
            if index.numel() != n:
                raise ValueError(f"{n} images but {index.numel()} sample indices")
        self._arrived[kind] += n
        return index

    @staticmethod
    def _within(x: torch.Tensor, index: torch.Tensor, limit: int | None):
        """The samples of index < limit: the first ``limit`` of the set, whichever rank holds them."""
        if limit is None:
            return x, index
        keep = index < limit
        return x[keep.to(x.device)], index[keep]

    def update_fake(self, x: torch.Tensor, indices: torch.Tensor | Sequence[int] | None = None) -> None:
        """Generated images ``[B, C, H, W]`` in [-1, 1] (C = 1 or 3); ``indices``: each sample's index
        (``[B]``, e.g. the noise index), default: the order of arrival."""
        self._add_fake(x, indices, GENERATED)

    def update_reconstruction(self, x: torch.Tensor, indices: torch.Tensor | Sequence[int] | None = None) -> None:
        """Reconstructions of real images in place of generated samples: the generation metrics are
        then reported as ``rfid``, ``rkid_mean``... and the protocol says so."""
        self._add_fake(x, indices, RECONSTRUCTIONS)

    def _add_fake(self, x: torch.Tensor, indices, kind: str) -> None:
        if not self.generation_metrics:
            return
        if self._fake_kind not in (None, kind):
            raise ValueError(f"this suite already holds {self._fake_kind} samples; {kind} are scored "
                             "separately (call reset() in between)")
        self._fake_kind = kind
        x, index = self._within(x, self._indices("fake", indices, x.shape[0]), self.num_samples)
        if not index.numel():
            return
        f, lg = self._nets.features(x, want_logits="is" in self.metrics)
        self._fake.add(index, features=f, **({"logits": lg} if lg is not None else {}))

    def update_real(self, x: torch.Tensor, indices: torch.Tensor | Sequence[int] | None = None) -> None:
        """Real images in [-1, 1]. A no-op when a reference is loaded or no metric needs them."""
        if not self.needs_real:
            return
        x, index = self._within(x, self._indices("real", indices, x.shape[0]), self.reference_samples)
        if index.numel():
            self._real.add(index, features=self._nets.features(x, want_logits=False)[0])

    @torch.inference_mode()
    def update_pair(self, pred: torch.Tensor, target: torch.Tensor,
                    indices: torch.Tensor | Sequence[int] | None = None, hole: torch.Tensor | None = None) -> None:
        """Paired prediction/target images in [-1, 1] (same shape) for psnr/ssim/lpips. With ``hole`` (``[N, 1,
        H, W]``, 1 = filled pixel: inpainting) psnr is also reported inside the holes, as ``psnr_hole``; give it
        with every batch of a run or with none."""
        if not self.paired_metrics:
            return
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if hole is not None and (hole.dim() != 4 or hole.shape[1] != 1 or hole.shape[0] != pred.shape[0]
                                 or hole.shape[-2:] != pred.shape[-2:]):
            raise ValueError(f"hole {tuple(hole.shape)} does not fit images {tuple(pred.shape)}: expected "
                             f"{(pred.shape[0], 1, *pred.shape[-2:])}")
        index = self._indices("pairs", indices, pred.shape[0])
        values = {}
        if "psnr" in self.metrics or "ssim" in self.metrics:
            p = prepare(pred, self.y_channel, self.crop_border, self.quantize)
            t = prepare(target, self.y_channel, self.crop_border, self.quantize)
            if "psnr" in self.metrics:
                values["psnr"] = psnr_per_image(p, t)
                if hole is not None:
                    c = int(self.crop_border)
                    h = hole[..., c:-c, c:-c] if c else hole
                    values["psnr_hole"] = psnr_masked_per_image(p, t, h.to(p.device))
            if "ssim" in self.metrics:
                values["ssim"] = ssim_per_image(p, t)
        if "lpips" in self.metrics or "st_lpips" in self.metrics:
            values["perceptual"] = self._nets.perceptual_distance(pred, target)
        self._pairs.add(index, **values)

    @torch.inference_mode()
    def update_conditional(self, x: torch.Tensor, caption: Sequence[str] | None = None,
                           label: torch.Tensor | None = None, indices: torch.Tensor | Sequence[int] | None = None,
                           real: bool = False) -> None:
        """Images in [-1, 1] with the captions and/or labels they were generated from (``real``: real images with
        their own captions, scored as ``real_caption_*``, the reader's ceiling) for ``caption_acc`` /
        ``label_acc``. Samples of index >= ``num_samples`` (``reference_samples`` for real) are ignored."""
        if not self.faithfulness_metrics or (caption is None and label is None):
            return
        from mmexp.metrics.faithfulness import caption_checks, label_checks

        n = x.shape[0]
        index = torch.arange(n) if indices is None else torch.as_tensor(indices).reshape(-1).cpu().long()
        if index.numel() != n:
            raise ValueError(f"{n} images but {index.numel()} sample indices")
        keep = index < (self.reference_samples if real else self.num_samples) \
            if (self.reference_samples if real else self.num_samples) is not None else torch.ones(n, dtype=torch.bool)
        if not keep.any():
            return
        x, index = x[keep.to(x.device)], index[keep]
        caption = None if caption is None else [c for c, k in zip(caption, keep.tolist()) if k]
        reading = self.attribute_reader.read(x)
        if caption is not None and "caption_acc" in self.metrics:
            (self._real_captions if real else self._captions).add(index, **caption_checks(reading, caption))
        if label is not None and "label_acc" in self.metrics and not real:
            label = torch.as_tensor(label).reshape(-1).cpu()[keep]
            self._labels.add(index, label=label_checks(reading, label, caption))

    # ------------------------------------------------------------------ across ranks
    def _global_fake_kind(self) -> str | None:
        kinds = {k for k in all_gather_object(self._fake_kind) if k is not None}
        if len(kinds) > 1:
            raise ValueError(f"ranks were fed different kinds of samples: {sorted(kinds)}")
        return kinds.pop() if kinds else None

    def missing_fake_indices(self) -> list[int]:
        """Indices below ``num_samples`` for which no generated sample arrived on any rank (collective):
        what a caller generates to complete the protocol. Empty for reconstructions, without
        ``num_samples``, or when no generated sample arrived at all."""
        if self._global_fake_kind() != GENERATED or self.num_samples is None:
            return []
        seen = all_gather_cat(self._fake.local_index())
        have = torch.zeros(self.num_samples, dtype=torch.bool)
        have[seen] = True  # update_fake keeps only indices below num_samples
        return torch.nonzero(~have).flatten().tolist()

    def _real_features(self) -> torch.Tensor | None:
        if self._store.tensors is not None:
            return self._store.tensors.get("features")
        feats = self._real.gather()[1].get("features")
        return feats if feats is not None and feats.shape[0] else None

    # ------------------------------------------------------------------ compute
    @torch.inference_mode()
    def compute(self) -> dict[str, float]:
        """Flat dict of the metrics there was data for (see ``docs/interfaces.md``); the same on every rank."""
        kind = self._global_fake_kind() if self.generation_metrics else None
        self._fake_kind = kind  # a rank without samples names and describes them as the others do
        fake = self._fake.gather()[1] if self.generation_metrics else {}
        feats = fake.get("features")
        real = self._real_features() if self.needs_reference else None
        have_real = real is not None or self._store.tensors is not None
        out: dict[str, float] = {}
        if feats is not None and feats.shape[0] and have_real:
            out.update(self._compare(feats, real))
        if "is" in self.metrics and feats is not None and feats.shape[0]:
            out.update(self._inception_score(fake.get("logits"), feats.shape[0]))
        pairs = self._pairs.gather()[1] if self.paired_metrics else {}
        for name, values in pairs.items():
            key = self.perceptual_name if name == "perceptual" else name
            # psnr_hole is NaN for an image without a hole: averaged over the images that have one
            out[key] = float(values.double().nanmean())
        if self.faithfulness_metrics:
            from mmexp.metrics.faithfulness import summarize

            checks = self._captions.gather()[1]
            if checks:
                out.update(summarize(checks))
                self._last_counts["num_captioned"] = int(checks["all"].shape[0])
            real_checks = self._real_captions.gather()[1]
            if real_checks:
                out.update({f"real_{k}": v for k, v in summarize(real_checks).items()})
                self._last_counts["num_real_captioned"] = int(real_checks["all"].shape[0])
            labels = self._labels.gather()[1]
            if labels:
                out["label_acc"] = float(labels["label"].mean())
                self._last_counts["num_labelled"] = int(labels["label"].shape[0])
        self._last_counts.update(
            num_fake=0 if feats is None else int(feats.shape[0]),
            num_real=self.num_real if self._store.tensors is not None else (0 if real is None else int(real.shape[0])),
            num_pairs=len(next(iter(pairs.values()))) if pairs else 0)
        return {result_name(k, kind): v for k, v in out.items()}

    def _compare(self, fake: torch.Tensor, real: torch.Tensor | None) -> dict[str, float]:
        ref = self._store.tensors
        out, kid_size = compare_features(
            fake, real, self.metrics, reference=None if ref is None else (ref["mu"], ref["sigma"]),
            kid_subsets=self.kid_subsets, kid_subset_size=self.kid_subset_size, pr_k=self.pr_k, seed=self.seed)
        if kid_size is not None:
            self._last_counts["kid_subset_size"] = kid_size
        return out

    def _inception_score(self, logits: torch.Tensor | None, n: int) -> dict[str, float]:
        if logits is None:
            if not self._warned_is:
                log.warning(
                    "Inception Score skipped: the Inception weights in use (%s) have no logits (fc) layer. "
                    "Place torch-fidelity's full 'weights-inception-2015-12-05-6726825d.pth' in the torch hub "
                    "cache or set metrics.weights_path to compute it.", self.inception_weights().path.name)
                self._warned_is = True
            return {}
        if n < self.is_splits:
            log.warning("Inception Score skipped: needs at least %d samples", self.is_splits)
            return {}
        mean, std = inception_score(logits, self.is_splits, self.seed)
        return {"is_mean": mean, "is_std": std}

    # ------------------------------------------------------------------ protocol
    @property
    def protocol(self) -> dict:
        """The protocol that travels with every number (JSON-serialisable, see :mod:`.protocol`)."""
        return describe(self)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, metrics={list(self.metrics)}"
