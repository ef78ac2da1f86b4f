from __future__ import annotations

import logging

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class BestCheckpoint(ModelCheckpoint):
    """Keeps the best checkpoint by ``monitor``; waits quietly while the metric is not logged.

    Lightning's ModelCheckpoint fails once validation has run without the monitored key. Here the
    monitored metric may legitimately be absent (``metrics=none``, or a validation that ran no
    metric); the best checkpoint is then skipped with one warning instead of failing the run.
    """

    _warned = False

    def _monitor_available(self, trainer: pl.Trainer) -> bool:
        if self.monitor is None or self.monitor in trainer.callback_metrics:
            return True
        if not self._warned:
            log.warning("best checkpoint: %r was not logged; no best checkpoint is kept", self.monitor)
            self._warned = True
        return False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._monitor_available(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # saves here only with save_on_train_epoch_end=true, and only once the metric exists
        if self.monitor is None or self.monitor in trainer.callback_metrics:
            super().on_train_epoch_end(trainer, pl_module)

    def consider(self, trainer: pl.Trainer) -> None:
        """Offer the current weights, just validated outside fitting (the final validation of a run that
        stopped between scheduled validations), as a best-checkpoint candidate."""
        if self.monitor is not None and self.monitor in trainer.callback_metrics:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
