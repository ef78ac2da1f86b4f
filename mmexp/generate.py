"""``task=generate``: images from prompts and/or labels, written as a dataset.

``python -m mmexp task=generate ckpt_path=CKPT prompt="a small red circle on a black background" n=16``
writes ``<run dir>/generated/`` (one PNG per image and a Hugging Face ``captions.jsonl`` with ``file_name`` and
``text``), so the folder is at once a ``data=folder`` dataset (``data.dataset.captions=captions.jsonl``) and an
input of ``python -m mmexp.score``, and ``<run dir>/grid.png`` beside it: one row per prompt, the prompt written
beside its images. Nothing is written unless every image was generated.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from mmexp.errors import ConfigError
from mmexp.grids import grid, save_grid, to_unit

log = logging.getLogger("mmexp")


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt a line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise ConfigError(f"prompts={path}: no such file (one prompt a line)")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts={path} holds no prompt")
    return prompts


def _labels(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    values = OmegaConf.to_container(value) if not isinstance(value, (list, tuple)) else value
    return [int(v) for v in values]


def generate(cfg: DictConfig) -> dict[str, float]:
    """Write the images of ``cfg.prompt``/``cfg.prompts``/``cfg.label`` (``cfg.n`` each) from ``cfg.ckpt_path``."""
    from mmexp.pipeline import load

    if not cfg.get("ckpt_path"):
        raise ConfigError("task=generate needs ckpt_path=PATH (a checkpoint written by task=train)")
    if cfg.get("prompt") and cfg.get("prompts"):
        raise ConfigError("give prompt=... or prompts=FILE, not both")
    prompts = read_prompts(cfg.prompts) if cfg.get("prompts") else ([str(cfg.prompt)] if cfg.get("prompt") else None)
    labels = _labels(cfg.get("label"))
    n = int(cfg.n)
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu"
    pipe = load(cfg.ckpt_path, device=device)
    sampler = {k: v for k, v in (cfg.get("sampler") or {}).items() if v is not None}
    seed = int(cfg.seed)
    images = pipe.generate(prompts, n=n, labels=labels, guidance=cfg.get("guidance"), seed=seed, **sampler)

    rows = len(prompts) if prompts else (len(labels) if labels else 1)
    texts = []
    for r in range(rows):
        parts = []
        if prompts:
            parts.append(prompts[r])
        if labels:
            parts.append(f"label {labels[r] if len(labels) > 1 else labels[0]}")
        texts.append(" | ".join(parts) if parts else "unconditional")

    out_dir = Path(cfg.paths.output_dir)
    final = out_dir / "generated"
    tmp = out_dir / ".generated.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    records = []
    for i, image in enumerate(to_unit(images)):
        r, j = divmod(i, n)
        name = f"p{r:03d}_seed{seed + j:06d}.png"
        save_image(image, tmp / name)
        record: dict[str, Any] = {"file_name": name, "text": prompts[r] if prompts else ""}
        if labels:
            record["label"] = labels[r] if len(labels) > 1 else labels[0]
        records.append(record)
    with open(tmp / "captions.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    picture = save_grid(grid(images, n, texts if (prompts or labels) else None), out_dir / "grid.png")
    provenance = {"checkpoint": os.path.abspath(cfg.ckpt_path), "n": n, "seed": seed, "guidance": cfg.get("guidance"),
                  "sampler": sampler, "prompts": prompts, "labels": labels}
    (out_dir / "generate.json").write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("wrote %d images and captions.jsonl to %s, and the grid %s", len(images), final, picture)
    return {}
