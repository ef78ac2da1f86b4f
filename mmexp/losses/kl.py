"""KL divergence of a diagonal-Gaussian posterior from the standard normal prior (the VAE's)."""

from __future__ import annotations

import torch

from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


class GaussianKL(LossTerm):
    """``KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)`` over the
    latent dimensions, averaged over the batch (nats per image; Kingma & Welling 2014, app. B).

    Args:
        weight (float): beta. Default: 1.0 (the ELBO); > 1 is the β-VAE of Higgins et al.,
            "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework",
            ICLR 2017 (``loss.terms.kl.weight=4``).

    ``forward(mu, logvar)``: the posterior's mean and log-variance, ``[B, latent_dim]``.
    """

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
