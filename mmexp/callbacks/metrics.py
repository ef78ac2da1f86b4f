"""Validation (and test, and ``task=eval``) metrics: model outputs -> the one metric suite -> logs."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

from mmexp.metrics.distributed import broadcast_buffers, split_for_rank, world_size
from mmexp.metrics.protocol import RECONSTRUCTIONS

log = logging.getLogger(__name__)


class ValidationMetrics(pl.Callback):
    """Feeds each validation/test batch's outputs to a :class:`mmexp.metrics.MetricSuite`.

    The model's ``validation_step`` returns images in [-1, 1]: ``real`` and ``fake`` (unpaired:
    FID/KID/IS/PR; one fake per ``batch["index"]``), or ``recon`` (reconstructions of ``real``,
    scored the same way but reported as ``rfid``, ``rkid_mean``...), and, for reconstruction models,
    ``pred`` and ``target`` (paired: PSNR/SSIM/LPIPS); with ``fake``, the ``caption`` and/or ``label`` it was
    generated from (faithfulness: ``caption_acc``, ``label_acc``). Every output is fed with the batch's sample
    indices. The suite's protocol caps how many images count (``num_samples``,
    ``reference_samples``); when the split runs out before the protocol's number of generated
    samples, the missing indices are drawn from ``pl_module.generate_indexed``, shared among ranks.

    Under DDP every rank feeds its shard; the suite gathers them (one sample per index) so every rank
    logs the numbers of the whole split, equal to a single process's. Rank 0's buffers (BatchNorm
    statistics) are broadcast first, so the model scored is the one checkpoints store.

    Real-image statistics of a split are cached on disk under a key of (data, split, scope,
    resolution, protocol, weights, and the dataset's file fingerprint when it has one) and reused by
    later validations and runs; under DDP rank 0 alone writes them. Results are logged as
    ``<prefix>/<metric>`` (``val``, ``test``, or the given prefix, e.g. ``eval``);
    ``self.protocol`` is what metrics.json and the W&B summary record beside them.
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
        self._warned_recon = False

    @property
    def protocol(self) -> dict | None:
        return dict(self.suite.protocol) if self.suite is not None else None

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = self.suite is not None and not trainer.sanity_checking
        if not self._active:
            return
        self._stage = self.prefix or stage
        split = self.split or stage
        self.suite.reset()
        self.suite.scored_split = split
        broadcast_buffers(pl_module)
        self._key, self._cached = None, False
        if self.suite.needs_reference:
            shape = getattr(pl_module, "image_shape", None)
            loader, batches = _stage_loader(trainer, stage)
            fingerprint = getattr(getattr(loader, "dataset", None), "fingerprint", None)
            self._key = self.suite.reference_key(
                dataset=self.data_id, split=split, resolution=int(shape[-1]) if shape else None,
                scope=_scope(loader, batches), content=fingerprint() if callable(fingerprint) else None)
            # a miss clears any reference of another split still loaded (val's, when test starts)
            self._cached = self.suite.load_reference(self._key)

    def _update(self, outputs: Any, batch: Any) -> None:
        if not self._active or not isinstance(outputs, dict):
            return
        index = batch.get("index") if isinstance(batch, dict) else None
        if "real" in outputs and self.suite.needs_real:
            self.suite.update_real(outputs["real"], index)
        if "fake" in outputs:
            self.suite.update_fake(outputs["fake"], index)
            # conditional models return the captions/labels the fakes were generated from: faithfulness
            self.suite.update_conditional(outputs["fake"], outputs.get("caption"), outputs.get("label"), index)
            if "real" in outputs:
                self.suite.update_conditional(outputs["real"], outputs.get("caption"), None, index, real=True)
        elif "recon" in outputs:
            self.suite.update_reconstruction(outputs["recon"], index)
        if "pred" in outputs and "target" in outputs:
            self.suite.update_pair(outputs["pred"], outputs["target"], index, hole=outputs.get("hole"))

    def _top_up_fakes(self, pl_module: pl.LightningModule) -> None:
        """Generate the samples of index < num_samples that the split did not provide (each rank a share)."""
        if not self.suite.needs_features:
            return
        missing = self.suite.missing_fake_indices()  # collective: every rank gets the same list
        if not missing:
            return
        mine = split_for_rank(missing)
        with torch.no_grad():
            for start in range(0, len(mine), self.suite.batch_size):
                index = torch.tensor(mine[start : start + self.suite.batch_size])
                try:
                    self.suite.update_fake(pl_module.generate_indexed(index), index)
                except NotImplementedError as why:
                    log.warning("%s: %d generated samples instead of the protocol's %d (%s)", self._stage,
                                self.suite.num_samples - len(missing), self.suite.num_samples, why)
                    return

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        self._top_up_fakes(pl_module)
        if self._key and not self._cached and self.suite.needs_real:
            path = self.suite.save_reference(self._key)  # collective: rank 0 writes
            if path is not None:
                log.info("reference statistics of %s cached in %s", self.suite.scored_split, path)
        results = self.suite.compute()  # collective: the same numbers on every rank
        counts = self.suite.last_counts
        if trainer.is_global_zero:
            log.info("%s metrics %s: %s", self._stage, counts, {k: round(float(v), 5) for k, v in results.items()})
            short = self.suite.num_samples and counts.get("num_fake", 0) < self.suite.num_samples
            if self.suite.fake_kind == RECONSTRUCTIONS and short and not self._warned_recon:
                log.warning("%s: FID/KID are of %d reconstructions of split %s, reported as rfid/rkid: this "
                            "model does not generate the protocol's %d samples", self._stage,
                            counts.get("num_fake", 0), self.suite.scored_split, self.suite.num_samples)
                self._warned_recon = True
        for name, value in results.items():
            # Every rank logs (callbacks that monitor it, like the best checkpoint's collective save, run
            # on every rank) the same value: sync_dist averages equal numbers, as Lightning expects under DDP.
            pl_module.log(f"{self._stage}/{name}", float(value), sync_dist=True)

    # -- hooks -----------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module)


def _stage_loader(trainer: pl.Trainer, stage: str) -> tuple[Any, int]:
    """The (first) loader of ``stage`` and the number of batches the loop will take from it."""
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    counts = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
    return loaders, int(counts[0]) if counts else 0


def _scope(loader: Any, batches: int) -> str:
    """Which real images are scored: the whole split (the same set for any number of processes), or,
    when batches are limited, the first ``batches`` batches of each rank."""
    try:
        if batches >= len(loader):
            return "all"
    except TypeError:  # an iterable without length
        pass
    return f"{batches} batches of {getattr(loader, 'batch_size', '?')} per rank on {world_size()} ranks"
