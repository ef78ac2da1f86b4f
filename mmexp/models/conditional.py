"""What every conditional generator shares: a :class:`~mmexp.conditioning.Conditioner`, its preparation from the
data, per-sample randomness, classifier-free guidance's arguments, validation and previews with prompts.

A subclass implements :meth:`ConditionalModule.sample` (draw images for a batch of conditions) and its training
step; generation from prompts (``task=generate``, ``mmexp.load(CKPT).generate(...)``), validation samples, metric
top-ups and preview grids then work the same for every family (GANs, VQ prior, diffusion).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmexp.conditioning.condition import Condition
from mmexp.conditioning.conditioner import Conditioner
from mmexp.data.loaders import derive_seed
from mmexp.errors import ConfigError
from mmexp.models.base import GenerativeModule, eval_mode

log = logging.getLogger(__name__)

#: derive_seed stream of a sample's generation noise (validation: seed = sample_seed, key = the sample's index)
GENERATION_STREAM = 11


class ConditionalModule(GenerativeModule):
    """Base of models that generate images from captions and/or class labels.

    Args:
        conditioner (Conditioner): captions/labels -> :class:`~mmexp.conditioning.Condition` (see
            ``conf/text_encoder/``); its ``required_keys`` become the model's.
        guidance (float): default classifier-free guidance scale (Ho & Salimans 2022) of :meth:`generate_conditional`;
            1: the plain conditional model (no unconditional pass). Models without guidance ignore it. Default: 1.0.
        sampler (dict | None): default keyword arguments of :meth:`sample` (e.g. ``steps``, ``kind``,
            ``top_k``); a call's own keywords win. Default: None.
        preview_prompts (Sequence[str] | None): fixed captions of the sample grids (one row each); default: the
            first distinct captions of the first validation batch. Default: None.
        preview_labels (Sequence[int] | None): fixed labels of the grids (label-only models). Default: None.
        num_per_prompt (int): images per row of a grid. Default: 8.
        num_preview_rows (int): rows when the prompts come from the validation batch. Default: 8.
        finite_check_every_n_steps, log_every_n_steps, sample_seed, channels_last: see :class:`GenerativeModule`.

    Randomness: generated image ``i`` of a call draws all its noise from its own ``torch.Generator``, seeded from
    ``(seed, index)`` when indices are given (validation: ``batch["index"]``; ``task=generate``: ``seed + i``),
    so an image does not depend on the batch it is drawn in or the number of processes.
    """

    def __init__(self, conditioner: Conditioner, guidance: float = 1.0, sampler: Mapping[str, Any] | None = None,
                 preview_prompts: Sequence[str] | None = None, preview_labels: Sequence[int] | None = None,
                 num_per_prompt: int = 8, num_preview_rows: int = 8, finite_check_every_n_steps: int | None = None,
                 sample_seed: int = 0, log_every_n_steps: int | None = None, channels_last: bool = False) -> None:
        super().__init__(finite_check_every_n_steps, sample_seed, log_every_n_steps, channels_last)
        if not isinstance(conditioner, Conditioner):
            raise ConfigError(f"{type(self).__name__}: conditioner must be a mmexp.conditioning.Conditioner, got "
                              f"{type(conditioner).__name__}")
        if guidance < 0:
            raise ConfigError(f"{type(self).__name__}: guidance must be >= 0, got {guidance}")
        self.conditioner = conditioner
        self.guidance = float(guidance)
        self.sampler_defaults = dict(sampler or {})
        self.preview_prompts = list(preview_prompts) if preview_prompts else None
        self.preview_labels = list(preview_labels) if preview_labels else None
        self.num_per_prompt, self.num_preview_rows = int(num_per_prompt), int(num_preview_rows)
        self._reference_split: Any = None  # the dataset whose conditions top up validation samples

    @property
    def required_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("image", "index", *self.conditioner.required_keys)

    # ------------------------------------------------------------------ preparation
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "dataset"):
            self.prepare_conditions(dm)

    def prepare_conditions(self, datamodule: Any) -> None:
        """Build the learned vocabulary / warm a frozen encoder's cache from the captions of the train and val
        splits (once; the vocabulary then travels in the checkpoint), and remember the val split for top-ups."""
        self.conditioner.prepare_from(datamodule, ("train", "val"))
        try:
            self._reference_split = datamodule.dataset("val")
        except Exception:  # noqa: BLE001
            self._reference_split = None

    # ------------------------------------------------------------------ conditions and randomness
    def condition(self, caption: Sequence[str] | None = None, label: torch.Tensor | Sequence[int] | None = None,
                  batch_size: int | None = None) -> Condition:
        """The condition of captions and/or labels; a missing part (None) is the learned null part."""
        if label is not None and not torch.is_tensor(label):
            label = torch.as_tensor(list(label), dtype=torch.long)
        if caption is not None and not self.conditioner.uses_text:
            raise ConfigError(f"{type(self).__name__} is " + ("conditioned on labels only; it cannot take a prompt "
                              "(give label=...)" if self.conditioner.uses_label else
                              "unconditional; it cannot take a prompt (give n=...)"))
        if label is not None and not self.conditioner.uses_label:
            raise ConfigError(f"{type(self).__name__} is " + ("conditioned on text only; it cannot take label=..."
                              if self.conditioner.uses_text else "unconditional; it cannot take label=..."))
        return self.conditioner(caption, label, batch_size=batch_size)

    def sample_generators(self, n: int, indices: Sequence[int] | torch.Tensor | None = None, seed: int | None = None,
                          generator: torch.Generator | None = None,
                          seeds: Sequence[int] | None = None) -> list[torch.Generator]:
        """One CPU generator per image: from ``seeds[i]`` (one seed per image, ``task=generate``), from
        ``(seed, indices[i])`` when indices are given (validation), else seeded by draws from ``generator`` (or the
        global RNG)."""
        if seeds is not None:
            seeds = list(seeds)
            if len(seeds) != n:
                raise ConfigError(f"{len(seeds)} seeds for {n} images")
            return [torch.Generator().manual_seed(derive_seed(int(s), GENERATION_STREAM, 0)) for s in seeds]
        if indices is not None:
            seed = self.sample_seed if seed is None else int(seed)
            keys = torch.as_tensor(indices).reshape(-1).tolist()
            if len(keys) != n:
                raise ConfigError(f"{len(keys)} indices for {n} images")
            return [torch.Generator().manual_seed(derive_seed(seed, GENERATION_STREAM, int(k))) for k in keys]
        seeds = torch.randint(0, 2**62, (n,), generator=generator,
                              device=generator.device if generator is not None else "cpu").tolist()
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

    def randn_per_sample(self, generators: Sequence[torch.Generator], *shape: int) -> torch.Tensor:
        """``[len(generators), *shape]`` standard normal noise, row ``i`` from ``generators[i]``, on the device."""
        return torch.stack([torch.randn(*shape, generator=g) for g in generators]).to(self.device)

    def rand_per_sample(self, generators: Sequence[torch.Generator], *shape: int) -> torch.Tensor:
        """``[len(generators), *shape]`` uniform [0, 1) noise, row ``i`` from ``generators[i]``, on the device."""
        return torch.stack([torch.rand(*shape, generator=g) for g in generators]).to(self.device)

    # ------------------------------------------------------------------ sampling
    def sampling_modules(self) -> list[nn.Module]:
        """Modules put in eval mode while sampling (default: the whole model)."""
        return [self]

    def sample(self, condition: Condition, generators: Sequence[torch.Generator], guidance: float,
               **sampler: Any) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [-1, 1] for ``B = len(condition)`` conditions; image ``i`` draws all its noise
        from ``generators[i]``. ``guidance != 1``: classifier-free guidance against ``self.conditioner.null(B)``."""
        raise NotImplementedError

    @torch.no_grad()
    def generate_conditional(self, caption: Sequence[str] | None = None,
                             label: torch.Tensor | Sequence[int] | None = None, *, n: int | None = None,
                             indices: Sequence[int] | torch.Tensor | None = None, seed: int | None = None,
                             generator: torch.Generator | None = None, seeds: Sequence[int] | None = None,
                             guidance: float | None = None, batch_size: int = 64, **sampler: Any) -> torch.Tensor:
        """One image per caption / label (``n`` unconditional images when neither is given; one per index when
        only ``indices`` are), ``[B, C, H, W]`` in [-1, 1]. ``indices`` (+ ``seed``) make image ``i`` depend only
        on ``(seed, indices[i])``, ``seeds`` on ``seeds[i]`` alone; ``guidance`` and ``**sampler`` override the
        model's defaults. Drawn ``batch_size`` at a time, in eval mode."""
        if caption is None and label is None and n is None and indices is not None:
            n = len(torch.as_tensor(indices).reshape(-1))
        sizes = {len(caption) if caption is not None else None, len(label) if label is not None else None,
                 n if n is not None else None} - {None}
        if len(sizes) != 1:
            raise ConfigError(f"generate_conditional: give captions, labels or n, of one size; got sizes {sizes or 0}")
        b = sizes.pop()
        guidance = self.guidance if guidance is None else float(guidance)
        options = {**self.sampler_defaults, **sampler}
        generators = self.sample_generators(b, indices, seed, generator, seeds)
        out = []
        with eval_mode(*self.sampling_modules()):
            for start in range(0, b, batch_size):
                part = slice(start, min(b, start + batch_size))
                cond = self.condition(None if caption is None else list(caption)[part],
                                      None if label is None else torch.as_tensor(label)[part],
                                      batch_size=part.stop - part.start)
                out.append(self.sample(cond, generators[part], guidance, **options).clamp(-1, 1))
        return torch.cat(out)

    def generate(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` unconditional samples (the null condition)."""
        return self.generate_conditional(n=n, generator=generator)

    def reference_conditions(self, indices: Sequence[int]) -> dict[str, Any]:
        """The captions/labels of the validation split's items ``i % len(split)``: what samples beyond the split
        (metric top-ups) are conditioned on."""
        if self.conditioner.unconditional:
            return {}
        ds = self._reference_split
        if ds is None or len(ds) == 0:
            raise NotImplementedError(f"{type(self).__name__}: no validation split to take conditions from")
        items = [ds[int(i) % len(ds)] for i in indices]
        out: dict[str, Any] = {}
        if self.conditioner.uses_text:
            out["caption"] = [it["caption"] for it in items]
        if self.conditioner.uses_label:
            out["label"] = torch.tensor([int(it["label"]) for it in items])
        return out

    def generate_indexed(self, indices: torch.Tensor | Sequence[int], seed: int | None = None) -> torch.Tensor:
        indices = torch.as_tensor(indices).reshape(-1)
        return self.generate_conditional(**self.reference_conditions(indices.tolist()), indices=indices, seed=seed)

    # ------------------------------------------------------------------ validation and previews
    def batch_conditions(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.conditioner.uses_text:
            out["caption"] = list(batch["caption"])
        if self.conditioner.uses_label:
            out["label"] = batch["label"]
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self.check_batch(batch)
        conditions = self.batch_conditions(batch)
        fake = self.generate_conditional(**conditions, indices=self.sample_indices(batch))
        return {"real": batch["image"], "fake": fake, **conditions}

    def preview(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int, list[str]] | tuple[torch.Tensor, int]:
        """A grid: one row per prompt (fixed ``preview_prompts``/``preview_labels``, else the first distinct
        conditions of ``batch``), ``num_per_prompt`` images each from fixed seeds; the row captions beside it.
        Unconditional models: rows of samples from fixed seeds, no captions."""
        k = self.num_per_prompt
        if self.conditioner.unconditional:
            rows = max(1, min(self.num_preview_rows, 64 // max(1, k)))
            images = self.generate_conditional(indices=torch.arange(rows * k), seed=self.sample_seed + 1)
            return images, k
        if self.conditioner.uses_text:
            prompts = self.preview_prompts or list(dict.fromkeys(batch["caption"]))[: self.num_preview_rows]
            labels = None
            if self.conditioner.uses_label:
                labels = self.preview_labels or [int(x) for x in batch["label"][: len(prompts)]]
                labels = [labels[i % len(labels)] for i in range(len(prompts))]
            captions = list(prompts)
            if labels is not None:
                captions = [f"{p} [label {lab}]" for p, lab in zip(prompts, labels)]
        else:
            labels = self.preview_labels or list(dict.fromkeys(int(x) for x in batch["label"]))[: self.num_preview_rows]
            prompts, captions = None, [f"label {lab}" for lab in labels]
        rows = len(captions)
        kwargs: dict[str, Any] = {}
        if prompts is not None:
            kwargs["caption"] = [p for p in prompts for _ in range(k)]
        if labels is not None:
            kwargs["label"] = torch.tensor([lab for lab in labels for _ in range(k)])
        indices = torch.arange(rows * k) % k  # the same k seeds in every row: rows differ only by their condition
        images = self.generate_conditional(**kwargs, indices=indices, seed=self.sample_seed + 1)
        return images, k, captions
