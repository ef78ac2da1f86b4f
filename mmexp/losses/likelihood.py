"""Likelihood (reconstruction) terms of a VAE's negative ELBO: ``-log p(x | z)`` in nats.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. Each term is summed over an
image's pixels and averaged over the batch (nats per image), and knows what the decoder's output
means: :meth:`Likelihood.mean` turns it into the distribution's mean as an image in [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


class Likelihood(LossTerm):
    """Base class of the decoder likelihoods p(x | z): ``forward`` is the NLL, :meth:`mean` the
    image the decoder output stands for."""

    def mean(self, pred: Tensor) -> Tensor:
        """Decoder output -> the likelihood's mean, an image in [-1, 1]."""
        raise NotImplementedError


class GaussianNLL(Likelihood):
    """Gaussian NLL ``0.5 * ((x - mu) / sigma)^2 + log(sigma) + 0.5 * log(2 pi)`` per pixel, on
    images in [-1, 1]; the constant is included, so the value can be negative.

    Args:
        weight (float): weight of the term. Default: 1.0.

    ``forward(pred, target, log_sigma)``: the decoder output (the mean), the images, and
    ``log(sigma)`` as a tensor broadcastable to them, given by the model: a learned scalar makes
    the σ-VAE of Rybkin et al., "Simple and Effective VAE Training with Calibrated Decoders",
    ICML 2021, which balances reconstruction and KL by itself.
    """

    def forward(self, pred: Tensor, target: Tensor, log_sigma: Tensor) -> Tensor:
        nll = (0.5 * ((target - pred) * torch.exp(-log_sigma)) ** 2 + log_sigma
               + 0.5 * math.log(2 * math.pi))
        return nll.flatten(1).sum(1).mean()

    def mean(self, pred: Tensor) -> Tensor:
        return pred.clamp(-1, 1)


class BernoulliNLL(Likelihood):
    """Bernoulli NLL (binary cross-entropy) of the targets mapped to [0, 1] by ``(x + 1) / 2``
    under decoder logits.

    Args:
        weight (float): weight of the term. Default: 1.0.

    ``forward(pred, target)``: decoder logits and images in [-1, 1].
    """

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        nll = F.binary_cross_entropy_with_logits(pred, (target + 1) / 2, reduction="none")
        return nll.flatten(1).sum(1).mean()

    def mean(self, pred: Tensor) -> Tensor:
        return torch.sigmoid(pred) * 2 - 1
