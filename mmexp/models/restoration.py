"""Image restoration (super-resolution, denoising, and the inpainting hooks) as LightningModules.

:class:`Restorer` is what every restorer shares, trained or not: the batch contract (``input`` -> ``target``),
validation outputs for the paired metrics, the input | output | target preview and :meth:`Restorer.restore`
(used by ``task=restore``, ``task=eval`` and ``mmexp.load(CKPT).restore(...)``). :class:`RestorationModel`
trains a network on it (L1 / Charbonnier / perceptual losses, optionally a discriminator: ESRGAN's, or pix2pix's
conditional PatchGAN with feature matching);
the classical peers (bicubic, non-local means, BM3D, Telea) are in :mod:`mmexp.models.baselines`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.ema import EMA
from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.losses import LossSet
from mmexp.models.base import GenerativeModule, eval_mode


class Restorer(GenerativeModule):
    """Base of the restorers: ``input [B, C, h, w]`` (+ ``hole``, ``caption``) -> ``[B, C, h * scale, w * scale]``.

    Subclasses implement :meth:`predict` and set ``channels`` (image channels), ``scale`` (output size / input
    size) and ``size_multiple`` (input sides the method needs to be multiples of; ``task=restore`` pads).
    ``needs_checkpoint`` is False for methods whose weights do not come from an mmexp checkpoint (classical
    methods, ported pretrained networks), which ``task=restore`` and ``task=eval`` run as configured. Restorers are fully convolutional or per-pixel: ``check_data`` compares channels only.

    Args:
        channels (int): image channels (1 or 3). Default: 3.
        inpainting (bool): the model fills holes: batches must hold ``hole`` (1 = pixel to fill) and the
            known pixels of the input are composited back into every output, exactly. Default: False.
        num_preview (int): images in the preview grid. Default: 4.
        sample_seed, finite_check_every_n_steps, log_every_n_steps, channels_last: see :class:`GenerativeModule`.
    """

    needs_checkpoint: bool = True
    scale: int = 1
    size_multiple: int = 1
    required_keys: tuple[str, ...] = ("input", "target")
    #: frames the method reads: 1 = images (of a clip, its centre frame); T = windows of T frames; None = clips
    #: of any length (recurrent networks)
    num_frames: int | None = 1
    #: the method outputs every frame of a clip ``[B, T, C, H, W]`` (else one image: the centre frame's)
    all_frames: bool = False

    def __init__(self, channels: int = 3, inpainting: bool = False, num_preview: int = 4, sample_seed: int = 0,
                 finite_check_every_n_steps: int | None = None, log_every_n_steps: int | None = None,
                 channels_last: bool = False) -> None:
        super().__init__(finite_check_every_n_steps, sample_seed, log_every_n_steps, channels_last)
        self.channels = int(channels)
        self.inpainting = bool(inpainting)
        self.num_preview = int(num_preview)
        if self.inpainting:
            self.required_keys = ("input", "target", "hole")

    # ------------------------------------------------------------------ shapes
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, 0, 0)``: any size (see :meth:`check_data`)."""
        return (self.channels, 0, 0)

    def check_data(self, image_shape: Iterable[int]) -> None:
        """Raise ShapeMismatchError unless the data's channels are the model's (any height and width)."""
        c = int(tuple(image_shape)[0])
        if c != self.channels:
            raise ShapeMismatchError(
                f"data gives {c}-channel images but {type(self).__name__} restores {self.channels}-channel "
                "images; set data.channels or the model's channels to agree")

    def check_output(self, pred: torch.Tensor, target: torch.Tensor, input: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ShapeMismatchError(
                f"{type(self).__name__} (x{self.scale}) turns input {tuple(input.shape)} into {tuple(pred.shape)} "
                f"but the target is {tuple(target.shape)}: the degradation's scale and the model's must agree")

    # ------------------------------------------------------------------ clips
    def clip_batch(self, batch: dict[str, Any], train: bool = False) -> dict[str, Any]:
        """The batch as this method reads it. Clip batches (``input [B, T, C, h, w]``, ``target`` a clip or its
        centre frame) go to single-image methods as their centre frame ``T // 2``; multi-frame methods get the
        clip, with the target reduced to the centre frame unless ``train`` and the method outputs every frame.
        Evaluation scores the centre frame for every method, so single- and multi-frame methods are compared
        on the same pixels. A wrong number of frames is a ShapeMismatchError naming both numbers."""
        x = batch.get("input")
        if x is None:
            return batch
        name = type(self).__name__
        if x.dim() != 5:
            if self.num_frames != 1:
                raise ShapeMismatchError(
                    f"{name} restores clips ({self.num_frames or 'any number of'} frames, input [B, T, C, h, w]) "
                    f"but the batch's input is {tuple(x.shape)}: use clip data (data=video, data=moving_shapes)")
            return batch
        t, centre = x.shape[1], x.shape[1] // 2
        out = dict(batch)
        if self.num_frames == 1:
            for key in ("input", "target", "hole"):
                if key in out and out[key].dim() == 5:
                    out[key] = out[key][:, centre]
            return out
        if self.num_frames is not None and t != self.num_frames:
            raise ShapeMismatchError(f"{name} reads windows of {self.num_frames} frames but the batch's clips have "
                                     f"{t} (input {tuple(x.shape)}): set data.dataset.num_frames={self.num_frames} "
                                     f"or build the network for {t} frames")
        y = out["target"]
        if y.dim() == 5 and not (train and self.all_frames):
            out["target"] = y[:, centre]
        return out

    @staticmethod
    def centre(x: torch.Tensor) -> torch.Tensor:
        """The centre frame ``[B, C, H, W]`` of a clip ``[B, T, C, H, W]`` (an image as it is)."""
        return x[:, x.shape[1] // 2] if x.dim() == 5 else x

    # ------------------------------------------------------------------ restoring
    def predict(self, input: torch.Tensor, hole: torch.Tensor | None = None,
                caption: list[str] | None = None) -> torch.Tensor:
        """The method's raw output for a batch in [-1, 1] (before compositing known pixels)."""
        raise NotImplementedError

    @staticmethod
    def composite(pred: torch.Tensor, input: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Inpainting: predicted pixels inside the hole, the input's known pixels (exactly) outside it."""
        return torch.where(hole.to(pred.dtype).expand_as(pred) > 0.5, pred, input)

    def restore(self, input: torch.Tensor, hole: torch.Tensor | None = None,
                caption: list[str] | None = None) -> torch.Tensor:
        """Restored images ``[B, C, h * scale, w * scale]`` in [-1, 1] (eval mode, no grad; one pass: tiling for
        large images is :func:`mmexp.restore.restore_tensor`'s). Inpainting models composite known pixels.
        Multi-frame methods take clips ``[B, T, C, h, w]`` and return the centre frame, or every frame
        (``all_frames``)."""
        if self.num_frames != 1:
            if input.dim() != 5 or input.shape[2] != self.channels or \
                    (self.num_frames is not None and input.shape[1] != self.num_frames):
                raise ShapeMismatchError(f"{type(self).__name__} restores clips [B, {self.num_frames or 'T'}, "
                                         f"{self.channels}, H, W], got {tuple(input.shape)}")
        elif input.dim() != 4 or input.shape[1] != self.channels:
            raise ShapeMismatchError(f"{type(self).__name__} restores [B, {self.channels}, H, W] images, got "
                                     f"{tuple(input.shape)}")
        if self.inpainting and hole is None:
            raise ConfigError(f"{type(self).__name__} is an inpainting model: give the hole mask (1 = fill)")
        if hole is not None and hole.shape[-2:] != input.shape[-2:]:
            raise ShapeMismatchError(f"hole mask of size {tuple(hole.shape[-2:])} for an image of size "
                                     f"{tuple(input.shape[-2:])}: they must be the same size")
        with eval_mode(self):
            pred = self.predict(input, hole=hole, caption=caption).clamp(-1, 1)
        if self.inpainting and hole is not None:
            pred = self.composite(pred, input, hole)
        return pred

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """``pred``/``target`` (paired metrics) and ``input``, in [-1, 1] (of clips: the centre frame); inpainting:
        and ``hole`` (the metrics then also report PSNR inside the holes, ``psnr_hole``)."""
        self.check_batch(batch)
        batch = self.clip_batch(batch)
        x, y = batch["input"], batch["target"]
        pred = self.centre(self.restore(x, hole=batch.get("hole"), caption=batch.get("caption")))
        self.check_output(pred, y, x)
        out = {"pred": pred, "target": y, "input": self.centre(x)}
        if self.inpainting:
            out["hole"] = batch["hole"]
        return out

    def preview(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Three rows of ``k = min(num_preview, B)``: input (nearest-upsampled to the output size), output,
        target; ``nrow = k``. Clips show their centre frame."""
        batch = self.clip_batch(batch)
        k = min(self.num_preview, len(batch["input"]))
        x = batch["input"][:k].to(self.device)
        hole = batch["hole"][:k].to(self.device) if "hole" in batch else None
        caption = list(batch["caption"][:k]) if "caption" in batch else None
        pred = self.centre(self.restore(x, hole=hole, caption=caption))
        x = self.centre(x)
        shown = F.interpolate(x, size=pred.shape[-2:], mode="nearest") if x.shape[-2:] != pred.shape[-2:] else x
        if hole is not None:  # the hole shows white in the input
            shown = torch.where(hole.expand_as(shown) > 0.5, torch.ones_like(shown), shown)
        target = self.centre(batch["target"][:k].to(self.device))
        return torch.cat([shown, pred, target]), k


def _accepts(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class RestorationModel(Restorer):
    """A restoration network trained on ``input -> target`` pairs, optionally against a discriminator.

    Args:
        network (nn.Module): ``input [B, C, h, w] -> [B, C, h * upscale, w * upscale]`` (e.g.
            :class:`mmexp.networks.srresnet.MSRResNet`, :class:`~mmexp.networks.rrdbnet.RRDBNet`,
            :class:`~mmexp.networks.dncnn.DnCNN`); its ``upscale`` (default 1), ``out_channels`` and
            ``size_multiple`` (default 1) are read. A network whose ``forward`` takes ``hole`` / ``caption``
            receives them; one with a ``conditioner`` (text-guided inpainting: ``model=inpaint_text``) adds its
            ``required_keys`` to the model's and gets its vocabulary from the data's captions in ``setup``.
            Multi-frame networks (``[B, T, C, h, w]`` in) say so with ``num_frames`` (T, or None for any T;
            default 1: images, fed the centre frame of clips) and ``all_frames`` (True: they output every frame
            ``[B, T, C, H, W]``, trained on all of them; default False: the centre frame).
        loss (LossSet): the loss (``conf/loss/``: ``l1``, ``charbonnier``, ``l1_perceptual``, ``esrgan``). Terms
            may take ``pred``, ``target``, ``pixel_weight`` (the hole for inpainting), and with a discriminator
            ``fake_logits`` and ``real_logits`` (generator side) and the discriminator-side inputs of
            :class:`mmexp.models.gan.GAN`.
        optimizer (Callable): Hydra partial ``optimizer(params=...)`` of the network.
        scheduler (Callable | None): partial ``scheduler(optimizer=...)``, stepped after every network step.
            Default: None.
        discriminator (nn.Module | None): ``images -> logits`` (``[B]`` or a patch map ``[B, 1, H, W]``); with
            it the loss needs a term with ``d_loss``: ESRGAN's
            :class:`~mmexp.losses.adversarial.RelativisticAverageLoss` or a standard one (``NonSaturatingLoss``,
            ``HingeLoss``, ``LSGANLoss``: pix2pix). A :class:`~mmexp.losses.adversarial.FeatureMatchingLoss`
            term needs a discriminator with ``forward(x, return_features=True)`` (e.g.
            :class:`mmexp.networks.discriminators.PatchGANDiscriminator`). Default: None.
        conditional_discriminator (bool): D judges ``cat(input, image)`` as pix2pix's conditional GAN does, the
            input resized (bicubic) to the output's size when they differ (SR); D's ``cond_channels`` must be
            the input's channels. Default: False (D judges the image alone).
        optimizer_d, scheduler_d (Callable | None): the discriminator's, as ``optimizer``/``scheduler``.
            Default: None.
        ema_decay (float | None): keep an EMA of the network (used by :meth:`restore`, validation and
            previews). Default: None (off).
        ema_start (int): network steps before which the EMA copies the network. Default: 0.
        inpainting (bool): see :class:`Restorer`; the loss then gets ``pixel_weight = hole``. Default: False.
        pretrained (bool): the network comes with its weights (e.g. SCICO's ported DnCNN), so ``task=restore``
            and ``task=eval`` run the model without a checkpoint. Default: False.
        num_preview (int): images in the preview grid. Default: 4.
        sample_seed, finite_check_every_n_steps, log_every_n_steps, channels_last: see :class:`GenerativeModule`.

    Training (manual optimisation): one network step per batch, then, with a discriminator, one
    discriminator step on the same batch (ESRGAN's and pix2pix's order; the relativistic loss compares each real
    image with the batch's fakes). The generator-side loss gets ``fake_logits``, and when a term takes them
    ``real_logits`` (computed without a graph) and ``fake_features`` / ``real_features``; the discriminator
    side gets ``real_logits``, ``fake_logits``, ``real``, ``fake``, ``step`` and ``discriminator`` (with a
    conditional D, a callable ``image -> logits`` that adds the batch's condition, so the R1 and gradient
    penalties differentiate with respect to the image only). Lightning's ``global_step`` counts every optimizer
    step, so with a discriminator ``trainer.max_steps=S`` trains ``S / 2`` batches. Logs ``train/loss``, its unweighted parts
    ``train/loss/<term>``, and with a discriminator ``train/d_loss``, ``train/loss/d/<term>``,
    ``train/d_real``, ``train/d_fake`` (mean raw logits).
    """

    def __init__(self, network: nn.Module, loss: LossSet, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, discriminator: nn.Module | None = None,
                 optimizer_d: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler_d: Callable[..., Any] | None = None, conditional_discriminator: bool = False,
                 ema_decay: float | None = None,
                 ema_start: int = 0, inpainting: bool = False, pretrained: bool = False, num_preview: int = 4,
                 sample_seed: int = 0, finite_check_every_n_steps: int | None = None,
                 log_every_n_steps: int | None = None, channels_last: bool = False) -> None:
        channels = int(getattr(network, "out_channels", getattr(network, "channels", 3)))
        super().__init__(channels, inpainting, num_preview, sample_seed, finite_check_every_n_steps,
                         log_every_n_steps, channels_last)
        self.save_hyperparameters(ignore=["network", "loss", "optimizer", "scheduler", "discriminator",
                                          "optimizer_d", "scheduler_d"])
        self.automatic_optimization = False
        self.needs_checkpoint = not pretrained
        if not isinstance(loss, LossSet) or not loss.names("model"):
            raise ConfigError(f"RestorationModel: loss must be a LossSet with a term on the network, got {loss!r}; "
                              "choose loss=l1, charbonnier, l1_perceptual, esrgan or pix2pix")
        adversarial = bool(loss.names("discriminator"))
        if adversarial and discriminator is None:
            raise ConfigError(f"RestorationModel: loss terms {loss.names('discriminator')} train a discriminator "
                              "but the model has none; use model=esrgan or a loss without them (loss=l1)")
        if discriminator is not None and not adversarial:
            raise ConfigError("RestorationModel: a discriminator needs an adversarial loss term (loss=esrgan)")
        if discriminator is not None and optimizer_d is None:
            raise ConfigError("RestorationModel: a discriminator needs optimizer_d")
        self.conditional_discriminator = bool(conditional_discriminator)
        if discriminator is not None:
            self._check_discriminator(network, discriminator, loss)
        elif self.conditional_discriminator:
            raise ConfigError("RestorationModel: conditional_discriminator=true but the model has no discriminator")
        self.network, self.discriminator, self.loss = network, discriminator, loss
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.optimizer_d_fn, self.scheduler_d_fn = optimizer_d, scheduler_d
        self.scale = int(getattr(network, "upscale", 1))
        self.size_multiple = int(getattr(network, "size_multiple", 1))
        self.num_frames = getattr(network, "num_frames", 1)
        self.all_frames = bool(getattr(network, "all_frames", False))
        self._takes = {k: _accepts(network.forward, k) for k in ("hole", "caption")}
        # a text-guided network (its conditioner) needs the batch's captions too
        self.required_keys = (*self.required_keys, *getattr(network, "required_keys", ()))
        self.ema = EMA(network, ema_decay, ema_start) if ema_decay is not None else None
        self._sched: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # a text-guided network: its learned vocabulary (or a frozen encoder's cache) from the data's captions
        conditioner = getattr(self.network, "conditioner", None)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if conditioner is not None and dm is not None and hasattr(dm, "dataset"):
            conditioner.prepare_from(dm, ("train", "val"))
            if self.ema is not None:
                self.ema.module.conditioner.prepare_from(dm, ("train", "val"))

    def _check_discriminator(self, network: nn.Module, d: nn.Module, loss: LossSet) -> None:
        cond = int(getattr(d, "cond_channels", 0))
        in_channels = int(getattr(network, "in_channels", self.channels))
        if self.conditional_discriminator and cond != in_channels:
            raise ConfigError(
                f"RestorationModel: a conditional discriminator sees cat(input, image): its cond_channels must be "
                f"the input's {in_channels} channels, got {cond} (set model.discriminator.cond_channels)")
        if not self.conditional_discriminator and cond:
            raise ConfigError(f"RestorationModel: the discriminator expects a {cond}-channel condition but "
                              "conditional_discriminator is false; set one or the other")
        wants = {"real_features", "fake_features"} & loss.input_names("model")
        if wants and not _accepts(d.forward, "return_features"):
            raise ConfigError(f"RestorationModel: loss terms take {sorted(wants)} (feature matching) but "
                              f"{type(d).__name__}.forward has no return_features; use a PatchGANDiscriminator")

    def _condition(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """What a conditional D sees beside the image: the input at the output's size (None: unconditional)."""
        if not self.conditional_discriminator:
            return None
        if input.shape[-2:] != target.shape[-2:]:
            input = F.interpolate(input, size=target.shape[-2:], mode="bicubic", align_corners=False)
        return input

    def judge(self, image: torch.Tensor, condition: torch.Tensor | None = None, features: bool = False):
        """The discriminator's logits on ``image`` (with ``condition`` prepended on the channels when given),
        or ``(logits, features)`` with ``features=True``."""
        x = image if condition is None else torch.cat([condition, image], 1)
        return self.discriminator(x, return_features=True) if features else self.discriminator(x)

    @property
    def sampler(self) -> nn.Module:
        """The network used for outputs: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.network

    def _run(self, net: nn.Module, input: torch.Tensor, hole: torch.Tensor | None,
             caption: list[str] | None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self._takes["hole"] and hole is not None:
            kwargs["hole"] = hole
        if self._takes["caption"] and caption is not None:
            kwargs["caption"] = caption
        return net(input, **kwargs)

    def forward(self, input: torch.Tensor, hole: torch.Tensor | None = None,
                caption: list[str] | None = None) -> torch.Tensor:
        """The (trained, not EMA) network's raw output."""
        return self._run(self.network, input, hole, caption)

    def predict(self, input: torch.Tensor, hole: torch.Tensor | None = None,
                caption: list[str] | None = None) -> torch.Tensor:
        return self._run(self.sampler, input, hole, caption)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        opt, sched = self.build_optimizer(self.optimizer_fn, self.network.parameters(), self.scheduler_fn)
        self._sched = {"g": sched}
        optimizers, scheds = [opt], [sched]
        if self.discriminator is not None:
            opt_d, sched_d = self.build_optimizer(self.optimizer_d_fn, self.discriminator.parameters(),
                                                  self.scheduler_d_fn)
            self._sched["d"] = sched_d
            optimizers.append(opt_d)
            scheds.append(sched_d)
        scheds = [s for s in scheds if s is not None]
        return (optimizers, scheds) if scheds else optimizers

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.check_batch(batch)
        batch = self.clip_batch(batch, train=True)
        x, y = batch["input"], batch["target"]
        hole = batch.get("hole") if self.inpainting else None
        optimizers = self.optimizers()
        opt = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        nets = [self.network] + ([self.discriminator] if self.discriminator is not None else [])
        snapshot = self.snapshot_buffers(*nets)  # a non-finite pass must not leave NaN BatchNorm statistics

        pred = self(x, hole=hole, caption=batch.get("caption"))
        self.check_output(pred, y, x)
        # input and network: for terms on the network's internals (a video network's flow: losses/flow.py)
        inputs: dict[str, Any] = {"pred": pred, "target": y, "input": x, "network": self.network}
        if hole is not None:
            inputs["pixel_weight"] = hole
        d = self.discriminator
        cond = self._condition(x, y) if d is not None else None
        if d is not None:
            wants = self.loss.input_names("model")
            features = bool({"real_features", "fake_features"} & wants)
            d.requires_grad_(False)
            if features or "real_logits" in wants:  # real before fake, as ESRGAN (BatchNorm statistics' order)
                with torch.no_grad():  # G's update must not reach D through the real branch
                    real = self.judge(y, cond, features=features)
                if features:
                    inputs["real_logits"], inputs["real_features"] = real
                else:
                    inputs["real_logits"] = real
            if features:
                inputs["fake_logits"], inputs["fake_features"] = self.judge(pred, cond, features=True)
            else:
                inputs["fake_logits"] = self.judge(pred, cond)
        try:
            out = self.loss(**inputs)
            ok = self.guard_finite(snapshot, **{"train/loss": out.total})
            opt.zero_grad(set_to_none=True)
            self.manual_backward(out.total)
        finally:
            if d is not None:
                d.requires_grad_(True)
        self.step_unless(opt, ok)
        if self._sched.get("g") is not None:
            self._sched["g"].step()
        if self.ema is not None:
            self.ema.update(self.global_step, ok=ok)
        logs = {"train/loss": out.total, **out.named("train/loss")}

        if d is not None:
            opt_d = optimizers[1]
            fake = pred.detach()
            real_logits, fake_logits = self.judge(y, cond), self.judge(fake, cond)
            judge = d if cond is None else (lambda image: self.judge(image, cond))
            d_out = self.loss.d_loss(real_logits=real_logits, fake_logits=fake_logits, discriminator=judge, real=y,
                                     fake=fake, step=self.global_step // 2)
            ok_d = self.guard_finite(snapshot, **{"train/loss": out.total, "train/d_loss": d_out.total})
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_out.total)
            self.step_unless(opt_d, ok_d)
            if self._sched.get("d") is not None:
                self._sched["d"].step()
            logs.update({"train/d_loss": d_out.total, **d_out.named("train/loss/d"),
                         "train/d_real": real_logits.detach().mean(), "train/d_fake": fake_logits.detach().mean()})
        self.restore_buffers_unless_finite()
        self.log_train(logs)
