"""``checkpoints/last.ckpt``: written so that resuming from it repeats the uninterrupted run exactly."""

from __future__ import annotations

import logging
import os

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class LastCheckpoint(pl.Callback):
    """Writes ``<dirpath>/<filename>`` every ``every_n_train_steps`` optimizer steps, after the last batch of
    every epoch, and after the batch where training stops (``max_steps`` or ``trainer.should_stop``).

    Every save happens in ``on_train_batch_end``, the one point from which Lightning's loops resume
    consistently. Lightning's ``ModelCheckpoint(save_last=True)`` saves the end of training in
    ``on_train_epoch_end`` instead, which goes wrong twice: when ``max_steps`` ends a run mid-epoch the
    checkpoint records the epoch as finished, so a resumed run ("train it 50k steps more") starts the
    next epoch's shuffle and never sees the rest of the interrupted one; and resuming from an
    ``on_train_epoch_end`` checkpoint makes Lightning (2.6) count the finished epoch twice, so the next
    epoch is shuffled as the one after it. Resumed from any checkpoint written here, a run repeats the
    uninterrupted one exactly (tests/test_resume.py). The price: an epoch-end checkpoint is taken before
    that epoch's end-of-epoch hooks (validation, epoch-interval LR schedulers); validation does not
    change the weights, and mmexp's models step their schedulers every optimizer step.

    Args:
        dirpath (str): the checkpoint directory.
        filename (str): Default: ``"last.ckpt"``.
        every_n_train_steps (int): optimizer steps between periodic saves (GANs count D and G steps,
            see :class:`mmexp.models.gan.GAN`); a save happens whenever ``global_step`` crosses a
            multiple. 0 disables periodic saves. Default: 500.

    Writes go through the trainer (so the checkpoint IO plugin makes them atomic, and under DDP rank 0
    writes while the others wait). Nothing is written under ``fast_dev_run``.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt", every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.dirpath = dirpath
        self.filename = filename
        self.every_n_train_steps = int(every_n_train_steps)
        self._saved_step = -1

    @property
    def path(self) -> str:
        return os.path.join(self.dirpath, self.filename)

    def _skip(self, trainer: pl.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking

    def _save(self, trainer: pl.Trainer, why: str) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step
        log.debug("%s written at step %d (%s)", self.path, trainer.global_step, why)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step = trainer.global_step  # a resumed run: that step is on disk already

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._skip(trainer):
            return
        step, n = trainer.global_step, self.every_n_train_steps
        if step == self._saved_step:
            return
        stopping = trainer.should_stop or (trainer.max_steps not in (None, -1) and step >= trainer.max_steps)
        if stopping:
            self._save(trainer, "training stops here")
        elif trainer.fit_loop.epoch_loop._num_ready_batches_reached():
            self._save(trainer, "last batch of the epoch")
        elif n and step // n > max(self._saved_step, 0) // n:
            self._save(trainer, f"every {n} steps")

    def state_dict(self) -> dict:
        return {"saved_step": self._saved_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved_step = int(state_dict.get("saved_step", -1))
