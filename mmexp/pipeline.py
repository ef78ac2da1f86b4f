"""A trained model from its checkpoint alone, for use from Python and by ``task=generate``.

    import mmexp
    pipe = mmexp.load("logs/train/runs/X/checkpoints/last.ckpt")
    images = pipe.generate(["a small red circle on a black background"], n=4, guidance=3.0, steps=25)

A checkpoint carries the composed config it was trained with, so nothing else is needed; ``data`` overrides
(a dataset that moved) are applied on top of it.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mmexp.checkpoint import CHECKPOINT_KEY, load_checkpoint
from mmexp.config import build
from mmexp.errors import ConfigError

log = logging.getLogger(__name__)


def rebuild(ckpt_path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[Any, DictConfig, dict]:
    """``(model in eval mode with the checkpoint's weights, the run config, the checkpoint dict)``.

    ``overrides``: dotlist entries merged into the stored config before building (``data.root=...``).
    """
    ckpt_path = os.fspath(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    stored = (ckpt.get(CHECKPOINT_KEY) or {}).get("config")
    if stored is None:
        raise ConfigError(f"{ckpt_path} holds no mmexp config (not written by python -m mmexp task=train)")
    run_cfg = OmegaConf.create(stored)
    if overrides:
        run_cfg = OmegaConf.merge(run_cfg, OmegaConf.from_dotlist([o.lstrip("+~") for o in overrides]))
    model = build(run_cfg.model)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    log.info("loaded %s (step %s) from %s", type(model).__name__, ckpt.get("global_step"), ckpt_path)
    return model, run_cfg, ckpt


def load(ckpt_path: str | os.PathLike, device: str | torch.device | None = None,
         overrides: Sequence[str] = ()) -> Pipeline:
    """The model of ``ckpt_path`` wrapped for inference (see :class:`Pipeline`), on ``device`` (default: the GPU
    when there is one)."""
    model, run_cfg, _ = rebuild(ckpt_path, overrides)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Pipeline(model.to(device), run_cfg, os.fspath(ckpt_path))


class Pipeline:
    """A trained mmexp model for inference. ``model`` is the LightningModule, ``config`` its run config.

    :meth:`generate` works for every generative model: conditional ones take prompts and/or labels, the
    others draw ``n`` unconditional samples. Image ``j`` of every prompt is drawn with seed ``seed + j``, so
    one image can be drawn again alone (``seed=seed + j, n=1``).
    """

    def __init__(self, model: Any, config: DictConfig, source: str = "") -> None:
        self.model, self.config, self.source = model, config, source

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def conditional(self) -> bool:
        return hasattr(self.model, "generate_conditional") and hasattr(self.model, "conditioner")

    def sampler_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The sampler settings of ``options`` the model's ``sample`` takes (None values dropped); the others are
        reported once and ignored (e.g. ``top_k`` for a diffusion model)."""
        options = {k: v for k, v in options.items() if v is not None}
        sample = getattr(self.model, "sample", None)
        if sample is None:
            accepted: set[str] = set()
        else:
            params = inspect.signature(sample).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                return options
            accepted = set(params)
        ignored = sorted(set(options) - accepted)
        if ignored:
            log.warning("%s ignores sampler settings %s", type(self.model).__name__, ignored)
        return {k: v for k, v in options.items() if k in accepted}

    @torch.no_grad()
    def generate(self, prompts: str | Sequence[str] | None = None, n: int = 1,
                 labels: int | Sequence[int] | torch.Tensor | None = None, guidance: float | None = None,
                 seed: int = 0, batch_size: int = 64, **sampler: Any) -> torch.Tensor:
        """``n`` images per prompt (and/or label), ``[P * n, C, H, W]`` in [-1, 1], prompt-major: rows
        ``p * n .. p * n + n - 1`` belong to prompt ``p``. Without prompts and labels: ``n`` images (a
        conditional model's unconditional samples). ``guidance`` and ``**sampler`` (``steps``, ``scheduler``,
        ``top_k``, ``top_p``, ``temperature``...) override the model's defaults."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if labels is not None and not torch.is_tensor(labels):
            labels = torch.as_tensor([labels] if isinstance(labels, int) else list(labels), dtype=torch.long)
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if not self.conditional:
            if prompts or labels is not None:
                raise ConfigError(f"{type(self.model).__name__} is not conditional: it takes no prompt or label "
                                  "(give only n)")
            return self._unconditional(n, seed)
        rows = None
        if prompts is not None and labels is not None:
            if len(labels) == 1:
                labels = labels.expand(len(prompts))
            if len(labels) != len(prompts):
                raise ConfigError(f"{len(prompts)} prompts but {len(labels)} labels: give one label, or one each")
        if prompts is not None:
            rows = len(prompts)
        elif labels is not None:
            rows = len(labels)
        kwargs: dict[str, Any] = {}
        if prompts is not None:
            kwargs["caption"] = [p for p in prompts for _ in range(n)]
        if labels is not None:
            kwargs["label"] = labels.repeat_interleave(n)
        if rows is None:
            kwargs["n"] = n
        seeds = [seed + j for _ in range(rows or 1) for j in range(n)]
        return self.model.generate_conditional(**kwargs, seeds=seeds, guidance=guidance, batch_size=batch_size,
                                               **self.sampler_options(sampler))

    def _unconditional(self, n: int, seed: int) -> torch.Tensor:
        model = self.model
        if not hasattr(model, "generate_indexed"):
            raise ConfigError(f"{type(model).__name__} cannot generate")
        out = []
        for j in range(n):  # image j from seed + j, whatever n is
            try:
                out.append(model.generate_indexed(torch.tensor([0]), seed=seed + j))
            except NotImplementedError as why:
                raise ConfigError(f"{type(model).__name__} cannot generate samples: {why}") from None
        return torch.cat(out)
