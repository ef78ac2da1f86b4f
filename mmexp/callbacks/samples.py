"""A sample grid at every validation: samples/stepNNNNNNN.png, and to the loggers."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch

from mmexp.grids import grid, save_grid
from mmexp.loggers import log_image


class SampleGrid(pl.Callback):
    """Asks the model for its preview of the first validation batch and writes it as a PNG grid.

    What a grid shows is the model's choice (``preview``): GAN samples from fixed noise,
    input | reconstruction pairs for autoencoders, input | output | target for restoration, and for
    conditional models one row per prompt with the prompt written beside it (``preview`` returns
    ``(images, nrow)`` or ``(images, nrow, row_captions)``).
    """

    def __init__(self, dirpath: str, max_images: int = 64) -> None:
        self.dirpath = dirpath
        self.max_images = max_images
        self._batch = None
        self.last_path: str | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            self._batch = {k: v[: self.max_images] for k, v in batch.items()}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None or not hasattr(pl_module, "preview"):
            return
        batch, self._batch = self._batch, None
        if not trainer.is_global_zero:
            return
        with torch.no_grad():
            images, nrow, *captions = pl_module.preview(batch)
        picture = grid(images, nrow, captions[0] if captions else None)
        path = save_grid(picture, os.path.join(self.dirpath, f"step{trainer.global_step:07d}.png"))
        self.last_path = path
        caption = " | ".join(captions[0]) if captions else None
        log_image(trainer.loggers, "samples", picture, trainer.global_step, caption=caption)
