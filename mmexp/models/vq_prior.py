"""The second stage of a two-stage generator: an autoregressive prior over a trained VQ-VAE's codes.

As taming-transformers (Esser, Rombach & Ommer, "Taming Transformers for High-Resolution Image Synthesis",
CVPR 2021) and VQ-VAE-2 (Razavi, van den Oord & Vinyals, NeurIPS 2019): stage 1 (a :class:`~mmexp.models.vqvae.VQVAE`)
is named by its checkpoint, rebuilt from the config stored in it, and frozen; a GPT
(:class:`~mmexp.networks.transformer.CodeTransformer`) learns the distribution of its code grids given a
condition, and images are drawn code by code and decoded by stage 1. Classifier-free guidance on the logits
(Ho & Salimans 2022, as in Gafni et al.'s Make-A-Scene 2022).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmexp.checkpoint import CHECKPOINT_KEY, load_checkpoint
from mmexp.conditioning.condition import Condition
from mmexp.conditioning.conditioner import Conditioner
from mmexp.errors import CheckpointError, ConfigError, ShapeMismatchError
from mmexp.losses import LossSet
from mmexp.losses.vq import CodebookLoss, CommitmentLoss
from mmexp.models.conditional import ConditionalModule
from mmexp.models.vqvae import VQVAE
from mmexp.networks.transformer import CodeTransformer

log = logging.getLogger(__name__)

#: how to make a stage-1 checkpoint, for error messages
TRAIN_STAGE1 = ("train one first, e.g. `python -m mmexp model=vqvae data=shapes trainer.max_steps=2000`, and pass "
                "model.stage1.ckpt_path=RUN/checkpoints/last.ckpt (or train both stages in one command with "
                "`stages:`, see mmexp/stages.py)")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stage1_from_config(model_cfg: Mapping[str, Any], where: str) -> VQVAE:
    """A VQ-VAE built from a stage-1 run's model config (its weights not loaded)."""
    from hydra.utils import get_class

    from mmexp.config import build

    target = model_cfg.get("_target_")
    try:
        cls = get_class(target) if target else None
    except (ImportError, ValueError) as err:
        raise CheckpointError(f"stage 1 ({where}) names model class {target!r}, which does not import: {err}") from None
    if cls is None or not issubclass(cls, VQVAE):
        raise CheckpointError(
            f"stage 1 ({where}) is a {target} checkpoint, not a VQ-VAE (mmexp.models.vqvae.VQVAE): the prior models "
            f"a VQ-VAE's code indices; {TRAIN_STAGE1}")
    # the stage-1 loss is never used here: no perceptual network to load, nothing of it in the prior's checkpoint
    frozen_loss = LossSet({"commitment": CommitmentLoss(), "codebook": CodebookLoss()})
    return build(dict(model_cfg), loss=frozen_loss)


def _stage1_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.startswith("loss.")}


class VQPrior(ConditionalModule):
    """A transformer prior over the codes of a frozen VQ-VAE: unconditional, class-, text- or text+label-
    conditioned (whatever the conditioner uses), with top-k / top-p / temperature sampling and classifier-free
    guidance.

    Args:
        stage1 (Mapping): the first stage: ``ckpt_path`` (a VQ-VAE checkpoint written by ``python -m mmexp
            model=vqvae``; required); ``sha256`` and ``config`` are filled in by this model's own checkpoints
            (the stage-1 file's hash and its model config, as JSON), so a stage-2 checkpoint rebuilds stage 1
            without the file. Stage 1 is loaded from its checkpoint's stored config and weights (``weights_only``),
            kept in eval mode, without gradients and out of the optimizer; its weights are submodule state of
            this model, so they travel in its checkpoints.
        transformer (Callable[..., CodeTransformer]): Hydra partial of the prior network; ``num_codes``,
            ``grid_size`` (from stage 1) and ``cond_dim`` (the conditioner's ``dim``) are filled in here. A config
            that sets ``num_codes`` or ``grid_size`` must agree with stage 1.
        conditioner (Conditioner): captions/labels -> condition tokens (neither: unconditional).
        optimizer (Callable): Hydra partial, ``optimizer(params=...)`` (the transformer and the conditioner).
        loss (LossSet): takes ``logits`` ``[B, N, K]`` and ``codes`` ``[B, N]`` (``conf/loss/vq_prior.yaml``).
        scheduler (Callable | None): partial, ``scheduler(optimizer=...)``, stepped every optimizer step.
            Default: None.
        cache_codes (bool): keep the training images' codes by ``batch["index"]`` after their first encoding
            (stage 1 is frozen, so an item's codes never change; valid when a training item is the same image in
            every epoch, as with every mmexp dataset, which has no random augmentation). Costs one host sync per
            step. Default: False.
        guidance, sampler, preview_prompts, preview_labels, num_per_prompt, num_preview_rows,
        finite_check_every_n_steps, sample_seed, log_every_n_steps: see :class:`ConditionalModule`. ``sampler``
        keys: ``top_k`` (int | None), ``top_p`` (float | None), ``temperature`` (float).

    Logs ``train/loss`` (nats per code), ``train/loss/<term>``, ``train/accuracy`` (teacher-forced next-code
    accuracy), and ``val/loss``, ``val/accuracy`` on the validation split.
    """

    def __init__(self, stage1: Mapping[str, Any], transformer: Callable[..., CodeTransformer], conditioner: Conditioner,
                 optimizer: Callable[..., torch.optim.Optimizer], loss: LossSet,
                 scheduler: Callable[..., Any] | None = None, cache_codes: bool = False, guidance: float = 1.0,
                 sampler: Mapping[str, Any] | None = None, preview_prompts: Sequence[str] | None = None,
                 preview_labels: Sequence[int] | None = None, num_per_prompt: int = 8, num_preview_rows: int = 8,
                 finite_check_every_n_steps: int | None = None, sample_seed: int = 0,
                 log_every_n_steps: int | None = None) -> None:
        super().__init__(conditioner, guidance, sampler, preview_prompts, preview_labels, num_per_prompt,
                         num_preview_rows, finite_check_every_n_steps, sample_seed, log_every_n_steps)
        if not isinstance(loss, LossSet):
            raise ConfigError(f"VQPrior: loss must be a LossSet, got {loss!r}; choose loss=vq_prior")
        self.stage1, self.stage1_spec = self._load_stage1(dict(stage1 or {}))
        self.stage1.requires_grad_(False)
        self.stage1.eval()
        codes = self.stage1.encode(torch.zeros(1, *self.stage1.image_shape))
        grid, num_codes = tuple(codes.shape[1:]), int(self.stage1.quantizer.num_codes)
        given = getattr(transformer, "keywords", {})
        for key, value in (("num_codes", num_codes), ("grid_size", grid)):
            setting = given.get(key)
            if setting is None:
                continue
            if key == "grid_size":
                setting = (int(setting),) * 2 if isinstance(setting, int) else tuple(int(s) for s in setting)
            if setting != value:
                raise ConfigError(
                        f"model.transformer.{key}={given[key]} but the stage-1 VQ-VAE "
                        f"({self.stage1_spec['ckpt_path']}) has {key}={value}; leave it unset (it is taken from "
                        "stage 1) or name the stage-1 checkpoint the prior was meant for")
        kwargs = {k: v for k, v in (("num_codes", num_codes), ("grid_size", grid)) if given.get(k) is None}
        self.transformer = transformer(cond_dim=conditioner.dim, **kwargs)
        self.loss = loss
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.cache_codes = bool(cache_codes)
        self._code_cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ stage 1
    @staticmethod
    def _load_stage1(spec: dict[str, Any]) -> tuple[VQVAE, dict[str, Any]]:
        """The frozen VQ-VAE and what identifies it: ``{ckpt_path, sha256, config}`` (config as JSON)."""
        path = spec.get("ckpt_path")
        if spec.get("config"):
            # a stage-2 checkpoint being rebuilt: the architecture from its record, the weights from its state
            model_cfg = json.loads(spec["config"])
            vq = _stage1_from_config(model_cfg, f"recorded from {path}")
            vq._mmexp_weights_loaded = False  # until the stage-2 state dict is loaded
            return vq, {"ckpt_path": path, "sha256": spec.get("sha256"), "config": spec["config"]}
        if not path:
            raise ConfigError(f"model=vq_prior needs model.stage1.ckpt_path, the checkpoint of a VQ-VAE: {TRAIN_STAGE1}")
        if not os.path.isfile(path):
            raise CheckpointError(f"stage-1 checkpoint {path} does not exist; {TRAIN_STAGE1}")
        ckpt = load_checkpoint(path)
        model_cfg = ((ckpt.get(CHECKPOINT_KEY) or {}).get("config") or {}).get("model")
        if not model_cfg:
            raise CheckpointError(f"stage-1 checkpoint {path} holds no mmexp config (not written by `python -m mmexp "
                                  f"task=train`), so its architecture is unknown; {TRAIN_STAGE1}")
        vq = _stage1_from_config(model_cfg, path)
        missing, unexpected = vq.load_state_dict(_stage1_state(ckpt["state_dict"]), strict=False)
        missing = [k for k in missing if not k.startswith("loss.")]
        if missing or unexpected:
            raise CheckpointError(f"stage-1 checkpoint {path} does not fit the VQ-VAE its own config builds: missing "
                                  f"{missing[:5]}, unexpected {unexpected[:5]}")
        vq._mmexp_weights_loaded = True
        spec = {"ckpt_path": os.path.abspath(path), "sha256": file_sha256(path),
                "config": json.dumps(model_cfg, sort_keys=True)}
        log.info("stage 1: %s (%s, sha256 %s...), frozen", path, type(vq).__name__, spec["sha256"][:12])
        return vq, spec

    def train(self, mode: bool = True) -> VQPrior:
        """Stage 1 stays in eval mode whatever the rest does (taming's ``disabled_train``): its quantizer's
        statistics and dead-code restarts never run."""
        super().train(mode)
        self.stage1.eval()
        return self

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if any(k.startswith("stage1.") for k in state_dict):
            self.stage1._mmexp_weights_loaded = True
        return out

    def _require_stage1(self) -> None:
        if not getattr(self.stage1, "_mmexp_weights_loaded", True):
            raise CheckpointError(
                f"the stage-1 VQ-VAE was rebuilt from its recorded config (file {self.stage1_spec['ckpt_path']}) but "
                "its weights were never loaded: load the stage-2 checkpoint's state dict (task=sample/eval do), or "
                "train with model.stage1.ckpt_path naming the stage-1 file (and model.stage1.config unset)")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.stage1.image_shape)

    def check_data(self, image_shape) -> None:
        try:
            super().check_data(image_shape)
        except ShapeMismatchError as err:
            raise ShapeMismatchError(
                f"{err}. The shape is the stage-1 VQ-VAE's ({self.stage1_spec['ckpt_path']}): train the prior on the "
                "data stage 1 was trained on (the same data.image_size and data.channels)") from None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # RunState (a callback, called before this hook) stored the run config; record stage 1 in it, so the
        # stage-2 checkpoint alone rebuilds the model (task=sample/eval) after the stage-1 file moves
        stored = (checkpoint.get(CHECKPOINT_KEY) or {}).get("config")
        if isinstance(stored, dict) and isinstance(stored.get("model"), dict):
            model = dict(stored["model"])
            model["stage1"] = dict(self.stage1_spec)
            checkpoint[CHECKPOINT_KEY] = {**checkpoint[CHECKPOINT_KEY], "config": {**stored, "model": model}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming: the stage-1 file named now must be the one the checkpoint was trained over."""
        stored = ((checkpoint.get(CHECKPOINT_KEY) or {}).get("config") or {}).get("model") or {}
        recorded = (stored.get("stage1") or {}).get("sha256")
        mine = self.stage1_spec.get("sha256")
        if recorded and mine and recorded != mine:
            raise CheckpointError(
                f"this VQ prior checkpoint was trained over the stage-1 file {stored['stage1'].get('ckpt_path')} "
                f"(sha256 {recorded[:16]}...), but model.stage1.ckpt_path={self.stage1_spec['ckpt_path']} has "
                f"sha256 {mine[:16]}...: a different VQ-VAE, whose codes mean something else. Name the original "
                "stage-1 checkpoint, or train a new prior over this one (without ckpt_path)")

    # ------------------------------------------------------------------ codes
    def codes_of(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Code indices ``[B, N]`` (raster order) of the batch's images under the frozen stage 1."""
        self._require_stage1()
        images = batch["image"]
        if not (self.cache_codes and self.training):
            return self.stage1.encode(images).flatten(1)
        index = torch.as_tensor(batch["index"], device=images.device)
        size = int(index.max()) + 1
        if self._code_cache is None or self._code_cache.shape[0] < size:
            grown = torch.full((max(size, 2 * (0 if self._code_cache is None else self._code_cache.shape[0])),
                                self.transformer.length), -1, dtype=torch.long, device=images.device)
            if self._code_cache is not None:
                grown[: self._code_cache.shape[0]] = self._code_cache
            self._code_cache = grown
        cached = self._code_cache[index]
        if bool((cached[:, 0] < 0).any()):
            cached = self.stage1.encode(images).flatten(1)
            self._code_cache[index] = cached
        return cached

    # ------------------------------------------------------------------ training
    def _nll(self, batch: dict[str, Any], drop: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = self.codes_of(batch)
        cond = self.conditioner.from_batch(batch, drop=drop)
        logits = self.transformer(codes, cond.tokens, cond.mask)
        loss, parts = self.loss(logits=logits, codes=codes)
        accuracy = (logits.detach().argmax(-1) == codes).float().mean()
        return loss, {"loss": loss.detach(), **{f"loss/{k}": v for k, v in parts.items()}, "accuracy": accuracy}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.check_batch(batch)
        loss, logs = self._nll(batch, drop=True)
        # inside Lightning's optimizer closure: the update that follows is skipped on the device if not ok
        self.skip_updates_unless(self.guard_finite(None, **{"train/loss": loss}))
        self.log_train({f"train/{k}": v for k, v in logs.items()})
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self.check_batch(batch)
        _, logs = self._nll(batch, drop=False)
        self.log_dict({f"{self.eval_prefix}/{k}": v for k, v in logs.items()}, on_step=False, on_epoch=True,
                      batch_size=batch["image"].shape[0])
        return super().validation_step(batch, batch_idx)

    def configure_optimizers(self):
        params = [*self.transformer.parameters(), *self.conditioner.parameters()]
        opt, sched = self.build_optimizer(self.optimizer_fn, params, self.scheduler_fn)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    def sampling_modules(self) -> list[nn.Module]:
        return [self.transformer, self.conditioner]

    @torch.no_grad()
    def sample_codes(self, condition: Condition, generators: Sequence[torch.Generator], guidance: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Code grids ``[B, h, w]`` drawn code by code (key/value cache); code ``j`` of image ``i`` is the
        inverse-CDF draw of the uniform ``u[i, j]`` from ``generators[i]``, so an image depends only on its
        condition and generator. ``guidance != 1``: ``logits_u + guidance * (logits_c - logits_u)`` against the
        null condition (the unconditional pass is skipped at 1, so it equals the plain conditional model)."""
        b = len(condition)
        u = self.rand_per_sample(generators, self.transformer.length)
        guided = guidance != 1.0 and not self.conditioner.unconditional
        if guided:
            condition = Condition.cat([condition, self.conditioner.null(b).to(condition.device)])
        logits, state = self.transformer.start(condition.tokens, condition.mask)
        codes = []
        for j in range(self.transformer.length):
            if guided:
                cond, uncond = logits.float().chunk(2)
                logits = uncond + guidance * (cond - uncond)
            drawn = draw(logits, u[:, j], top_k=top_k, top_p=top_p, temperature=temperature)
            codes.append(drawn)
            if j + 1 < self.transformer.length:
                logits = self.transformer.step(torch.cat([drawn, drawn]) if guided else drawn, state)
        return torch.stack(codes, 1).view(b, *self.transformer.grid_size)

    def sample(self, condition: Condition, generators: Sequence[torch.Generator], guidance: float,
               top_k: int | None = None, top_p: float | None = None, temperature: float = 1.0) -> torch.Tensor:
        # the sampler keys are named (no **kwargs): mmexp.load()'s Pipeline warns about and drops the others
        # (a diffusion model's ``steps``), and a misspelt key in Python is a TypeError naming it
        self._require_stage1()
        codes = self.sample_codes(condition, generators, guidance, top_k=top_k, top_p=top_p, temperature=temperature)
        return self.stage1.decode_indices(codes)


def draw(logits: torch.Tensor, u: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
         temperature: float = 1.0) -> torch.Tensor:
    """One index per row of ``logits`` ``[B, K]``: the inverse-CDF draw of the uniforms ``u`` ``[B]`` from the
    tempered distribution restricted to its ``top_k`` most likely entries and to the smallest set of them whose
    mass reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020). ``top_k=1`` is greedy (the argmax, whatever
    ``u``); None or 0 / 1.0 switch a filter off."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature} (top_k=1 is greedy decoding)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 or null: no top-k), got {top_k}")
    logits = logits.float() / temperature
    k = logits.shape[-1]
    if top_k == 1:
        return logits.argmax(-1)
    if top_k and top_k < k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # drop an entry when the entries more likely than it already reach top_p (the most likely always stays)
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    cdf = probs.cumsum(-1)
    index = (cdf <= (u.to(cdf.device) * cdf[:, -1])[:, None]).sum(-1)
    # rounding can put u * total at the very end: take the last entry that has mass
    last = k - 1 - probs.flip(-1).gt(0).to(torch.uint8).argmax(-1)
    return torch.minimum(index, last)
