"""VQ-VAE (van den Oord et al. 2017) as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmexp.errors import ConfigError
from mmexp.losses import LossSet
from mmexp.models.base import GenerativeModule, eval_mode
from mmexp.networks.vqvae import QuantizerOutput


def batch_psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2). A cheap training
    indicator; the metric suite computes the reported one."""
    mse = (pred - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).mean()


class VQVAE(GenerativeModule):
    """VQ-VAE: ``encoder -> quantizer -> decoder``, by default with the loss
    ``MSE(x_hat, x) + beta * commitment + codebook`` (``conf/loss/vqvae.yaml``).

    Args:
        encoder (nn.Module): image -> ``[B, code_dim, h, w]`` (e.g.
            :class:`mmexp.networks.autoencoder.Encoder`); must expose ``channels``,
            ``image_size``.
        quantizer (nn.Module): :class:`mmexp.networks.vqvae.VectorQuantizer` (EMA codebook
            option and dead-code restarts live there).
        decoder (nn.Module): ``[B, code_dim, h, w] -> [B, C, H, W]`` (unbounded; clamped for
            images).
        optimizer (Callable): Hydra partial, ``optimizer(params=...)`` (an EMA codebook is not
            given to it).
        loss (LossSet): the loss; its terms may take ``pred`` (decoder output), ``target``
            (images) and the quantizer's ``commitment`` and ``codebook`` distances (see
            :mod:`mmexp.losses.vq`; the commitment term's weight is beta).
        scheduler (Callable | None): partial, ``scheduler(optimizer=...)``, stepped every
            optimizer step. Default: None.
        num_preview (int): inputs shown in :meth:`preview`. Default: 8.
        sample_seed (int): seed of validation randomness (unused by the model itself).
            Default: 0.
        finite_check_every_n_steps, log_every_n_steps (int | None): see
            :class:`GenerativeModule`. Default: None (auto).
        channels_last (bool): see :class:`GenerativeModule`. Default: False.

    Logs ``train/loss``, its unweighted parts ``train/loss/<term>`` (``recon``, ``commitment``,
    and ``codebook`` without EMA), ``train/perplexity``, ``train/codebook_usage`` (fraction of
    codes used in the batch), ``train/psnr`` per step, and
    the same under ``val/`` per epoch. :meth:`encode` / :meth:`decode_indices` are the interface
    for a second-stage prior over code indices.
    """

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module,
                 optimizer: Callable[..., torch.optim.Optimizer], loss: LossSet,
                 scheduler: Callable[..., Any] | None = None, num_preview: int = 8,
                 sample_seed: int = 0, finite_check_every_n_steps: int | None = None,
                 log_every_n_steps: int | None = None, channels_last: bool = False) -> None:
        super().__init__(finite_check_every_n_steps, sample_seed, log_every_n_steps, channels_last)
        self.save_hyperparameters(ignore=["encoder", "quantizer", "decoder", "optimizer", "loss",
                                          "scheduler"])
        if not isinstance(loss, LossSet):
            raise ConfigError(f"VQVAE: loss must be a LossSet, got {loss!r}; choose loss=vqvae")
        if not getattr(quantizer, "ema", True) and "codebook" not in loss.input_names():
            raise ConfigError("VQVAE: the quantizer's codebook is trained by the codebook loss "
                              "(model.quantizer.ema=false) but the loss has no term taking it; "
                              "add one (loss=vqvae has it) or set model.quantizer.ema=true")
        ch_e, ch_d = getattr(encoder, "channels", None), getattr(decoder, "channels", None)
        if ch_e is not None and ch_d is not None and ch_e != ch_d:
            raise ConfigError(f"VQVAE: encoder channels={ch_e} but decoder channels={ch_d}")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.loss = loss
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.num_preview = int(num_preview)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        e = self.encoder
        return (int(e.channels), int(e.image_size), int(e.image_size))

    # ------------------------------------------------------------------ model
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """``(decoder output, quantizer output)``."""
        q = self.quantizer(self.encoder(x))
        return self.decoder(q.quantized), q

    def _step(self, batch: dict[str, Any], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_batch(batch)
        x = batch["image"]
        train = prefix == "train"
        # the EMA codebook and BatchNorm statistics change in a training forward pass
        snapshot = self.snapshot_buffers(self.encoder, self.quantizer, self.decoder) if train else None
        out, q = self(x)
        loss, parts = self.loss(pred=out, target=x, commitment=q.commitment, codebook=q.codebook)
        if train:
            # inside Lightning's optimizer closure: the update that follows is skipped on the device if not ok
            self.skip_updates_unless(self.guard_finite(snapshot, **{"train/loss": loss}))
        pred = out.detach().clamp(-1, 1)
        logs = {"loss": loss, **{f"loss/{k}": v for k, v in parts.items()},
                "perplexity": q.perplexity, "codebook_usage": q.usage, "psnr": batch_psnr(pred, x)}
        if train:
            self.log_train({f"train/{k}": v for k, v in logs.items()})
        else:
            self.log_dict({f"{prefix}/{k}": v.detach() for k, v in logs.items()}, on_step=False, on_epoch=True,
                          batch_size=x.shape[0])
        return loss, pred

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        _, pred = self._step(batch, self.eval_prefix)
        x = batch["image"]
        # reconstructions, not samples: scored as rFID (the generation FID needs a prior)
        return {"real": x, "recon": pred, "pred": pred, "target": x}

    def configure_optimizers(self):
        params = [*self.encoder.parameters(), *self.quantizer.parameters(),
                  *self.decoder.parameters()]
        opt, sched = self.build_optimizer(self.optimizer_fn, params, self.scheduler_fn)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ codes and images
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> code indices ``[B, h, w]`` (int64), eval mode, no grad."""
        with eval_mode(self.encoder, self.quantizer):
            return self.quantizer(self.encoder(images)).indices

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``[B, h, w]`` -> images in [-1, 1], eval mode, no grad."""
        with eval_mode(self.decoder):
            return self.decoder(self.quantizer.embed(indices)).clamp(-1, 1)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode, quantise and decode; in [-1, 1]."""
        return self.decode_indices(self.encode(images))

    def generate(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError(
            "VQVAE.generate: sampling needs a second-stage prior over code indices, which does "
            "not exist yet; until then this model's outputs are reconstructions: use "
            "reconstruct(images) (validation reports them as 'recon' and 'pred', scored as rFID)")

    def preview(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Two rows of ``k = min(num_preview, B)``: inputs and their reconstructions; ``nrow=k``."""
        x = batch["image"][: self.num_preview].to(self.device)
        return torch.cat([x, self.reconstruct(x)]), x.shape[0]
