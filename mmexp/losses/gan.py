"""Adversarial losses.

- ``"bce"``: the non-saturating loss of Goodfellow et al., "Generative Adversarial Nets",
  NeurIPS 2014: D minimises ``softplus(-D(x)) + softplus(D(G(z)))``, G minimises
  ``softplus(-D(G(z)))``.
- ``"hinge"``: Lim & Ye 2017 / Miyato et al. 2018: D minimises
  ``relu(1 - D(x)) + relu(1 + D(G(z)))``, G minimises ``-D(G(z))``.

New kinds (e.g. ``"wgan"`` with a gradient penalty, which needs the discriminator and the
images) register a ``(d_loss, g_loss)`` pair in ``GANLoss.KINDS``; a penalty that needs the
networks belongs in the LightningModule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError

Tensor = torch.Tensor


def _bce_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def _bce_g(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


def _hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _hinge_g(fake: Tensor) -> Tensor:
    return -fake.mean()


class GANLoss(nn.Module):
    """One adversarial loss on discriminator logits.

    Args:
        kind (str): ``"bce"`` (non-saturating) or ``"hinge"``. Default: ``"bce"``.

    Methods: ``d_loss(real_logits, fake_logits)`` and ``g_loss(fake_logits)``, both scalars
    (means over the batch).
    """

    KINDS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
        "bce": (_bce_d, _bce_g),
        "hinge": (_hinge_d, _hinge_g),
    }

    def __init__(self, kind: str = "bce") -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ConfigError(f"GANLoss: unknown kind {kind!r}; choose one of {sorted(self.KINDS)}")
        self.kind = kind
        self._d, self._g = self.KINDS[kind]

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return self._d(real_logits, fake_logits)

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return self._g(fake_logits)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
