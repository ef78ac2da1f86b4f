"""Validation (and test, and ``task=eval``) metrics: model outputs -> the one metric suite -> logs."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


class ValidationMetrics(pl.Callback):
    """Feeds each validation/test batch's outputs to a :class:`mmexp.metrics.MetricSuite`.

    The model's ``validation_step`` returns images in [-1, 1]: ``real`` and ``fake`` (unpaired,
    FID/KID/IS/PR) and, for reconstruction models, ``pred`` and ``target`` (paired, PSNR/SSIM/LPIPS).
    The suite's protocol caps how many images count; when the split runs out before the protocol's
    number of generated samples, more are drawn from ``pl_module.generate`` with a seeded generator.
    Real-image statistics of a split are cached on disk under a key of (data, split, resolution,
    protocol) and reused. Results are logged as ``<prefix>/<metric>`` (prefix: ``val``, ``test``, or
    the one given, e.g. ``eval``), and the protocol is kept in ``self.protocol`` for metrics.json.
    """

    def __init__(self, suite: Any = None, cache_dir: str | None = None, prefix: str | None = None) -> None:
        self.suite = suite
        self.cache_dir = cache_dir
        self.prefix = prefix
        self.data_id: str = "unknown"  # set by the entry point: a hash of the data config
        self.split: str | None = None  # the split being scored; None: the stage's own (val/test)
        self._active = False
        self._reference_cached = False
        self._reference_key: str | None = None
        self._n_real = self._n_fake = self._n_pair = 0

    @property
    def protocol(self) -> dict | None:
        return dict(self.suite.protocol) if self.suite is not None else None

    @property
    def _limit(self) -> int | None:
        n = self.protocol.get("num_samples") if self.suite is not None else None
        return int(n) if n else None

    # -- lifecycle -------------------------------------------------------------------------------
    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = self.suite is not None and not trainer.sanity_checking
        if not self._active:
            return
        self._stage = self.prefix or stage
        self.suite.to(pl_module.device)
        self.suite.reset()
        self._n_real = self._n_fake = self._n_pair = 0
        self._reference_cached = False
        self._reference_key = None
        if self.cache_dir and hasattr(self.suite, "reference_key"):
            split = self.split or stage
            shape = getattr(pl_module, "image_shape", None)
            resolution = int(shape[-1]) if shape else 0
            self._reference_key = self.suite.reference_key(
                dataset=f"{self.data_id}-n{self._num_batches(trainer, stage)}", split=split, resolution=resolution
            )
            self._reference_cached = bool(self.suite.load_reference(self._reference_key, self.cache_dir))

    @staticmethod
    def _num_batches(trainer: pl.Trainer, stage: str) -> int:
        counts = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
        return int(sum(counts)) if counts else 0

    def _take(self, images: torch.Tensor, seen: int) -> torch.Tensor:
        limit = self._limit
        return images if limit is None else images[: max(0, limit - seen)]

    def _update(self, outputs: Any) -> None:
        if not self._active or not isinstance(outputs, dict):
            return
        if "real" in outputs and not self._reference_cached:
            real = self._take(outputs["real"], self._n_real)
            if len(real):
                self.suite.update_real(real)
                self._n_real += len(real)
        if "fake" in outputs:
            fake = self._take(outputs["fake"], self._n_fake)
            if len(fake):
                self.suite.update_fake(fake)
                self._n_fake += len(fake)
        if "pred" in outputs and "target" in outputs:
            pred = self._take(outputs["pred"], self._n_pair)
            if len(pred):
                self.suite.update_pair(pred, outputs["target"][: len(pred)])
                self._n_pair += len(pred)

    def _top_up_fakes(self, pl_module: pl.LightningModule) -> None:
        """Generate what the split could not provide, up to the protocol's number of samples."""
        limit = self._limit
        if limit is None or self._n_fake == 0 or self._n_fake >= limit or not hasattr(pl_module, "generate"):
            return
        seed = int(self.protocol.get("seed", 0))
        generator = torch.Generator(device=pl_module.device).manual_seed(seed + 1_000_003)
        batch = int(self.protocol.get("batch_size") or 64)
        with torch.no_grad():
            while self._n_fake < limit:
                try:
                    fake = pl_module.generate(min(batch, limit - self._n_fake), generator=generator)
                except NotImplementedError:
                    return  # reconstruction models: as many fakes as reconstructions
                self.suite.update_fake(fake)
                self._n_fake += len(fake)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        self._top_up_fakes(pl_module)
        if self._reference_key and not self._reference_cached and self._n_real:
            self.suite.save_reference(self._reference_key, self.cache_dir)
        results = self.suite.compute()
        counts = {"n_real": self._n_real, "n_fake": self._n_fake, "n_pair": self._n_pair}
        log.info("%s metrics (%s): %s", self._stage, counts, {k: round(float(v), 5) for k, v in results.items()})
        for name, value in results.items():
            pl_module.log(f"{self._stage}/{name}", float(value), sync_dist=False, rank_zero_only=True)

    # -- hooks -----------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module)
