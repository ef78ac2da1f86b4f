"""Unconditional GAN (e.g. DCGAN) as a LightningModule with manual optimisation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from mmexp.ema import EMA
from mmexp.errors import ConfigError
from mmexp.losses import LossSet
from mmexp.models.base import GenerativeModule, eval_mode


class AdversarialTraining:
    """The adversarial training loop the GANs share (:class:`GAN`, :class:`mmexp.models.cgan.ConditionalGAN`):
    alternating D and G updates with ``n_disc``, TTUR optimizers, an EMA generator, the non-finite guard.

    A subclass (mixed in before its LightningModule base) calls :meth:`init_adversarial` in ``__init__`` and
    defines how a batch is turned into a condition (:meth:`batch_condition`), how fakes are made
    (:meth:`synthesize`), how D scores images (:meth:`critic`) and what the discriminator's loss terms receive
    besides logits and images (:meth:`discriminator_inputs`). See :class:`GAN` for the schedule of D and G steps.
    """

    def init_adversarial(self, generator: nn.Module, discriminator: nn.Module, loss: LossSet,
                         optimizer_g: Callable[..., torch.optim.Optimizer],
                         optimizer_d: Callable[..., torch.optim.Optimizer],
                         scheduler_g: Callable[..., Any] | None, scheduler_d: Callable[..., Any] | None,
                         n_disc: int, ema_decay: float | None, ema_start: int, losses_hint: str,
                         augment: nn.Module | None = None, reuse_fakes: bool = False) -> None:
        name = type(self).__name__
        self.automatic_optimization = False
        if n_disc < 1:
            raise ConfigError(f"{name}: n_disc must be >= 1, got {n_disc}")
        for attr in ("channels", "image_size"):
            g, d = getattr(generator, attr, None), getattr(discriminator, attr, None)
            if g is not None and d is not None and g != d:
                raise ConfigError(f"{name}: generator {attr}={g} but discriminator {attr}={d}")
        self.generator, self.discriminator = generator, discriminator
        if not (isinstance(loss, LossSet) and loss.names("discriminator") and loss.names("model")):
            raise ConfigError(f"{name}: loss must be a LossSet with an adversarial term (terms on the "
                              f"discriminator and the generator), got {loss!r}; choose {losses_hint}")
        self.loss = loss
        # a generator term that compares with the real images' logits (relativistic losses)
        self._g_wants_real_logits = "real_logits" in loss.input_names("model")
        self.latent_dim = int(generator.latent_dim)
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.scheduler_g, self.scheduler_d = scheduler_g, scheduler_d
        self.n_disc = int(n_disc)
        self.ema = EMA(generator, ema_decay, ema_start) if ema_decay is not None else None
        # differentiable augmentation of every image D sees, real and fake, in D's and G's steps (DiffAugment)
        self.augment = augment
        self.reuse_fakes = bool(reuse_fakes)
        self._sched: dict[str, Any] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        g = self.generator
        return (int(g.channels), int(g.image_size), int(g.image_size))

    @property
    def sampler(self) -> nn.Module:
        """The network used for samples: the EMA generator when enabled, else the generator."""
        return self.ema.module if self.ema is not None else self.generator

    # ------------------------------------------------------------------ what a subclass defines
    def batch_condition(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The condition both networks see for ``batch`` (None: unconditional)."""
        return None

    def synthesize(self, n: int, condition: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``n`` fakes from training noise (the global RNG) and the generator's own loss inputs."""
        raise NotImplementedError

    def critic(self, images: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """D's logits ``[B]``."""
        raise NotImplementedError

    def discriminator_inputs(self, condition: torch.Tensor | None) -> dict[str, Any]:
        """Inputs of the discriminator's loss terms besides logits, images and ``step``."""
        raise NotImplementedError

    def discriminator_parameters(self) -> Iterable[nn.Parameter]:
        """What the discriminator's optimizer trains."""
        return self.discriminator.parameters()

    def discriminator_view(self, images: torch.Tensor) -> torch.Tensor:
        """What D is shown of ``images`` during training: the augmentation's output when one is configured."""
        return images if self.augment is None else self.augment(images)

    def adversarial_modules(self) -> tuple[nn.Module, ...]:
        """Modules whose buffers a training forward pass changes (restored after a non-finite step)."""
        return (self.generator, self.discriminator)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        opt_d, sch_d = self.build_optimizer(self.optimizer_d, self.discriminator_parameters(),
                                            self.scheduler_d)
        opt_g, sch_g = self.build_optimizer(self.optimizer_g, self.generator.parameters(),
                                            self.scheduler_g)
        self._sched = {"d": sch_d, "g": sch_g}
        scheds = [s for s in (sch_d, sch_g) if s is not None]
        return ([opt_d, opt_g], scheds) if scheds else [opt_d, opt_g]

    def is_generator_step(self) -> bool:
        """Whether the current batch (before its D step) ends with a G step."""
        return self.global_step % (self.n_disc + 1) == self.n_disc - 1

    def d_step_index(self) -> int:
        """How many D steps came before the current one (from ``global_step``, so it survives a
        resume): what lazy regularisers (``R1Penalty(every=k)``) count."""
        cycles, pos = divmod(self.global_step, self.n_disc + 1)
        return cycles * self.n_disc + pos

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.check_batch(batch)
        real = batch["image"]
        b = real.shape[0]
        opt_d, opt_g = self.optimizers()
        g_step = self.is_generator_step()
        # a non-finite forward pass must not leave NaN BatchNorm statistics behind (in G or D)
        snapshot = self.snapshot_buffers(*self.adversarial_modules())
        condition = self.batch_condition(batch)

        # reuse_fakes: the G step scores the fakes D just saw (their graph kept) against the updated D, so an
        # iteration runs G forward once, not twice, as the PyTorch DCGAN example does; else G draws fresh noise
        reuse = self.reuse_fakes and g_step
        if reuse:
            fake_g, g_inputs = self.synthesize(b, None if condition is None else condition.detach())
            fake = fake_g.detach()
        else:
            with torch.no_grad():
                fake, _ = self.synthesize(b, None if condition is None else condition.detach())
        # D's loss terms (R1, gradient penalty, matching-aware pairs) see the images D saw: augmented ones
        real, fake = self.discriminator_view(real), self.discriminator_view(fake)
        real_logits, fake_logits = self.critic(real, condition), self.critic(fake, condition)
        d_out = self.loss.d_loss(
            real_logits=real_logits, fake_logits=fake_logits, real=real, fake=fake, step=self.d_step_index(),
            **self.discriminator_inputs(condition))
        d_loss = d_out.total
        ok = self.guard_finite(snapshot, **{"train/d_loss": d_loss})
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        self.step_unless(opt_d, ok)
        if self._sched.get("d") is not None:
            self._sched["d"].step()
        logs = {"train/d_loss": d_loss, **d_out.named("train/loss/d"),
                "train/d_real": real_logits.detach().mean(), "train/d_fake": fake_logits.detach().mean()}

        if g_step:
            # the generator takes the condition as an input: its gradient trains G only
            condition = None if condition is None else condition.detach()
            self.discriminator.requires_grad_(False)
            try:
                if not reuse:
                    fake_g, g_inputs = self.synthesize(b, condition)
                if self._g_wants_real_logits:
                    # relativistic terms (RpGAN, RaGAN) compare with D's logits on the real batch, under the D just
                    # updated, as its D step saw them (augmented); no gradient: G's update must not reach D
                    with torch.no_grad():
                        g_inputs = {**g_inputs, "real_logits": self.critic(real, condition)}
                g_out = self.loss(fake_logits=self.critic(self.discriminator_view(fake_g), condition), fake=fake_g,
                                  **g_inputs)
                g_loss = g_out.total
                ok = self.guard_finite(snapshot, **{"train/d_loss": d_loss, "train/g_loss": g_loss})
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                self.step_unless(opt_g, ok)
            finally:
                self.discriminator.requires_grad_(True)
            if self._sched.get("g") is not None:
                self._sched["g"].step()
            if self.ema is not None:
                self.ema.update(self.global_step // (self.n_disc + 1), ok=ok)
            logs.update({"train/g_loss": g_loss, **g_out.named("train/loss/g")})
        self.restore_buffers_unless_finite()
        self.log_train(logs)


class GAN(AdversarialTraining, GenerativeModule):
    """GAN training: alternating discriminator and generator updates (Goodfellow et al. 2014).

    Args:
        generator (nn.Module): ``z [B, latent_dim] -> images [B, C, H, W]`` in [-1, 1]; must
            expose ``latent_dim``, ``channels`` and ``image_size``.
        discriminator (nn.Module): ``images -> logits [B]``; ``channels``/``image_size`` must
            match the generator's when it exposes them.
        loss (LossSet): the loss (``conf/loss/gan_*.yaml``): terms with ``d_loss`` (an
            adversarial loss, regularisers) make the discriminator's loss, terms with
            ``forward`` the generator's. Discriminator terms may take ``real_logits``,
            ``fake_logits``, ``discriminator``, ``real``, ``fake`` and ``step`` (the index of this
            D step); generator terms ``fake_logits``, ``fake`` and ``real_logits`` (D's logits on
            the real batch under the updated D, without gradient: relativistic losses).
        optimizer_g, optimizer_d (Callable): Hydra partials called as ``optimizer(params=...)``;
            separate learning rates give TTUR (Heusel et al. 2017).
        scheduler_g, scheduler_d (Callable | None): partials called as
            ``scheduler(optimizer=...)``, stepped after every step of their optimizer.
            Default: None.
        n_disc (int): discriminator updates per generator update. Default: 1.
        ema_decay (float | None): keep an EMA of the generator with this decay and use it for
            :meth:`generate`, previews and validation fakes. Default: None (off).
        ema_start (int): generator steps before which the EMA just copies the generator.
            Default: 0.
        num_preview (int): images in :meth:`preview` (a square grid when a square). Default: 64.
        sample_seed (int): seed of the validation/preview noise. Default: 0.
        finite_check_every_n_steps, log_every_n_steps (int | None): see
            :class:`GenerativeModule`. Default: None (auto).
        augment (nn.Module | None): applied to every image D sees in training, real and generated, in
            D's and G's steps, e.g. :class:`mmexp.networks.diffaugment.DiffAugment`
            (``model/augment=diffaugment``). Validation and samples never pass through it. Default: None.
        channels_last (bool): weights in channels-last layout (see :class:`GenerativeModule`). Default: False
            (``model=dcgan``/``sngan`` switch it on).
        reuse_fakes (bool): the G step scores the fakes of the D step before it (generated with gradients; D saw
            them detached) against the updated D instead of generating a fresh batch, as the PyTorch DCGAN example
            does: one G forward per iteration instead of two (~25 % more iterations per second on 2 CPU cores
            with the default's networks), at the price of G's step seeing no new noise. Default: False
            (``model=dcgan_r1`` switches it on).

    ``n_disc`` follows StudioGAN (``d_updates_per_step``): every D update uses a fresh real
    batch, so the discriminator takes one step on **every** training batch and the generator
    one step on every ``n_disc``-th batch (after that batch's D step, with fresh noise).
    Lightning's ``trainer.global_step`` counts every optimizer step in manual optimisation, so a
    cycle of ``n_disc`` batches adds ``n_disc + 1`` to it: ``max_steps=S`` trains
    ``S * n_disc / (n_disc + 1)`` batches (``S / 2`` with ``n_disc=1``) and
    ``S / (n_disc + 1)`` generator steps. The position in the cycle is derived from
    ``global_step`` (restored on resume), so resuming mid-cycle stays in phase.

    Training noise comes from the global torch RNG; validation noise is drawn per sample index
    (:meth:`generate_indexed`) and preview noise from a ``torch.Generator``, both seeded with
    ``sample_seed``. Logs ``train/d_loss``, ``train/g_loss``, their unweighted parts
    ``train/loss/d/<term>`` and ``train/loss/g/<term>`` (see :mod:`mmexp.losses`), and
    ``train/d_real`` / ``train/d_fake``: mean raw discriminator logits on the real and generated batch.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, loss: LossSet,
                 optimizer_g: Callable[..., torch.optim.Optimizer],
                 optimizer_d: Callable[..., torch.optim.Optimizer],
                 scheduler_g: Callable[..., Any] | None = None,
                 scheduler_d: Callable[..., Any] | None = None, n_disc: int = 1,
                 ema_decay: float | None = None, ema_start: int = 0, num_preview: int = 64,
                 sample_seed: int = 0, finite_check_every_n_steps: int | None = None,
                 log_every_n_steps: int | None = None, augment: nn.Module | None = None,
                 channels_last: bool = False, reuse_fakes: bool = False) -> None:
        super().__init__(finite_check_every_n_steps, sample_seed, log_every_n_steps, channels_last)
        self.save_hyperparameters(ignore=["generator", "discriminator", "loss", "optimizer_g",
                                          "optimizer_d", "scheduler_g", "scheduler_d", "augment"])
        self.init_adversarial(generator, discriminator, loss, optimizer_g, optimizer_d, scheduler_g,
                              scheduler_d, n_disc, ema_decay, ema_start,
                              "loss=gan_bce, gan_bce_r1, gan_hinge, wgan_gp or gan_hinge_r1", augment, reuse_fakes)
        self.num_preview = int(num_preview)

    # ------------------------------------------------------------------ the adversarial step's parts
    def synthesize(self, n: int, condition: None) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.generator(self.randn(n, self.latent_dim)), {}

    def critic(self, images: torch.Tensor, condition: None) -> torch.Tensor:
        return self.discriminator(images)

    def discriminator_inputs(self, condition: None) -> dict[str, Any]:
        return {"discriminator": self.discriminator}

    # ------------------------------------------------------------------ sampling
    def generate(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``[n, C, H, W]`` in [-1, 1] from the EMA generator when enabled (eval
        mode, no grad). Noise from ``generator`` if given, else the global torch RNG."""
        return self.decode(self.randn(n, self.latent_dim, generator=generator))

    def generate_indexed(self, indices: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One sample per index from per-index noise (see :meth:`GenerativeModule.noise`)."""
        return self.decode(self.noise(indices, self.latent_dim, seed=seed))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[n, latent_dim]`` -> images in [-1, 1] by :attr:`sampler` (eval mode, no grad)."""
        with eval_mode(self.sampler):
            return self.sampler(z).clamp(-1, 1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        # one fake per sample index: the same set whatever the batch size or number of processes
        return {"real": batch["image"], "fake": self.generate_indexed(self.sample_indices(batch))}

    def preview(self, batch: dict[str, Any] | None = None) -> tuple[torch.Tensor, int]:
        """``num_preview`` samples from fixed noise (the same at every call) and the grid's
        row length (``sqrt(num_preview)`` rounded down). ``batch`` is unused."""
        images = self.generate(self.num_preview, self.preview_generator())
        return images, max(1, math.isqrt(self.num_preview))
