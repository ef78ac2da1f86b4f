"""Adversarial losses and discriminator regularisers.

Adversarial terms act on both sides: ``d_loss(real_logits, fake_logits)`` is the discriminator's,
``forward(fake_logits)`` the generator's (both means over the batch of raw logits):

- :class:`NonSaturatingLoss`: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, with
  the non-saturating generator loss: D minimises ``softplus(-D(x)) + softplus(D(G(z)))``, G
  minimises ``softplus(-D(G(z)))``.
- :class:`HingeLoss`: Lim & Ye, "Geometric GAN", 2017; Miyato et al., "Spectral Normalization for
  GANs", ICLR 2018: D minimises ``relu(1 - D(x)) + relu(1 + D(G(z)))``, G minimises ``-D(G(z))``.
- :class:`LSGANLoss`: Mao et al., "Least Squares Generative Adversarial Networks", ICCV 2017, as pix2pix's and
  CycleGAN's ``gan_mode=lsgan``: D minimises ``(D(x) - 1)^2 + D(G(z))^2``, G minimises ``(D(G(z)) - 1)^2``.
- :class:`WassersteinLoss`: Arjovsky et al., "Wasserstein GAN", ICML 2017: the critic minimises
  ``D(G(z)) - D(x)``, G minimises ``-D(G(z))``; needs a Lipschitz constraint such as
  :class:`GradientPenalty`.
- :class:`RelativisticAverageLoss`: Jolicoeur-Martineau, "The relativistic discriminator: a key element
  missing from standard GAN", ICLR 2019, as ESRGAN uses it: D judges whether a real image is more
  realistic than the average fake (and the reverse); the generator's side needs ``real_logits`` too.
- :class:`RelativisticPairingLoss`: the same paper's paired form (RpGAN), as R3GAN (Huang et al., "The GAN is
  dead; long live the GAN!", NeurIPS 2024) uses it with R1 and R2: D ranks each real image above a generated
  one; the generator's side needs ``real_logits`` too.

:class:`FeatureMatchingLoss` (Wang et al., "pix2pixHD", CVPR 2018) acts on the generator only: L1 between the
discriminator's intermediate features of the real and the generated image.

Any of the four non-relativistic losses takes per-patch logits ``[B, 1, H, W]`` (a PatchGAN's) as well as
``[B]``: the means run over every logit. pix2pix halves D's objective "to slow D down"; with Adam a constant
factor on a loss changes nothing but the epsilon's relative size, so it is not done here.

Regularisers act on the discriminator only and take the networks and images explicitly:

- :class:`GradientPenalty`: Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017.
- :class:`R1Penalty`: Mescheder et al., "Which Training Methods for GANs do actually Converge?",
  ICML 2018, with lazy regularisation (Karras et al., "Analyzing and Improving the Image Quality
  of StyleGAN", CVPR 2020).

Both penalties differentiate D's output with respect to its input (``create_graph=True``), so a
discriminator step with them costs an extra forward and a double backward through D. With
BatchNorm in D the per-sample gradient mixes the batch and the extra forward moves BN's running
statistics; Gulrajani et al. use no BatchNorm in the critic (``model.discriminator.spectral_norm=true``
drops it in the DCGAN discriminator).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.losses.base import LossTerm

Tensor = torch.Tensor


class AdversarialLoss(LossTerm):
    """An adversarial loss given by its per-sample parts: the discriminator minimises
    ``mean(real_part(D(x))) + mean(fake_part(D(G(z))))`` and the generator ``mean(generator_part(D(G(z))))``.

    The parts are separate so that other discriminator terms reuse them: the matching-aware loss
    (:class:`mmexp.losses.matching.MatchingAwareLoss`) scores a real image with a mismatching condition with
    ``fake_part``.

    Args:
        weight (float): weight of the term on both sides. Default: 1.0.
    """

    @staticmethod
    def real_part(logits: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def fake_part(logits: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def generator_part(logits: Tensor) -> Tensor:
        raise NotImplementedError

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return self.real_part(real_logits).mean() + self.fake_part(fake_logits).mean()

    def forward(self, fake_logits: Tensor) -> Tensor:
        return self.generator_part(fake_logits).mean()


class NonSaturatingLoss(AdversarialLoss):
    """Non-saturating (logistic, "BCE") GAN loss on raw logits (Goodfellow et al. 2014).

    Args:
        weight (float): weight of the term on both sides. Default: 1.0.
    """

    @staticmethod
    def real_part(logits: Tensor) -> Tensor:
        return F.softplus(-logits)

    @staticmethod
    def fake_part(logits: Tensor) -> Tensor:
        return F.softplus(logits)

    @staticmethod
    def generator_part(logits: Tensor) -> Tensor:
        return F.softplus(-logits)


class HingeLoss(AdversarialLoss):
    """Hinge GAN loss (Lim & Ye 2017; Miyato et al. 2018).

    Args:
        weight (float): weight of the term on both sides. Default: 1.0.
    """

    @staticmethod
    def real_part(logits: Tensor) -> Tensor:
        return F.relu(1.0 - logits)

    @staticmethod
    def fake_part(logits: Tensor) -> Tensor:
        return F.relu(1.0 + logits)

    @staticmethod
    def generator_part(logits: Tensor) -> Tensor:
        return -logits


class LSGANLoss(AdversarialLoss):
    """Least-squares GAN loss (Mao et al. 2017) with targets 1 (real) and 0 (fake), as pix2pix's ``lsgan``
    mode (``MSELoss`` against those targets, no factor 1/2).

    Args:
        weight (float): weight of the term on both sides. Default: 1.0.
    """

    @staticmethod
    def real_part(logits: Tensor) -> Tensor:
        return (logits - 1.0).pow(2)

    @staticmethod
    def fake_part(logits: Tensor) -> Tensor:
        return logits.pow(2)

    @staticmethod
    def generator_part(logits: Tensor) -> Tensor:
        return (logits - 1.0).pow(2)


class WassersteinLoss(AdversarialLoss):
    """Wasserstein critic loss (Arjovsky et al. 2017); pair it with :class:`GradientPenalty`.

    Args:
        weight (float): weight of the term on both sides. Default: 1.0.
    """

    @staticmethod
    def real_part(logits: Tensor) -> Tensor:
        return -logits

    @staticmethod
    def fake_part(logits: Tensor) -> Tensor:
        return logits

    @staticmethod
    def generator_part(logits: Tensor) -> Tensor:
        return -logits


class RelativisticAverageLoss(LossTerm):
    """Relativistic average GAN loss (RaGAN; Jolicoeur-Martineau 2019) with the logistic (BCE) loss, as in
    ESRGAN (Wang et al. 2018). With ``C(x)`` the raw logits and ``E`` the batch mean,
    ``D_ra(a, b) = C(a) - E[C(b)]``; D minimises ``(softplus(-D_ra(real, fake)) + softplus(D_ra(fake, real))) / 2``
    and G the same with the roles swapped, ``(softplus(D_ra(real, fake)) + softplus(-D_ra(fake, real))) / 2``:
    the generator also learns from the real images' logits.

    Args:
        weight (float): weight of the term on both sides (ESRGAN's generator: 5e-3). Default: 1.0.

    ``forward(fake_logits, real_logits)``: the model passes D's logits on the real images detached (G's
    update must not reach D). Logits may be ``[B]`` or per pixel ``[B, 1, H, W]``; the means run over all.
    """

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        real_rel = real_logits - fake_logits.mean()
        fake_rel = fake_logits - real_logits.mean()
        return 0.5 * (F.softplus(-real_rel).mean() + F.softplus(fake_rel).mean())

    def forward(self, fake_logits: Tensor, real_logits: Tensor) -> Tensor:
        real_rel = real_logits - fake_logits.mean()
        fake_rel = fake_logits - real_logits.mean()
        return 0.5 * (F.softplus(real_rel).mean() + F.softplus(-fake_rel).mean())


class RelativisticPairingLoss(LossTerm):
    """Relativistic pairing GAN loss (RpGAN; Jolicoeur-Martineau 2019, with the logistic ``f``), the objective of
    R3GAN (Huang et al. 2024): each real image is paired with a generated one, and D learns that the real one
    scores higher, G that the generated one does. With ``C`` the raw logits, D minimises
    ``E[softplus(C(fake) - C(real))]`` and G ``E[softplus(C(real) - C(fake))]``. Unlike the non-saturating loss,
    D's optimum does not push every fake down on its own; it ranks pairs, which R3GAN found to keep more modes.
    Pair it with R1 (and optionally R2) as R3GAN does.

    Args:
        weight (float): weight of the term on both sides. Default: 1.0.

    ``forward(fake_logits, real_logits)``: the model passes D's logits on its real batch, detached (G's update
    must not reach D); pairs are by batch index, so both batches have the same size.
    """

    @staticmethod
    def _check(real_logits: Tensor, fake_logits: Tensor) -> None:
        if real_logits.shape != fake_logits.shape:
            raise ShapeMismatchError(f"RelativisticPairingLoss pairs real and fake logits by index: got real "
                                     f"{tuple(real_logits.shape)} and fake {tuple(fake_logits.shape)}")

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        self._check(real_logits, fake_logits)
        return F.softplus(fake_logits - real_logits).mean()

    def forward(self, fake_logits: Tensor, real_logits: Tensor) -> Tensor:
        self._check(real_logits, fake_logits)
        return F.softplus(real_logits - fake_logits).mean()


class FeatureMatchingLoss(LossTerm):
    """Discriminator feature matching (pix2pixHD, Wang et al. 2018): the mean over D's layers of the mean
    absolute difference between its features of the generated and of the real image (the real ones detached:
    the term trains the generator only, and D is frozen during the generator's step).

    Args:
        weight (float): weight of the term. pix2pixHD weighs each of the ``n_layers + 1`` layers of each of
            ``num_D`` scales by ``4 / (n_layers + 1) / num_D`` and ``lambda_feat = 10``, i.e. 4 x the mean over
            all layers x 10: weight 40 here reproduces it. Default: 1.0.

    ``forward(fake_features, real_features)``: equal-length lists of feature maps (a discriminator's
    ``forward(x, return_features=True)``, e.g. :class:`mmexp.networks.discriminators.PatchGANDiscriminator`);
    :class:`mmexp.models.restoration.RestorationModel` computes them when the loss has this term.
    """

    def forward(self, fake_features: list[Tensor], real_features: list[Tensor]) -> Tensor:
        if len(fake_features) != len(real_features) or not fake_features:
            raise ValueError(f"FeatureMatchingLoss: {len(fake_features)} fake and {len(real_features)} real "
                             "feature maps; they must be as many, and at least one")
        per_layer = [F.l1_loss(f, r.detach()) for f, r in zip(fake_features, real_features)]
        return torch.stack(per_layer).mean()


def input_gradient(discriminator: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``d sum(D(x)) / dx`` per sample, ``[B, ...]``, with a graph (for a penalty's backward).

    ``x`` is detached first, so the gradient reaches D's parameters only through the penalty."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    return grad


class GradientPenalty(LossTerm):
    """WGAN-GP gradient penalty (Gulrajani et al. 2017) on the discriminator:
    ``E[(||grad_x D(x_hat)||_2 - target)^2]`` at ``x_hat = u * real + (1 - u) * fake``,
    ``u ~ U[0, 1]`` per sample (drawn from the global torch RNG).

    Args:
        weight (float): lambda. Default: 10.0 (the paper's).
        target (float): the gradient norm aimed at. Default: 1.0.

    ``d_loss(discriminator, real, fake)``: the discriminator (a callable ``images -> logits``) and
    the real and generated image batches (same shape; both are detached).
    """

    def __init__(self, weight: float = 10.0, target: float = 1.0) -> None:
        super().__init__(weight)
        self.target = float(target)

    def d_loss(self, discriminator: Callable[[Tensor], Tensor], real: Tensor,
               fake: Tensor) -> Tensor:
        if real.shape != fake.shape:
            raise ValueError(f"GradientPenalty: real {tuple(real.shape)} and fake "
                             f"{tuple(fake.shape)} batches must have the same shape")
        u = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device,
                       dtype=real.dtype)
        x_hat = u * real.detach() + (1 - u) * fake.detach()
        grad = input_gradient(discriminator, x_hat)
        return (grad.flatten(1).norm(2, dim=1) - self.target).pow(2).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, target={self.target:g}"


class R1Penalty(LossTerm):
    """R1 regulariser (Mescheder et al. 2018) on the discriminator: ``0.5 * E[||grad_x D(x)||^2]``
    over real images, so ``weight`` is the paper's gamma.

    Args:
        weight (float): gamma. Default: 10.0 (Mescheder et al.'s value for CelebA-HQ-like data;
            StyleGAN2 tunes it per dataset, e.g. 0.1 to 100).
        every (int): lazy regularisation (Karras et al. 2020): compute the penalty on one
            discriminator step in ``every`` and scale it by ``every``, so its average weight
            stays gamma (the returned and logged value includes the factor ``every``); on the
            other steps the term sits out (``None``, not logged). Default: 1 (every step).

    ``d_loss(discriminator, real, step)``: the discriminator (a callable ``images -> logits``),
    the real batch (detached) and the index of this discriminator step (0-based; the penalty
    runs when ``step % every == 0``). D is evaluated on ``real`` once more, with input gradients.
    """

    def __init__(self, weight: float = 10.0, every: int = 1) -> None:
        super().__init__(weight)
        if int(every) < 1:
            raise ConfigError(f"R1Penalty: every must be >= 1, got {every}")
        self.every = int(every)

    def d_loss(self, discriminator: Callable[[Tensor], Tensor], real: Tensor,
               step: int) -> Tensor | None:
        if int(step) % self.every != 0:
            return None
        grad = input_gradient(discriminator, real)
        return 0.5 * grad.pow(2).flatten(1).sum(1).mean() * self.every

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, every={self.every}"
