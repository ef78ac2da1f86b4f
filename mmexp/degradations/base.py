"""The degradation protocol, the per-sample record it works on, and ``Compose``.

A degradation turns a clean batch into a restoration problem: it returns a *new* dict with the batch's keys
plus those it ``provides`` (``input``, ``target``, and ``hole`` for masks). The datamodule applies it to whole
batches after they reach the device (``ImageDataModule.on_after_batch_transfer``), never the model.

Randomness: every random parameter of sample ``i`` comes from ``seeds[i]`` alone (a CPU
``torch.Generator().manual_seed(seed)``; the datamodule derives the seed from ``(data seed, split, index,
epoch)``). Samples are processed one by one, so sample ``i``'s degradation is bit-identical whatever batch it
is in and whatever the batch size; the random fields (noise) are drawn on the CPU, so they are the same on
every device too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mmexp.batch import check_keys
from mmexp.errors import ConfigError, ShapeMismatchError

__all__ = ["Degradation", "Sample", "Compose", "OneOf", "generator", "derive_stage_seed", "check_seeds"]


def generator(seed: int) -> torch.Generator:
    """The CPU generator every random draw of one sample (or one stage of it) comes from."""
    return torch.Generator().manual_seed(int(seed))


def derive_stage_seed(seed: int, stage: int) -> int:
    """The seed of stage ``stage`` of a sample seeded ``seed``: stages draw independently, so changing one
    stage's settings never changes what another stage draws."""
    state = np.random.SeedSequence([int(seed) % (1 << 64), 0x5EED, int(stage)]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) >> 1


def check_seeds(seeds: Any, n: int) -> list[int]:
    """``seeds`` (a tensor, array or sequence of ``n`` integers) as a list of ints; else a clear error."""
    values = seeds.tolist() if hasattr(seeds, "tolist") else list(seeds)
    if len(values) != n:
        raise ConfigError(f"a degradation needs one seed per sample: got {len(values)} seeds for a batch of {n}")
    return [int(v) for v in values]


@dataclass
class Sample:
    """One sample while it is being degraded.

    ``input``: the degraded image so far, ``[N, C, h, w]`` (``N`` = 1 for an image, ``T`` for a clip: every
    frame gets the sample's parameters, with fresh noise per frame); ``target``: the clean ``[N, C, H, W]``;
    ``hole``: ``[1, 1, H, W]`` (1 = pixel to fill) or None; ``extra``: the sample's other tensors from the batch
    (e.g. the shapes dataset's object ``mask``, ``[1, H, W]``) and its ``name`` where the data has one.
    """

    input: torch.Tensor
    target: torch.Tensor
    hole: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Degradation:
    """Base class (and protocol) of degradations. Subclasses implement :meth:`apply`.

    Class attributes: ``provides`` (keys added to the batch) and ``required_keys`` (batch keys it reads
    beyond ``image``/``frames``; e.g. ``("mask",)`` for object masks).

    ``__call__(batch, seeds) -> dict``: ``batch["frames"]`` (``[B, T, C, H, W]``) when present, else
    ``batch["image"]`` (``[B, C, H, W]``), is the clean source; the result holds every key of ``batch`` plus
    ``target`` (the source), ``input`` (its degraded version; ``[B, T, C, h, w]`` for clips) and, for masks,
    ``hole`` (``[B, 1, H, W]``; ``[B, T, 1, H, W]`` for clips). Images stay in ``[-1, 1]`` unless a stage says
    otherwise (Gaussian noise without clipping).
    """

    provides: tuple[str, ...] = ("input", "target")
    required_keys: tuple[str, ...] = ()

    def apply(self, sample: Sample, seed: int) -> Sample:  # pragma: no cover - abstract
        """Degrade one sample with the randomness of ``seed``; return the new :class:`Sample`."""
        raise NotImplementedError

    # -- batches --------------------------------------------------------------------------
    def __call__(self, batch: Mapping[str, Any], seeds: Any) -> dict[str, Any]:
        clip = "frames" in batch
        source = batch["frames"] if clip else batch.get("image")
        if source is None:
            check_keys(batch.keys(), ("image",), type(self).__name__, "the batch")
        if source.dim() != (5 if clip else 4):
            key = "frames" if clip else "image"
            raise ShapeMismatchError(f"{type(self).__name__} expects batch[{key!r}] of "
                                     f"{'[B, T, C, H, W]' if clip else '[B, C, H, W]'}, got {tuple(source.shape)}")
        check_keys(batch.keys(), self.required_keys, type(self).__name__, "the batch")
        n = source.shape[0]
        seeds = check_seeds(seeds, n)
        done = []
        for i in range(n):
            x = source[i] if clip else source[i : i + 1]
            extra = {k: batch[k][i] for k in self.required_keys}
            if "name" in batch:
                extra["name"] = batch["name"][i]
            done.append(self.apply(Sample(input=x, target=x, extra=extra), seeds[i]))
        out = dict(batch)
        out["input"] = _stack([s.input for s in done], "input", type(self).__name__)
        out["target"] = _stack([s.target for s in done], "target", type(self).__name__)
        if not clip:
            out["input"], out["target"] = out["input"][:, 0], out["target"][:, 0]
        holes = [s.hole for s in done]
        if any(h is not None for h in holes):
            if any(h is None for h in holes):
                raise ConfigError(f"{type(self).__name__} gave a hole to some samples and not to others")
            hole = torch.stack(holes)  # [B, 1, 1, H, W]
            out["hole"] = hole.expand(-1, source.shape[1], -1, -1, -1).contiguous() if clip else hole[:, 0]
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _stack(tensors: Sequence[torch.Tensor], key: str, who: str) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ShapeMismatchError(f"{who} made {key!r} of different shapes within one batch: {sorted(shapes)}; "
                                 "end the pipeline with a resize to a fixed size (e.g. Downsample)")
    return torch.stack(list(tensors))


class Compose(Degradation):
    """Stages applied in order to the same sample, each with its own seed derived from the sample's
    (:func:`derive_stage_seed`), e.g. blur -> downsample -> noise -> JPEG.

    Args:
        stages: the degradations, in order (a list, or a dict whose values are taken in order, so configs
            can name stages and override one: ``degradation.stages.noise.sigma=...``; a null value is skipped).
    """

    def __init__(self, stages: Sequence[Degradation] | Mapping[str, Degradation | None]) -> None:
        items = list(stages.values()) if isinstance(stages, Mapping) else list(stages)
        self.stages = [s for s in items if s is not None]
        if not self.stages:
            raise ConfigError("Compose needs at least one stage")
        for s in self.stages:
            if not isinstance(s, Degradation):
                raise ConfigError(f"Compose stages must be degradations, got {type(s).__name__}")
        self.provides = tuple(dict.fromkeys(k for s in self.stages for k in s.provides))
        self.required_keys = tuple(dict.fromkeys(k for s in self.stages for k in s.required_keys))

    def apply(self, sample: Sample, seed: int) -> Sample:
        for k, stage in enumerate(self.stages):
            sample = stage.apply(sample, derive_stage_seed(seed, k))
        return sample


class OneOf(Degradation):
    """One of several degradations per sample, drawn with ``probs`` (e.g. Real-ESRGAN's Gaussian or Poisson
    noise, each with probability 0.5; or two orders of its final stages).

    Args:
        options: the degradations (a list, or a dict whose values are taken in order, so that configs name
            them: ``degradation.stages.noise1.options.gaussian.sigma=...``).
        probs: their probabilities (summing to 1). Default: equal.
    """

    def __init__(self, options: Sequence[Degradation] | Mapping[str, Degradation],
                 probs: Sequence[float] | None = None) -> None:
        self.options = list(options.values()) if isinstance(options, Mapping) else list(options)
        if not self.options or not all(isinstance(o, Degradation) for o in self.options):
            raise ConfigError(f"OneOf needs degradations as options, got {[type(o).__name__ for o in self.options]}")
        n = len(self.options)
        self.probs = [1.0 / n] * n if probs is None else [float(p) for p in probs]
        if len(self.probs) != n or min(self.probs) < 0 or abs(sum(self.probs) - 1) > 1e-6:
            raise ConfigError(f"OneOf probs must be {n} probabilities summing to 1, got {probs!r}")
        self.provides = tuple(dict.fromkeys(k for o in self.options for k in o.provides))
        self.required_keys = tuple(dict.fromkeys(k for o in self.options for k in o.required_keys))

    def apply(self, sample: Sample, seed: int) -> Sample:
        u = torch.rand(1, generator=generator(derive_stage_seed(seed, 0))).item()
        i = min(int(np.searchsorted(np.cumsum(self.probs), u, side="right")), len(self.options) - 1)
        return self.options[i].apply(sample, derive_stage_seed(seed, 1 + i))


def with_input(sample: Sample, x: torch.Tensor) -> Sample:
    """``sample`` with a new ``input`` (the other fields shared)."""
    return replace(sample, input=x)
