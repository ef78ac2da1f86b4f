"""The vector quantiser's terms of the VQ-VAE loss (van den Oord et al., "Neural Discrete
Representation Learning", NeurIPS 2017, eq. 3): ``||sg[e] - z||^2`` (commitment, weight beta) and
``||sg[z] - e||^2`` (codebook).

:class:`mmexp.networks.vqvae.VectorQuantizer` computes both distances (mean over elements), since
only it knows which code each vector took and where the straight-through gradient goes; these
terms weight them. With an EMA codebook (Razavi et al. 2019) the codebook is not trained by a
loss: the quantiser returns no codebook distance and :class:`CodebookLoss` sits out.
"""

from __future__ import annotations

import torch

from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


class CommitmentLoss(LossTerm):
    """Commitment loss ``||z - sg[e]||^2``: keeps the encoder's outputs near their codes.

    Args:
        weight (float): beta. Default: 0.25 (the paper's).

    ``forward(commitment)``: the quantiser's ``commitment`` distance.
    """

    def __init__(self, weight: float = 0.25) -> None:
        super().__init__(weight)

    def forward(self, commitment: Tensor) -> Tensor:
        return commitment


class CodebookLoss(LossTerm):
    """Codebook loss ``||sg[z] - e||^2``: moves the codes towards the encoder's outputs.

    Args:
        weight (float): weight of the term. Default: 1.0 (the paper's).

    ``forward(codebook)``: the quantiser's ``codebook`` distance, ``None`` with an EMA codebook
    (then the term sits out).
    """

    def forward(self, codebook: Tensor | None) -> Tensor | None:
        return codebook
