"""KL divergence of a diagonal Gaussian from the standard normal: the VAE's posterior term, and StackGAN's
conditioning-augmentation regulariser."""

from __future__ import annotations

import torch

from mmexp.errors import ConfigError
from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


class GaussianKL(LossTerm):
    """``KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)`` over the
    latent dimensions, averaged over the batch (nats per image; Kingma & Welling 2014, app. B).

    Args:
        weight (float): beta. Default: 1.0 (the ELBO); > 1 is the β-VAE of Higgins et al.,
            "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework",
            ICLR 2017 (``loss.terms.kl.weight=4``).
        reduction (str): over the dimensions: ``"sum"`` (the ELBO's) or ``"mean"`` (StackGAN's
            conditioning-augmentation term, Zhang et al. ICCV 2017, whose weight is then independent of the
            vector's size). Default: ``"sum"``.

    ``forward(mu, logvar)``: the Gaussian's mean and log-variance, ``[B, dim]`` (a VAE's posterior;
    a conditioning augmentation's, ``mmexp.networks.modulation.ConditioningAugmentation``).
    """

    def __init__(self, weight: float = 1.0, reduction: str = "sum") -> None:
        super().__init__(weight)
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"GaussianKL: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1)
        return (kl.sum(1) if self.reduction == "sum" else kl.mean(1)).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction!r}"
