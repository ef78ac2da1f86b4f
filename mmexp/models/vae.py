"""Variational autoencoder (Kingma & Welling 2014); β-VAE (Higgins et al. 2017) by the loss's KL weight."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmexp.errors import ConfigError
from mmexp.losses import LossOutput, LossSet
from mmexp.losses.likelihood import Likelihood
from mmexp.models.base import GenerativeModule, eval_mode


class VAE(GenerativeModule):
    """VAE trained on its loss, by default the negative ELBO ``recon + beta * KL(q(z|x) || N(0, I))``.

    Args:
        encoder (nn.Module): ``x -> (mu, logvar)``, each ``[B, latent_dim]`` (e.g.
            :class:`mmexp.networks.vae.GaussianEncoder`).
        decoder (nn.Module): ``z -> [B, C, H, W]`` unbounded output (Gaussian mean or Bernoulli
            logits); must expose ``latent_dim``, ``channels``, ``image_size``.
        optimizer (Callable): Hydra partial, ``optimizer(params=...)``.
        scheduler (Callable | None): partial, ``scheduler(optimizer=...)``, stepped every
            optimizer step. Default: None.
        loss (LossSet): the loss (``conf/loss/vae.yaml``), with exactly one likelihood term
            (:class:`mmexp.losses.likelihood.Likelihood`: ``GaussianNLL`` on images in [-1, 1],
            ``BernoulliNLL`` on targets mapped to [0, 1], decoder outputs logits), which also
            says what the decoder's output means, and e.g. a ``GaussianKL`` whose weight is β.
            Its terms may take ``pred`` (decoder output), ``target`` (images), ``mu``,
            ``logvar`` and ``log_sigma``.
        sigma (float): standard deviation of a Gaussian likelihood (its initial value when
            learned). Default: 0.1.
        learn_sigma (bool): learn one shared ``log_sigma`` (σ-VAE, Rybkin et al. 2021), which
            balances reconstruction and KL automatically, when a loss term takes ``log_sigma``;
            else sigma stays fixed. Default: True.
        num_preview (int): inputs shown in :meth:`preview`. Default: 8.
        sample_seed (int): seed of validation/preview noise. Default: 0.
        finite_check_every_n_steps, log_every_n_steps (int | None): see
            :class:`GenerativeModule`. Default: None (auto).
        channels_last (bool): see :class:`GenerativeModule`. Default: False.

    The likelihood and KL terms are in nats per image (summed over pixels resp. latent dims,
    averaged over the batch); the Gaussian NLL includes its constant, so ``recon`` can be
    negative. Logs ``train/loss`` and its unweighted parts ``train/loss/<term>`` (and
    ``train/sigma`` when learned) per step, and ``val/loss``, ``val/loss/<term>`` per epoch.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module,
                 optimizer: Callable[..., torch.optim.Optimizer],
                 loss: LossSet, scheduler: Callable[..., Any] | None = None,
                 sigma: float = 0.1, learn_sigma: bool = True, num_preview: int = 8,
                 sample_seed: int = 0, finite_check_every_n_steps: int | None = None,
                 log_every_n_steps: int | None = None, channels_last: bool = False) -> None:
        super().__init__(finite_check_every_n_steps, sample_seed, log_every_n_steps, channels_last)
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "loss", "scheduler"])
        likelihoods = [n for n, t in getattr(loss, "terms", {}).items() if isinstance(t, Likelihood)]
        if not isinstance(loss, LossSet) or len(likelihoods) != 1:
            raise ConfigError(f"VAE: loss must be a LossSet with exactly one likelihood term "
                              f"(GaussianNLL or BernoulliNLL), got {loss!r}; choose loss=vae or "
                              "loss=vae_bernoulli")
        self.encoder, self.decoder, self.loss = encoder, decoder, loss
        self.likelihood_term = likelihoods[0]
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.num_preview = int(num_preview)
        self.latent_dim = int(decoder.latent_dim)
        self.learn_sigma = bool(learn_sigma) and "log_sigma" in loss.input_names()
        log_sigma = torch.tensor(math.log(sigma))
        if self.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        d = self.decoder
        return (int(d.channels), int(d.image_size), int(d.image_size))

    # ------------------------------------------------------------------ model
    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in [-1, 1]: the likelihood's mean (clamped Gaussian mean, or
        ``2 * sigmoid(logits) - 1``)."""
        return self.loss.terms[self.likelihood_term].mean(out)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[LossOutput, torch.Tensor]:
        """``(loss output, decoder output)`` for a batch, z drawn with the reparameterisation;
        the loss output is ``(total, unweighted parts)``, e.g. parts ``recon`` and ``kl``."""
        mu, logvar = self.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * self.randn(*mu.shape, generator=generator)
        out = self.decoder(z)
        return self.loss(pred=out, target=x, mu=mu, logvar=logvar,
                         log_sigma=self.log_sigma), out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.check_batch(batch)
        snapshot = self.snapshot_buffers(self.encoder, self.decoder)
        out, _ = self.elbo_terms(batch["image"])
        loss = out.total
        # inside Lightning's optimizer closure: the update that follows is skipped on the device if not ok
        self.skip_updates_unless(self.guard_finite(snapshot, **{"train/loss": loss}))
        logs = {"train/loss": loss, **out.named("train/loss")}
        if self.learn_sigma:
            logs["train/sigma"] = self.log_sigma.detach().exp()
        self.log_train(logs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        x = batch["image"]
        rng = self.val_generator()
        out, _ = self.elbo_terms(x, generator=rng)
        stage = self.eval_prefix
        self.log_dict({f"{stage}/loss": out.total, **out.named(f"{stage}/loss")},
                      on_step=False, on_epoch=True, batch_size=x.shape[0])
        # fakes per sample index: the same set whatever the batch size or number of processes
        return {"real": x, "fake": self.generate_indexed(self.sample_indices(batch)),
                "pred": self.reconstruct(x), "target": x}

    def configure_optimizers(self):
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        if self.learn_sigma:
            params.append(self.log_sigma)
        opt, sched = self.build_optimizer(self.optimizer_fn, params, self.scheduler_fn)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    def generate(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` decoded prior samples ``z ~ N(0, I)`` (the likelihood's mean), in [-1, 1]."""
        return self.decode(self.randn(n, self.latent_dim, generator=generator))

    def generate_indexed(self, indices: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One prior sample per index from per-index noise (see :meth:`GenerativeModule.noise`)."""
        return self.decode(self.noise(indices, self.latent_dim, seed=seed))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[n, latent_dim]`` -> images in [-1, 1] (the likelihood's mean; eval mode, no grad)."""
        with eval_mode(self.decoder):
            return self.to_image(self.decoder(z))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of ``images``; in [-1, 1]."""
        with eval_mode(self.encoder, self.decoder):
            return self.to_image(self.decoder(self.encoder(images)[0]))

    def preview(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Three rows of ``k = min(num_preview, B)``: inputs, their reconstructions, and prior
        samples from fixed noise; ``nrow = k``."""
        x = batch["image"][: self.num_preview].to(self.device)
        k = x.shape[0]
        images = torch.cat([x, self.reconstruct(x), self.generate(k, self.preview_generator())])
        return images, k
