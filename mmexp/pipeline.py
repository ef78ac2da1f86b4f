"""A trained model from its checkpoint alone, for use from Python and by ``task=generate`` / ``task=restore``.

    import mmexp
    pipe = mmexp.load("logs/train/runs/X/checkpoints/last.ckpt")
    images = pipe.generate(["a small red circle on a black background"], n=4, guidance=3.0, steps=25)
    restored = mmexp.load("sr.ckpt").restore("photo.png")     # [3, 2H, 2W] in [-1, 1] for a x2 model

A checkpoint carries the composed config it was trained with, so nothing else is needed; ``data`` overrides
(a dataset that moved) are applied on top of it.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mmexp.checkpoint import CHECKPOINT_KEY, load_checkpoint
from mmexp.config import build
from mmexp.errors import ConfigError, ShapeMismatchError

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
        conditional model's unconditional samples). ``guidance`` and ``**sampler`` (``steps``, ``kind``,
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

    @torch.no_grad()
    def restore(self, image: Any, hole: Any = None, prompt: str | None = None, tile: int | None = 512,
                tile_overlap: int = 32) -> torch.Tensor:
        """Restore one image of any size with a restoration model (``task=restore`` does the same per file).

        ``image``: a tensor ``[C, H, W]`` or ``[B, C, H, W]`` in [-1, 1], a PIL image or an image file's path
        (for super-resolution, the low-resolution image); for a multi-frame model (video SR) a clip, ``[T, C, H, W]``
        or ``[B, T, C, H, W]`` (its window of frames: the centre frame comes back, or every frame for models that
        restore all; ``task=restore`` restores whole videos); ``hole``: for inpainting models, the mask (tensor
        ``[H, W]``, ``[1, H, W]`` or ``[B, 1, H, W]``, PIL image or path; non-zero = fill), the size of the image;
        ``prompt``: text for text-guided models. Large images are tiled (``tile`` input pixels with
        ``tile_overlap`` pixels of context; see :func:`mmexp.restore.restore_tensor`). Returns the restored image
        in [-1, 1], ``[C, H * scale, W * scale]`` (``[B, ...]`` for a batch), on the CPU.
        """
        from PIL import Image

        from mmexp.restore import image_to_tensor, read_image, read_mask, restore_tensor

        model = self.model
        if not hasattr(model, "restore"):
            raise ConfigError(f"{type(model).__name__} is not a restoration model (it has no restore())")
        channels = int(model.channels)
        if isinstance(image, Image.Image):
            x = image_to_tensor(image, channels)
        elif isinstance(image, (str, os.PathLike)):
            x = read_image(image, channels)
        else:
            x = torch.as_tensor(image, dtype=torch.float32)
        num_frames = getattr(model, "num_frames", 1)
        if num_frames != 1:  # clips
            batched = x.dim() == 5
            x = x if batched else x[None]
            if x.dim() != 5 or x.shape[2] != channels or (num_frames is not None and x.shape[1] != num_frames):
                raise ShapeMismatchError(
                    f"{type(model).__name__} restores clips of {num_frames or 'T'} frames of {channels} channels, "
                    f"[T, C, H, W] or [B, T, C, H, W]; got {tuple(torch.as_tensor(image).shape)}")
            if hole is not None:
                raise ConfigError(f"{type(model).__name__} restores clips without holes")
            caption = [prompt] * x.shape[0] if prompt else None
            y = restore_tensor(model, x.to(self.device), None, caption, tile, tile_overlap).cpu()
            return y if batched else y[0]
        batched = x.dim() == 4
        x = x if batched else x[None]
        if x.dim() != 4 or x.shape[1] != channels:
            raise ConfigError(f"{type(model).__name__} restores {channels}-channel images; got a tensor of shape "
                              f"{tuple(image.shape)}")
        size = tuple(x.shape[-2:])
        if hole is not None:
            if isinstance(hole, (str, os.PathLike)):
                hole = read_mask(hole, size)
            elif isinstance(hole, Image.Image):
                hole = torch.from_numpy(np.asarray(hole.convert("L")) != 0).float()
            hole = torch.as_tensor(hole, dtype=torch.float32)
            while hole.dim() < 4:
                hole = hole[None]
            if tuple(hole.shape[-2:]) != size:
                raise ShapeMismatchError(f"hole mask of size {tuple(hole.shape[-2:])} for an image of size {size}: "
                                         "they must be the same size")
            hole = (hole != 0).float().to(self.device)
        caption = [prompt] * x.shape[0] if prompt else None
        y = restore_tensor(model, x.to(self.device), hole, caption, tile, tile_overlap).cpu()
        return y if batched else y[0]

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
