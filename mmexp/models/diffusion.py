"""Conditional diffusion: a denoiser that attends to the condition, DDPM training, DDPM/DDIM sampling, classifier-free
guidance and EMA weights, built from diffusers' parts (Ho et al., "Denoising Diffusion Probabilistic Models",
NeurIPS 2020; Song et al., "Denoising Diffusion Implicit Models", ICLR 2021; Ho & Salimans, "Classifier-Free
Diffusion Guidance", 2022; Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022,
for the cross-attention U-Net).

As in diffusers, three parts stay apart: the denoiser (a plain ``nn.Module``, e.g. ``diffusers.UNet2DConditionModel``),
the training noise schedule (a ``diffusers.DDPMScheduler``: ``add_noise``, ``get_velocity``, ``alphas_cumprod``) and
the sampler (a DDPM or DDIM scheduler built from the schedule's config at each call: ``steps``, ``eta``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmexp.errors import ConfigError, MissingDependencyError

try:
    import diffusers
except ImportError as err:  # an optional dependency: say which install adds it, at config instantiation
    raise MissingDependencyError(
        f'model=diffusion needs the Python package "diffusers", which is not installed ({err}): '
        'pip install "mmexp[diffusion]"') from err

from mmexp.conditioning.condition import Condition
from mmexp.conditioning.conditioner import Conditioner
from mmexp.data.loaders import derive_seed
from mmexp.ema import EMA
from mmexp.losses import LossSet
from mmexp.losses.diffusion import PREDICTION_TYPES
from mmexp.models.base import eval_mode
from mmexp.models.conditional import ConditionalModule

#: ``sampler.kind`` -> diffusers scheduler class (built from the training schedule's config)
SAMPLERS: dict[str, type] = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}

#: derive_seed stream of the validation loss's noise and timestep (per sample index)
LOSS_STREAM = 12


class ConditionalDiffusion(ConditionalModule):
    """A denoising diffusion model conditioned on captions and/or labels, trained with condition dropout so that
    one network gives both terms of classifier-free guidance.

    Training (per batch): ``t ~ U{0..T-1}``, ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (the schedule's
    ``add_noise``); the denoiser predicts ``eps``, ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0`` (Salimans & Ho,
    "Progressive Distillation", ICLR 2022) or ``x0``, as the schedule's ``prediction_type`` says, against the loss
    (``conf/loss/diffusion.yaml``: :class:`mmexp.losses.diffusion.DenoisingMSE`, optionally min-SNR weighted).
    The condition's captions/labels are dropped (replaced by learned nulls) with the conditioner's probabilities.
    Timesteps, noise and dropout come from the global torch RNG (restored on resume).

    Sampling (:meth:`sample`): ``x_T`` of image ``i`` and every step's noise (DDPM, DDIM with ``eta > 0``) come
    from ``generators[i]``, so an image does not depend on the batch it is drawn in. Guidance ``g``:
    ``eps = eps_u + g (eps_c - eps_u)`` with ``eps_u`` from the null condition; at ``g == 1`` the unconditional
    pass is skipped, so guidance 1 is the conditional model exactly. The EMA denoiser samples when enabled.

    Args:
        conditioner (Conditioner): captions/labels -> condition; its ``dim`` must be the denoiser's
            ``cross_attention_dim``.
        denoiser (nn.Module): ``denoiser(x_t, t, encoder_hidden_states=tokens [B, L, D],
            encoder_attention_mask=mask [B, L] (1 = attend), return_dict=False)[0]`` -> a tensor shaped like
            ``x_t``; with a ``config`` holding ``in_channels``, ``out_channels``, ``sample_size`` and
            ``cross_attention_dim`` (``diffusers.UNet2DConditionModel``, ``conf/model/diffusion.yaml``).
        noise_schedule: a ``diffusers.DDPMScheduler`` (``num_train_timesteps``, ``beta_schedule``,
            ``prediction_type`` ``epsilon`` | ``v_prediction`` | ``sample``, ``clip_sample``,
            ``timestep_spacing``); the samplers are built from its config.
        loss (LossSet): terms taking ``pred``, ``target``, ``snr`` (per sample), ``prediction_type``.
        optimizer (Callable): Hydra partial, ``optimizer(params=...)`` (denoiser + conditioner).
        scheduler (Callable | None): partial, ``scheduler(optimizer=...)``, stepped every optimizer step.
            Default: None.
        ema_decay (float | None): EMA of the denoiser with this decay, used for sampling; None: off.
            Default: 0.999.
        ema_start (int): optimizer steps before which the EMA copies the denoiser. Default: 0.
        guidance (float): default classifier-free guidance scale. Default: 1.0.
        sampler (Mapping | None): default sampler settings: ``kind`` (``ddim`` | ``ddpm``), ``steps``
            (denoising steps), ``eta`` (DDIM's noise: 0 deterministic, 1 DDPM-like). Default: None
            (``{kind: ddim, steps: 50, eta: 0.0}``).
        preview_prompts, preview_labels, num_per_prompt, num_preview_rows, finite_check_every_n_steps,
        sample_seed, log_every_n_steps, channels_last: see :class:`ConditionalModule`.

    Logs ``train/loss`` and ``train/loss/<term>``; validation also ``val/loss`` (fixed noise and timestep per
    sample index) besides the generated samples.
    """

    def __init__(self, conditioner: Conditioner, denoiser: nn.Module, noise_schedule: Any, loss: LossSet,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None,
                 ema_decay: float | None = 0.999, ema_start: int = 0, guidance: float = 1.0,
                 sampler: Mapping[str, Any] | None = None, preview_prompts: Sequence[str] | None = None,
                 preview_labels: Sequence[int] | None = None, num_per_prompt: int = 8, num_preview_rows: int = 8,
                 finite_check_every_n_steps: int | None = None, sample_seed: int = 0,
                 log_every_n_steps: int | None = None, channels_last: bool = False) -> None:
        sampler = {"kind": "ddim", "steps": 50, "eta": 0.0, **dict(sampler or {})}
        super().__init__(conditioner, guidance, sampler, preview_prompts, preview_labels, num_per_prompt,
                         num_preview_rows, finite_check_every_n_steps, sample_seed, log_every_n_steps, channels_last)
        self.save_hyperparameters(ignore=["conditioner", "denoiser", "noise_schedule", "loss", "optimizer",
                                          "scheduler"])
        config = getattr(denoiser, "config", None)
        missing = [k for k in ("in_channels", "out_channels", "sample_size", "cross_attention_dim")
                   if config is None or k not in config]
        if missing:
            raise ConfigError(f"ConditionalDiffusion: the denoiser ({type(denoiser).__name__}) has no config "
                              f"{missing}; use diffusers.UNet2DConditionModel (conf/model/diffusion.yaml)")
        if config["in_channels"] != config["out_channels"]:
            raise ConfigError(f"ConditionalDiffusion: the denoiser maps {config['in_channels']} channels to "
                              f"{config['out_channels']}; its prediction must be shaped like its input")
        if config["cross_attention_dim"] != conditioner.dim:
            raise ConfigError(f"ConditionalDiffusion: the denoiser attends to {config['cross_attention_dim']}-d "
                              f"tokens but the conditioner gives {conditioner.dim}-d ones; set "
                              "model.denoiser.cross_attention_dim=${model.conditioner.dim}")
        prediction = noise_schedule.config.prediction_type
        if prediction not in PREDICTION_TYPES:
            raise ConfigError(f"ConditionalDiffusion: noise_schedule.prediction_type must be one of "
                              f"{PREDICTION_TYPES}, got {prediction!r}")
        if not isinstance(loss, LossSet):
            raise ConfigError(f"ConditionalDiffusion: loss must be a LossSet (loss=diffusion), got {loss!r}")
        self.denoiser, self.noise_schedule, self.loss = denoiser, noise_schedule, loss
        self.prediction_type = prediction
        self.num_train_timesteps = int(noise_schedule.config.num_train_timesteps)
        alphas = noise_schedule.alphas_cumprod.double()
        # per-timestep signal-to-noise ratio alpha_bar / (1 - alpha_bar), for min-SNR weighting
        self.register_buffer("snr", (alphas / (1 - alphas)).float(), persistent=False)
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.ema = EMA(denoiser, ema_decay, ema_start) if ema_decay is not None else None
        self._step_ok: torch.Tensor | None = None
        self.check_sampler(**self.sampler_defaults)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.denoiser.config["sample_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.denoiser.config["in_channels"]), int(h), int(w))

    @property
    def sampling_denoiser(self) -> nn.Module:
        """The denoiser that samples: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.denoiser

    def sampling_modules(self) -> list[nn.Module]:
        return [self.sampling_denoiser, self.conditioner]

    # ------------------------------------------------------------------ the denoiser
    def denoise(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        """``net``'s prediction (eps, v or x0) for ``x_t`` at timesteps ``t`` ``[B]`` under ``condition``."""
        # diffusers turns the mask into an additive bias, (1 - mask) * -10000, on the attention scores
        return net(x, t, encoder_hidden_states=condition.tokens.to(x.dtype),
                   encoder_attention_mask=condition.mask.to(x.dtype), return_dict=False)[0]

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to predict (the schedule's ``prediction_type``)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_schedule.get_velocity(x0, noise, t)
        return x0

    def losses(self, x0: torch.Tensor, condition: Condition, noise: torch.Tensor, t: torch.Tensor):
        """The loss output of the denoiser on ``x0`` noised with ``noise`` at timesteps ``t``."""
        x_t = self.noise_schedule.add_noise(x0, noise, t)
        pred = self.denoise(self.denoiser, x_t, t, condition)
        return self.loss(pred=pred, target=self.target(x0, noise, t), snr=self.snr[t],
                         prediction_type=self.prediction_type)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.check_batch(batch)
        x0 = batch["image"]
        snapshot = self.snapshot_buffers(self.denoiser, self.conditioner)
        condition = self.conditioner.from_batch(batch, drop=True)
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        out = self.losses(x0, condition, torch.randn_like(x0), t)
        ok = self.guard_finite(snapshot, **{"train/loss": out.total})
        # inside Lightning's optimizer closure: the update that follows is skipped on the device if not ok
        self.skip_updates_unless(ok)
        self._step_ok = ok
        self.log_train({"train/loss": out.total, **out.named("train/loss")})
        return out.total

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.global_step, ok=self._step_ok)

    def configure_optimizers(self):
        # the conditioner's trainable parts (learned text encoder, projections, null embeddings) train with it
        params = [*self.denoiser.parameters(), *self.conditioner.parameters()]
        opt, sched = self.build_optimizer(self.optimizer_fn, params, self.scheduler_fn)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self.check_batch(batch)
        x0 = batch["image"]
        indices = self.sample_indices(batch).tolist()
        generators = [torch.Generator().manual_seed(derive_seed(self.sample_seed, LOSS_STREAM, i)) for i in indices]
        t = torch.stack([torch.randint(0, self.num_train_timesteps, (), generator=g) for g in generators])
        noise = self.randn_per_sample(generators, *x0.shape[1:])
        with eval_mode(self.denoiser, self.conditioner):
            out = self.losses(x0, self.conditioner.from_batch(batch), noise, t.to(self.device))
        stage = self.eval_prefix
        self.log_dict({f"{stage}/loss": out.total, **out.named(f"{stage}/loss")}, on_step=False, on_epoch=True,
                      batch_size=x0.shape[0])
        return super().validation_step(batch, batch_idx)

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def check_sampler(kind: str = "ddim", steps: int = 50, eta: float = 0.0, **unknown: Any) -> None:
        """Raise ConfigError for sampler settings this model does not take (naming the ones it does)."""
        if unknown:
            raise ConfigError(f"ConditionalDiffusion: unknown sampler setting(s) {sorted(unknown)}; it takes "
                              "kind (ddim | ddpm), steps, eta (and guidance)")
        if kind not in SAMPLERS:
            raise ConfigError(f"ConditionalDiffusion: sampler kind={kind!r}; choose one of {sorted(SAMPLERS)}")
        if int(steps) < 1:
            raise ConfigError(f"ConditionalDiffusion: sampler steps={steps} must be >= 1")
        if eta < 0:
            raise ConfigError(f"ConditionalDiffusion: sampler eta={eta} must be >= 0")

    def sampling_scheduler(self, kind: str = "ddim", steps: int = 50) -> Any:
        """A fresh sampler (schedulers keep per-run state) on the training schedule, set to ``steps`` steps."""
        sched = SAMPLERS[kind].from_config(self.noise_schedule.config)
        if int(steps) > self.num_train_timesteps:
            raise ConfigError(f"ConditionalDiffusion: {steps} sampling steps, but the model was trained on "
                              f"{self.num_train_timesteps} timesteps")
        sched.set_timesteps(int(steps), device=self.device)
        return sched

    @torch.no_grad()
    def sample(self, condition: Condition, generators: Sequence[torch.Generator], guidance: float,
               kind: str = "ddim", steps: int = 50, eta: float = 0.0) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (about [-1, 1]) for the ``B`` conditions; see the class docstring."""
        self.check_sampler(kind, steps, eta)
        b = len(condition)
        if len(generators) != b:
            raise ConfigError(f"ConditionalDiffusion.sample: {len(generators)} generators for {b} conditions")
        sched = self.sampling_scheduler(kind, steps)
        net = self.sampling_denoiser
        guided = float(guidance) != 1.0
        if guided:
            both = Condition.cat([condition, self.conditioner.null(b)])
        step_kwargs: dict[str, Any] = {"generator": list(generators)}
        if kind == "ddim":
            step_kwargs["eta"] = float(eta)
        x = self.randn_per_sample(generators, *self.image_shape) * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            if guided:
                pred_c, pred_u = self.denoise(net, torch.cat([x_in, x_in]), t.expand(2 * b), both).chunk(2)
                pred = pred_u + guidance * (pred_c - pred_u)
            else:
                pred = self.denoise(net, x_in, t.expand(b), condition)
            x = sched.step(pred, t, x, **step_kwargs).prev_sample
        return x
