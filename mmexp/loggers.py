"""Experiment loggers: W&B credentials detection, finding a logger by type, images to loggers, and
ending every logger's run with its job."""

from __future__ import annotations

import logging
import os
from typing import Iterable, TypeVar

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)

L = TypeVar("L", bound=Logger)


def wandb_offline() -> bool:
    """True unless W&B credentials are configured (env key or ``wandb login``'s netrc entry)."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"}:
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" not in f.read()
    except OSError:
        return True


def find_logger(loggers: Iterable[Logger], kind: type[L]) -> L | None:
    """The first logger of type ``kind`` (e.g. ``WandbLogger``), or None."""
    for logger in loggers:
        if isinstance(logger, kind):
            return logger
    return None


def log_image(loggers: Iterable[Logger], key: str, grid: torch.Tensor, step: int,
              caption: str | None = None) -> None:
    """A ``[3, H, W]`` image in [0, 1] to every logger that shows images (W&B, TensorBoard)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid.cpu()], step=step,
                             **({"caption": [caption]} if caption else {}))
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid.cpu(), global_step=step)


def run_ids(loggers: Iterable[Logger]) -> dict[str, str]:
    """The run id of each logger that can resume a run (W&B), for the checkpoint."""
    wandb = find_logger(loggers, WandbLogger)
    return {"wandb": str(wandb.version)} if wandb is not None else {}


def finish(loggers: Iterable[Logger], failed: bool = False) -> None:
    """End this job's logger runs, so that the next job of a sweep starts its own.

    Lightning's ``WandbLogger`` reuses a W&B run that is still in progress in the process; a Hydra
    multirun executes its jobs in one process, so without this every job after the first would log
    into the first job's run. Called in a ``finally`` by the entry point, also when the job fails.
    """
    for logger in loggers:
        try:
            logger.finalize("failed" if failed else "success")
        except Exception as err:  # noqa: BLE001 - never hide the job's own error
            log.warning("finalizing %s failed: %s", type(logger).__name__, err)
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish(exit_code=1 if failed else 0)
            logger._experiment = None
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
