"""Conditional GANs: class-conditional (``model=cgan``) and text-conditional (``model=text_gan``) in one module."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from mmexp.conditioning.condition import Condition
from mmexp.conditioning.conditioner import Conditioner
from mmexp.errors import ConfigError
from mmexp.losses import LossSet
from mmexp.models.conditional import ConditionalModule
from mmexp.models.gan import AdversarialTraining

log = logging.getLogger(__name__)


class ConditionalGAN(AdversarialTraining, ConditionalModule):
    """A GAN whose generator and discriminator both see the condition of captions and/or labels.

    The two families of issue 8 are configurations of this one module:

    - ``model=cgan``: labels, a conditional-BatchNorm generator and a projection discriminator (Miyato & Koyama,
      "cGANs with Projection Discriminator", ICLR 2018), hinge loss and spectral norm (``loss=cgan_hinge``;
      ``loss=wgan_gp`` for WGAN-GP);
    - ``model=text_gan``: captions (and labels when ``model.conditioner.num_classes`` is set), a generator with
      StackGAN's conditioning augmentation (optionally DF-GAN fusion blocks) and a matching-aware discriminator
      trained with GAN-CLS's loss (Reed et al., ICML 2016; ``loss=text_gan``, ``loss=text_gan_dfgan`` adds
      DF-GAN's matching-aware gradient penalty).

    Which of these the discriminator learns is the loss's choice, not a switch here: every discriminator term
    receives ``real_logits``, ``fake_logits``, ``real``, ``fake``, ``step``, ``discriminator`` (``images ->
    D(images, c)`` with the batch's conditions: WGAN-GP and R1 work unchanged), ``conditional_discriminator``
    (``(images, c) -> logits``) and ``condition`` (``c``, ``[B, dim]``), so the matching-aware terms
    (:mod:`mmexp.losses.matching`) make their mismatching pairs themselves; generator terms receive
    ``fake_logits``, ``fake``, ``real_logits`` when a term asks for them (relativistic losses) and, with
    conditioning augmentation, ``mu``/``logvar`` (its KL term).

    The condition vector is the conditioner's ``pooled`` output. The conditioner (label embedding, the learned
    text encoder, the projections of a frozen one) is trained by the discriminator's optimizer: the
    discriminator has to read the condition to tell matching from mismatching pairs, a discriminative task;
    the generator takes the condition as a fixed input (detached) and learns its own maps of it.

    Args:
        conditioner (Conditioner): captions/labels -> condition (``model.conditioner``); its ``dim`` must equal
            the networks' ``cond_dim``. GANs do not use condition dropout: set ``p_drop_*`` to 0 unless
            :meth:`generate` without conditions (the learned null condition) is wanted.
        generator (nn.Module): ``(z [B, latent_dim], c [B, dim], noise=None) -> GeneratorOutput(image, mu,
            logvar)`` (:class:`mmexp.networks.cgan.ConditionalGenerator`); exposes ``latent_dim``, ``cond_dim``,
            ``noise_dim`` (the conditioning augmentation's noise; 0 without), ``channels``, ``image_size``.
        discriminator (nn.Module): ``(images, c) -> logits [B]`` (:class:`~mmexp.networks.cgan.ProjectionDiscriminator`,
            :class:`~mmexp.networks.cgan.MatchingAwareDiscriminator`).
        loss (LossSet): see above (``conf/loss/``).
        optimizer_g, optimizer_d, scheduler_g, scheduler_d, n_disc, ema_decay, ema_start, augment, channels_last,
            reuse_fakes: as :class:`mmexp.models.gan.GAN` (TTUR, D steps per G step, the EMA generator that
            samples, DiffAugment of D's inputs, one G forward per iteration).
        guidance (float): ignored: a GAN has no classifier-free guidance (a value other than 1 warns once).
            Default: 1.0.
        preview_prompts, preview_labels, num_per_prompt, num_preview_rows, sample_seed,
            finite_check_every_n_steps, log_every_n_steps: see :class:`~mmexp.models.conditional.ConditionalModule`.

    Sampling: image ``i`` draws ``z`` (and the augmentation's noise) from its own generator
    (:meth:`ConditionalModule.randn_per_sample`), through the EMA generator when enabled. Training follows
    :class:`mmexp.models.gan.GAN` (global step counts D and G steps; training noise from the global RNG).
    """

    def __init__(self, conditioner: Conditioner, generator: nn.Module, discriminator: nn.Module, loss: LossSet,
                 optimizer_g: Callable[..., torch.optim.Optimizer],
                 optimizer_d: Callable[..., torch.optim.Optimizer],
                 scheduler_g: Callable[..., Any] | None = None, scheduler_d: Callable[..., Any] | None = None,
                 n_disc: int = 1, ema_decay: float | None = None, ema_start: int = 0, guidance: float = 1.0,
                 preview_prompts: Sequence[str] | None = None, preview_labels: Sequence[int] | None = None,
                 num_per_prompt: int = 8, num_preview_rows: int = 8, sample_seed: int = 0,
                 finite_check_every_n_steps: int | None = None, log_every_n_steps: int | None = None,
                 augment: nn.Module | None = None, channels_last: bool = False, reuse_fakes: bool = False) -> None:
        super().__init__(conditioner, guidance=guidance, preview_prompts=preview_prompts,
                         preview_labels=preview_labels, num_per_prompt=num_per_prompt,
                         num_preview_rows=num_preview_rows, finite_check_every_n_steps=finite_check_every_n_steps,
                         sample_seed=sample_seed, log_every_n_steps=log_every_n_steps, channels_last=channels_last)
        self.save_hyperparameters(ignore=["conditioner", "generator", "discriminator", "loss", "optimizer_g",
                                          "optimizer_d", "scheduler_g", "scheduler_d", "augment"])
        self.init_adversarial(generator, discriminator, loss, optimizer_g, optimizer_d, scheduler_g, scheduler_d,
                              n_disc, ema_decay, ema_start, "loss=cgan_hinge, wgan_gp, text_gan or text_gan_dfgan",
                              augment, reuse_fakes)
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            dim = getattr(net, "cond_dim", None)
            if dim is not None and int(dim) != conditioner.dim:
                raise ConfigError(f"ConditionalGAN: the {name} takes conditions of size {dim} but the conditioner "
                                  f"gives {conditioner.dim}; set model.{name}.cond_dim=${{model.conditioner.dim}}")
        self.noise_dim = int(getattr(generator, "noise_dim", 0))
        self._warned_guidance = False

    # ------------------------------------------------------------------ the adversarial step's parts
    def batch_condition(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.conditioner.from_batch(batch, drop=True).pooled

    def synthesize(self, n: int, condition: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.generator(self.randn(n, self.latent_dim), condition)
        return out.image, ({} if out.mu is None else {"mu": out.mu, "logvar": out.logvar})

    def critic(self, images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.discriminator(images, condition)

    def discriminator_inputs(self, condition: torch.Tensor) -> dict[str, Any]:
        d = self.discriminator
        return {"discriminator": lambda images: d(images, condition), "conditional_discriminator": d,
                "condition": condition}

    def discriminator_parameters(self) -> Iterable[nn.Parameter]:
        return [*self.discriminator.parameters(), *self.conditioner.parameters()]

    def adversarial_modules(self) -> tuple[nn.Module, ...]:
        return (self.generator, self.discriminator, self.conditioner)

    # ------------------------------------------------------------------ sampling
    def sample(self, condition: Condition, generators: Sequence[torch.Generator], guidance: float,
               **sampler: Any) -> torch.Tensor:
        """Images for ``condition`` from :attr:`sampler` (the EMA generator when enabled); ``guidance`` is
        ignored (no classifier-free guidance in a GAN: any value gives the conditional model's images)."""
        if sampler:
            raise ConfigError(f"ConditionalGAN takes no sampler options, got {sorted(sampler)}")
        if guidance != 1.0 and not self._warned_guidance:
            log.warning("ConditionalGAN: guidance=%g is ignored (a GAN has no classifier-free guidance); "
                        "images are those of guidance 1", guidance)
            self._warned_guidance = True
        noise = self.randn_per_sample(generators, self.latent_dim + self.noise_dim)
        z, eps = noise.split([self.latent_dim, self.noise_dim], dim=1)
        return self.sampler(z, condition.pooled, eps if self.noise_dim else None).image
