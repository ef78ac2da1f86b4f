"""The loss of a prior over discrete codes: cross-entropy of the next code (nats per code).

The training objective of an autoregressive prior over a VQ-VAE's code indices (van den Oord et al. 2017,
Razavi et al. 2019, Esser et al. 2021): ``-log p(c_i | c_<i, condition)`` averaged over positions and images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


class CodeCrossEntropy(LossTerm):
    """Cross-entropy of code logits against the codes, mean over codes and images (nats per code).

    Args:
        weight (float): weight of the term. Default: 1.0.
        label_smoothing (float): as ``torch.nn.functional.cross_entropy``'s. Default: 0.0.

    ``forward(logits, codes)``: logits ``[B, N, K]`` and int64 code indices ``[B, N]``.
    """

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, codes: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, -2).float(), codes.reshape(-1), label_smoothing=self.label_smoothing)
