"""The progress bar of ``python -m mmexp`` (``callbacks.progress_bar``)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn every ``refresh_rate`` batches, that shows the training scalars of mmexp's
    modules (their means since the last log, as plain numbers: :attr:`GenerativeModule.progress_values`).

    mmexp logs training scalars with ``prog_bar=False``: Lightning reads every progress-bar value with ``.item()``
    after *every* batch, which for a value on a GPU is a device sync per step. The numbers shown here were read
    once, when they were logged (every ``log_every_n_steps``).

    Args:
        refresh_rate (int): batches between redraws (Lightning's Rich bar redraws from a thread of its own, which
            costs a small model ~7% of its CPU step time: benchmarks/README.md). Default: 10.
        process_position (int), leave (bool): as :class:`lightning.pytorch.callbacks.TQDMProgressBar`'s.
    """

    def __init__(self, refresh_rate: int = 10, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float | dict]:
        items = super().get_metrics(trainer, pl_module)
        items.update(getattr(pl_module, "progress_values", None) or {})
        return items
