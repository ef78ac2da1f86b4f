"""Validation (and test, and ``task=eval``) metrics: model outputs -> the one metric suite -> logs."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


class ValidationMetrics(pl.Callback):
    """Feeds each validation/test batch's outputs to a :class:`mmexp.metrics.MetricSuite`.

    The model's ``validation_step`` returns images in [-1, 1]: ``real`` and ``fake`` (unpaired:
    FID/KID/IS/PR) and, for reconstruction models, ``pred`` and ``target`` (paired: PSNR/SSIM/LPIPS).
    The suite's protocol caps how many images count (``num_samples``, ``reference_samples``); when the
    split runs out before the protocol's number of generated samples, the rest are drawn from
    ``pl_module.generate`` with a seeded generator. Real-image statistics of a split are cached on disk
    under a key of (data, split, resolution, protocol, weights) and reused by later validations and
    runs. Results are logged as ``<prefix>/<metric>`` (``val``, ``test``, or the given prefix, e.g.
    ``eval``); ``self.protocol`` is what metrics.json and the W&B summary record beside them.
    """

    def __init__(self, suite: Any = None, prefix: str | None = None, data_id: str | None = None,
                 split: str | None = None) -> None:
        self.suite = suite
        self.prefix = prefix
        self.data_id = data_id or "unknown"  # the entry point gives a hash of the data config
        self.split = split  # the split scored; None: the stage's own (val / test)
        self._active = False
        self._key: str | None = None
        self._cached = False

    @property
    def protocol(self) -> dict | None:
        return dict(self.suite.protocol) if self.suite is not None else None

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = self.suite is not None and not trainer.sanity_checking
        if not self._active:
            return
        self._stage = self.prefix or stage
        self.suite.reset()
        self._key, self._cached = None, False
        if self.suite.needs_features:
            shape = getattr(pl_module, "image_shape", None)
            batches = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
            # the number of batches scored is part of what defines the reference set
            dataset = f"{self.data_id}-batches{int(sum(batches)) if batches else 0}"
            self._key = self.suite.reference_key(dataset=dataset, split=self.split or stage,
                                                 resolution=int(shape[-1]) if shape else None)
            self._cached = self.suite.load_reference(self._key)

    def _update(self, outputs: Any) -> None:
        if not self._active or not isinstance(outputs, dict):
            return
        if "real" in outputs and self.suite.needs_real:
            self.suite.update_real(outputs["real"])
        if "fake" in outputs:
            self.suite.update_fake(outputs["fake"])
        if "pred" in outputs and "target" in outputs:
            self.suite.update_pair(outputs["pred"], outputs["target"])

    def _top_up_fakes(self, pl_module: pl.LightningModule) -> None:
        """Generate what the split could not provide, up to the protocol's number of samples."""
        limit = self.suite.num_samples
        if not limit or not self.suite.needs_features or self.suite.num_fake >= limit:
            return
        if self.suite.num_fake == 0 or not hasattr(pl_module, "generate"):
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(int(self.suite.seed) + 1_000_003)
        with torch.no_grad():
            while self.suite.num_fake < limit:
                n = min(self.suite.batch_size, limit - self.suite.num_fake)
                try:
                    self.suite.update_fake(pl_module.generate(n, generator=generator))
                except NotImplementedError:
                    return  # reconstruction models: as many fakes as reconstructions

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        self._top_up_fakes(pl_module)
        if self._key and not self._cached and self.suite.needs_real and self.suite.num_real:
            path = self.suite.save_reference(self._key)
            log.info("reference statistics of %s cached in %s", self.split or self._stage, path)
        results = self.suite.compute()
        counts = {"real": self.suite.num_real, "fake": self.suite.num_fake, "pairs": self.suite.num_pairs}
        log.info("%s metrics %s: %s", self._stage, counts, {k: round(float(v), 5) for k, v in results.items()})
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
