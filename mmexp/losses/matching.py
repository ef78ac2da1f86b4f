"""Matching-aware terms of conditional GANs: the discriminator must also reject a *real* image shown with a
condition that does not describe it.

- :class:`MatchingAwareLoss`: GAN-CLS (Reed et al., "Generative Adversarial Text to Image Synthesis", ICML 2016):
  the discriminator sees (real image, matching text) as real, and both (real image, mismatching text) and (fake
  image, matching text) as fake, the two fake kinds weighted ``1/2`` each; DF-GAN (Tao et al., CVPR 2022) uses
  the same with the hinge loss. The generator's side is the adversarial loss on (fake, matching text).
- :class:`MatchingAwareGradientPenalty`: DF-GAN's MA-GP, ``k * E[||(grad_x D(x, c), grad_c D(x, c))||^p]`` on real
  images with their matching conditions (``k = 2``, ``p = 6``): it smooths the discriminator around the real,
  matching data, along the image and the condition together.

Both take what they need explicitly: ``conditional_discriminator`` (a callable ``(images, condition) ->
logits``), the ``real`` images and the batch's ``condition`` (the vector the discriminator sees, ``[B, D]``).
Mismatching conditions are the batch's conditions rolled by one place (image ``i`` with condition ``i - 1``,
as Reed et al.'s "random other text" of the batch); pairs whose rolled condition equals their own (the same
label, the same caption, two dropped captions) are not mismatches and are left out of the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmexp.errors import ConfigError
from mmexp.losses.adversarial import AdversarialLoss, HingeLoss, NonSaturatingLoss, WassersteinLoss
from mmexp.losses.base import LossTerm

Tensor = torch.Tensor

#: ``kind`` of :class:`MatchingAwareLoss` -> the adversarial loss whose parts it uses
KINDS: dict[str, type[AdversarialLoss]] = {"hinge": HingeLoss, "bce": NonSaturatingLoss,
                                           "wasserstein": WassersteinLoss}


def mismatched(condition: Tensor, shift: int = 1) -> tuple[Tensor, Tensor]:
    """``(condition rolled by shift along the batch, valid [B] bool)``: ``valid[i]`` is False where the rolled
    condition equals sample ``i``'s own (not a mismatch)."""
    rolled = condition.roll(shift, dims=0)
    return rolled, (rolled != condition).flatten(1).any(1)


class MatchingAwareLoss(LossTerm):
    """GAN-CLS's matching-aware adversarial loss (Reed et al. 2016), in place of the plain adversarial term.

    The discriminator minimises ``mean(real_part(D(x, c))) + (1 - m) * mean(fake_part(D(G(z, c), c)))
    + m * mean(fake_part(D(x, c')))`` where ``c'`` is a mismatching condition (the mean runs over the true
    mismatches of the batch; 0 when there are none) and the parts are those of the adversarial loss ``kind``;
    the generator minimises ``mean(generator_part(D(G(z, c), c)))``.

    Args:
        weight (float): weight of the term on both sides. Default: 1.0.
        kind (str): ``"hinge"`` (DF-GAN), ``"bce"`` (Reed et al.'s log-loss, non-saturating for G) or
            ``"wasserstein"``. Default: ``"hinge"``.
        mismatch_weight (float): ``m``, the share of the (real, mismatching) pairs in the fake side. Default: 0.5
            (Reed et al. and DF-GAN).
        shift (int): how far the batch's conditions are rolled to make mismatches. Default: 1.

    ``d_loss(real_logits, fake_logits, conditional_discriminator, real, condition)``: D's logits on (real,
    matching) and (fake, matching), the discriminator ``(images, condition) -> logits``, the real images and the
    conditions ``[B, D]``. ``forward(fake_logits)``.
    """

    def __init__(self, weight: float = 1.0, kind: str = "hinge", mismatch_weight: float = 0.5,
                 shift: int = 1) -> None:
        super().__init__(weight)
        if kind not in KINDS:
            raise ConfigError(f"MatchingAwareLoss: kind must be one of {sorted(KINDS)}, got {kind!r}")
        if not 0.0 <= mismatch_weight <= 1.0:
            raise ConfigError(f"MatchingAwareLoss: mismatch_weight must be in [0, 1], got {mismatch_weight}")
        if int(shift) == 0:
            raise ConfigError("MatchingAwareLoss: shift 0 pairs every image with its own condition; use >= 1")
        self.kind, self.adversarial = kind, KINDS[kind]
        self.mismatch_weight, self.shift = float(mismatch_weight), int(shift)

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor,
               conditional_discriminator: Callable[[Tensor, Tensor], Tensor], real: Tensor,
               condition: Tensor) -> Tensor:
        other, valid = mismatched(condition, self.shift)
        mismatch = self.adversarial.fake_part(conditional_discriminator(real.detach(), other))
        valid = valid.to(mismatch.dtype)
        # a masked mean without a host sync: 0 when the batch has no true mismatch
        mismatch = (mismatch * valid).sum() / valid.sum().clamp_min(1.0)
        m = self.mismatch_weight
        return (self.adversarial.real_part(real_logits).mean()
                + (1 - m) * self.adversarial.fake_part(fake_logits).mean() + m * mismatch)

    def forward(self, fake_logits: Tensor) -> Tensor:
        return self.adversarial.generator_part(fake_logits).mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kind={self.kind!r}, mismatch_weight={self.mismatch_weight:g}, "
                f"shift={self.shift}")


class MatchingAwareGradientPenalty(LossTerm):
    """DF-GAN's matching-aware gradient penalty (Tao et al. 2022): ``E[||g||_2^p]`` with
    ``g = (grad_x D(x, c), grad_c D(x, c))`` per sample, on real images ``x`` with their matching conditions
    ``c`` (both detached first, so the penalty trains the discriminator only).

    Args:
        weight (float): ``k``. Default: 2.0 (DF-GAN's).
        power (float): ``p``. Default: 6.0 (DF-GAN's).

    ``d_loss(conditional_discriminator, real, condition)``; D is evaluated once more, with input gradients
    (a double backward through D, as the other gradient penalties).
    """

    def __init__(self, weight: float = 2.0, power: float = 6.0) -> None:
        super().__init__(weight)
        if power <= 0:
            raise ConfigError(f"MatchingAwareGradientPenalty: power must be > 0, got {power}")
        self.power = float(power)

    def d_loss(self, conditional_discriminator: Callable[[Tensor, Tensor], Tensor], real: Tensor,
               condition: Tensor) -> Tensor:
        x = real.detach().requires_grad_(True)
        c = condition.detach().requires_grad_(True)
        gx, gc = torch.autograd.grad(conditional_discriminator(x, c).sum(), (x, c), create_graph=True)
        norm = torch.cat([gx.flatten(1), gc.flatten(1)], dim=1).norm(2, dim=1)
        return norm.pow(self.power).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, power={self.power:g}"
