"""Variational autoencoder (Kingma & Welling 2014), with β-VAE weighting (Higgins et al. 2017)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError
from mmexp.models.base import GenerativeModule, eval_mode


class VAE(GenerativeModule):
    """VAE trained on the negative ELBO ``recon + beta * KL(q(z|x) || N(0, I))``.

    Args:
        encoder (nn.Module): ``x -> (mu, logvar)``, each ``[B, latent_dim]`` (e.g.
            :class:`mmexp.networks.vae.GaussianEncoder`).
        decoder (nn.Module): ``z -> [B, C, H, W]`` unbounded output (Gaussian mean or Bernoulli
            logits); must expose ``latent_dim``, ``channels``, ``image_size``.
        optimizer (Callable): Hydra partial, ``optimizer(params=...)``.
        scheduler (Callable | None): partial, ``scheduler(optimizer=...)``, stepped every
            optimizer step. Default: None.
        likelihood (str): p(x|z): ``"gaussian"`` on images in [-1, 1], or ``"bernoulli"`` on
            targets mapped to [0, 1] by ``(x + 1) / 2`` (decoder outputs logits).
            Default: ``"gaussian"``.
        beta (float): weight of the KL term (β-VAE). Default: 1.0.
        sigma (float): standard deviation of the Gaussian likelihood (its initial value when
            learned). Default: 0.1.
        learn_sigma (bool): learn one shared ``log_sigma`` (σ-VAE, Rybkin et al. 2021), which
            balances reconstruction and KL automatically; else sigma stays fixed. Default: True.
        num_preview (int): inputs shown in :meth:`preview`. Default: 8.
        sample_seed (int): seed of validation/preview noise. Default: 0.
        finite_check_every_n_steps (int): see :class:`GenerativeModule`. Default: 1.

    Both terms are in nats per image (summed over pixels resp. latent dims, averaged over the
    batch); the Gaussian NLL includes its constant, so ``recon`` can be negative.
    Logs ``train/loss``, ``train/recon``, ``train/kl`` (and ``train/sigma`` when learned) per
    step and ``val/loss``, ``val/recon``, ``val/kl`` per epoch.
    """

    LIKELIHOODS = ("gaussian", "bernoulli")

    def __init__(self, encoder: nn.Module, decoder: nn.Module,
                 optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, likelihood: str = "gaussian",
                 beta: float = 1.0, sigma: float = 0.1, learn_sigma: bool = True,
                 num_preview: int = 8, sample_seed: int = 0,
                 finite_check_every_n_steps: int = 1) -> None:
        super().__init__(finite_check_every_n_steps, sample_seed)
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "scheduler"])
        if likelihood not in self.LIKELIHOODS:
            raise ConfigError(f"VAE: unknown likelihood {likelihood!r}; choose one of "
                              f"{list(self.LIKELIHOODS)}")
        self.encoder, self.decoder = encoder, decoder
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.likelihood, self.beta, self.num_preview = likelihood, float(beta), int(num_preview)
        self.latent_dim = int(decoder.latent_dim)
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma and likelihood == "gaussian":
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        self.learn_sigma = learn_sigma and likelihood == "gaussian"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        d = self.decoder
        return (int(d.channels), int(d.image_size), int(d.image_size))

    # ------------------------------------------------------------------ model
    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in [-1, 1] (clamped mean, or ``2 * sigmoid(logits) - 1``)."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out) * 2 - 1
        return out.clamp(-1, 1)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(recon, kl, decoder output)`` for a batch, z drawn with the reparameterisation."""
        mu, logvar = self.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * self.randn(*mu.shape, generator=generator)
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none")
        else:
            nll = (0.5 * ((x - out) * torch.exp(-self.log_sigma)) ** 2 + self.log_sigma
                   + 0.5 * math.log(2 * math.pi))
        recon = nll.flatten(1).sum(1).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return recon, kl, out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.check_batch(batch)
        recon, kl, _ = self.elbo_terms(batch["image"])
        loss = recon + self.beta * kl
        self.guard_finite(**{"train/loss": loss})
        logs = {"train/loss": loss.detach(), "train/recon": recon.detach(), "train/kl": kl.detach()}
        if self.learn_sigma:
            logs["train/sigma"] = self.log_sigma.detach().exp()
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        x = batch["image"]
        rng = self.val_generator()
        recon, kl, _ = self.elbo_terms(x, generator=rng)
        stage = self.eval_prefix
        self.log_dict({f"{stage}/loss": recon + self.beta * kl, f"{stage}/recon": recon, f"{stage}/kl": kl},
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
