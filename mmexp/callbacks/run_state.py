"""What a checkpoint needs beyond weights and optimizers: RNG states, the config, the logger run."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

from mmexp.checkpoint import (
    CHECKPOINT_KEY,
    SCHEMA_VERSION,
    collect_rng_states,
    load_checkpoint,
    restore_rng_states,
)
from mmexp.loggers import run_ids

log = logging.getLogger(__name__)


class RunState(pl.Callback):
    """Puts into every checkpoint what exact resume and rebuilding need, and guards what is saved.

    - RNG states (torch, CUDA, numpy, python), restored at ``on_train_start`` so that a resumed run
      draws the same noise as an uninterrupted one;
    - the composed Hydra config (``run_config``, given by the entry point), so ``task=eval|sample`` can
      rebuild the model from the checkpoint alone;
    - the W&B run id, so a resumed run continues the same W&B run;
    - before any checkpoint is written the module's non-finite guard is checked: a NaN run stops
      with the previous checkpoint on disk intact.
    """

    def __init__(self, run_config: dict | None = None) -> None:
        self.config = run_config
        self._rng_to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        assert_finite = getattr(pl_module, "assert_finite", None)
        if assert_finite is not None:
            assert_finite()
        checkpoint[CHECKPOINT_KEY] = {
            "schema": SCHEMA_VERSION,
            "config": self.config,
            "rng_states": collect_rng_states(),
            "logger_ids": run_ids(trainer.loggers),
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY) or {}
        self._rng_to_restore = state.get("rng_states")
        if self._rng_to_restore is None:
            log.warning("checkpoint has no RNG states: the resumed run will not repeat an uninterrupted one")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the sanity check, right before the first resumed step: the same point at which the
        # uninterrupted run had these states
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


def read_run_state(ckpt_path: str) -> dict:
    """The mmexp section of a checkpoint (config, logger ids) without keeping its tensors around."""
    return load_checkpoint(ckpt_path).get(CHECKPOINT_KEY) or {}
