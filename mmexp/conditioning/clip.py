"""CLIP's text transformer, frozen (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021), run by ``open_clip`` (Cherti et al., "Reproducible scaling laws for contrastive
language-image learning", CVPR 2023), as the text encoder of Stable Diffusion v1/v2 (Rombach et al., CVPR 2022).

No CLIP weights can be obtained offline, so the weights must already be on disk; otherwise constructing the
encoder raises one :class:`~mmexp.errors.WeightsNotFoundError` that says where to put them. ``open_clip_torch``
bundles the tokenizer's vocabulary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmexp.conditioning.base import FrozenTextEncoder, require
from mmexp.errors import ConfigError, WeightsNotFoundError

#: the file names open_clip stores full CLIP weights under on the Hugging Face hub
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_CONFIG_FILE = "open_clip_config.json"


class CLIPTextEncoder(FrozenTextEncoder):
    """CLIP's text tower (``text_encoder=clip``), frozen.

    ``tokens`` are the final-LayerNorm states of the causal text transformer up to and including the
    end-of-text token (what Stable Diffusion cross-attends to); ``pooled`` is CLIP's text embedding: the
    end-of-text state through ``text_projection``, L2-normalised (``encode_text(normalize=True)``). Because
    attention is causal, cutting the padding after the longest caption of a batch changes nothing, so
    sequences are only as long as the batch needs.

    Where the weights are looked for, in order:

    1. ``weights_path``: a weights file for ``model_name`` (``.safetensors``/``.bin``/``.pt``), or a
       directory in open_clip's ``local-dir`` layout (``open_clip_config.json`` + weights), which then
       defines the model and ``model_name``/``pretrained`` are ignored;
    2. the Hugging Face hub cache (``$HF_HUB_CACHE``), where open_clip puts ``pretrained`` tags it
       downloaded, and open_clip's URL cache (``~/.cache/clip``).

    Args:
        model_name (str): an open_clip architecture with CLIP's own text transformer. Default: ``ViT-B-32``.
        pretrained (str): open_clip's tag of the weights. Default: ``laion2b_s34b_b79k``.
        weights_path (str | None): see above (the config's default is
            ``${paths.cache_dir}/clip/<model_name>-<pretrained>.safetensors``). Default: None.
        cache_dir (str | None): see :class:`FrozenTextEncoder`. Default: None.
        cache_dtype (str): see :class:`FrozenTextEncoder`. Default: ``float16``.
        batch_size (int): see :class:`FrozenTextEncoder`. Default: 256.
    """

    name = "clip"
    package = "open_clip_torch"

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k",
                 weights_path: str | os.PathLike | None = None, cache_dir: str | None = None,
                 cache_dtype: str = "float16", batch_size: int = 256) -> None:
        open_clip = require("open_clip", self.package, self.name)
        self.model_name, self.pretrained = model_name, pretrained
        self.weights_file, self.local_dir = self._find_weights(open_clip, weights_path)
        if self.local_dir is not None:
            config = json.loads((Path(self.local_dir) / _CONFIG_FILE).read_text())["model_cfg"]
        else:
            config = open_clip.get_model_config(model_name)
            if config is None:
                raise ConfigError(f"text_encoder=clip: open_clip has no model {model_name!r}; "
                                  f"choose one of {open_clip.list_models()}")
        text = config["text_cfg"]
        if text.get("hf_model_name") or text.get("pool_type", "argmax") != "argmax" or "width" not in text:
            raise ConfigError(f"text_encoder=clip: {model_name!r} does not use CLIP's own text transformer "
                              "(argmax pooling over a causal transformer); choose e.g. ViT-B-32 or ViT-L-14")
        if text["width"] != config["embed_dim"]:
            raise ConfigError(f"text_encoder=clip: {model_name!r} has text width {text['width']} but embedding size "
                              f"{config['embed_dim']}; tokens and pooled vector must have one size")
        super().__init__(int(config["embed_dim"]), int(text.get("context_length", 77)), cache_dir, cache_dtype,
                         batch_size)

    # ------------------------------------------------------------------ finding the weights
    def _find_weights(self, open_clip: Any, weights_path: str | os.PathLike | None) -> tuple[str, str | None]:
        """``(weights file, local-dir or None)``, or :class:`WeightsNotFoundError` saying where to put them."""
        if weights_path is not None:
            path = Path(os.path.expanduser(os.fspath(weights_path)))
            if path.is_file():
                return str(path), None
            if path.is_dir() and (path / _CONFIG_FILE).is_file():
                found = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
                if found:
                    return str(found[0]), str(path)
        cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained) if self.pretrained else {}
        hub = cfg.get("hf_hub", "")
        source = ""
        if hub:
            repo, filename = os.path.split(hub)  # open_clip's convention: "org/repo/" names no file
            from huggingface_hub import try_to_load_from_cache

            for name in ([filename] if filename else _HUB_FILES):
                cached = try_to_load_from_cache(repo, name)
                if isinstance(cached, str) and os.path.isfile(cached):
                    return cached, None
            source = f"https://huggingface.co/{repo} ({filename or _HUB_FILES[0]})"
        elif cfg.get("url"):
            cached = Path.home() / ".cache" / "clip" / os.path.basename(cfg["url"])
            if cached.is_file():
                return str(cached), None
            source = cfg["url"]
        from huggingface_hub.constants import HF_HUB_CACHE

        target = (f"save it as {os.fspath(weights_path)}" if weights_path is not None
                  else "pass its path as text_encoder.weights_path=FILE")
        raise WeightsNotFoundError(
            f"text_encoder=clip: no weights for {self.model_name} ({self.pretrained}) on this machine, and none can "
            f"be downloaded here. Get the weights file{' from ' + source if source else ''} on a machine with "
            f"internet access and {target}. Also accepted: text_encoder.weights_path=DIR, a folder with "
            f"{_CONFIG_FILE} and the weights (open_clip's local-dir layout), or open_clip's own download copied "
            f"into the Hugging Face cache {HF_HUB_CACHE}. Without CLIP weights, use text_encoder=minilm, use or "
            "learned.")

    # ------------------------------------------------------------------ identity
    def describe(self) -> dict[str, Any]:
        model = f"local-dir:{os.path.basename(self.local_dir)}" if self.local_dir else self.model_name
        return {**super().describe(), "model": model, "pretrained": None if self.local_dir else self.pretrained}

    def weight_files(self) -> list[str]:
        return [self.weights_file] + ([os.path.join(self.local_dir, _CONFIG_FILE)] if self.local_dir else [])

    @property
    def cache_name(self) -> str:
        name = f"clip-{os.path.basename(self.local_dir)}" if self.local_dir else f"clip-{self.model_name}-{self.pretrained}"
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)

    # ------------------------------------------------------------------ the network
    def _load(self) -> Any:
        import open_clip

        if self.local_dir:
            name = f"local-dir:{self.local_dir}"
            model = open_clip.create_model(name, device="cpu")
        else:
            name = self.model_name
            model = open_clip.create_model(name, pretrained=self.weights_file, device="cpu")
        if not hasattr(model, "token_embedding"):
            raise ConfigError(f"text_encoder=clip: {name!r} has no CLIP text transformer (token_embedding)")
        model.visual = None  # only the text tower is used: free the image tower
        return open_clip.get_tokenizer(name), model.eval().requires_grad_(False)

    def _forward(self, network: Any, captions: list[str], device: torch.device):
        tokenizer, model = network
        model.to(device)
        text = tokenizer(captions).to(device)
        end = text.argmax(dim=-1)  # end-of-text has the largest id, as CLIP's own pooling assumes
        length = int(end.max()) + 1
        text = text[:, :length]
        x = model.token_embedding(text) + model.positional_embedding[:length]
        mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        x = model.ln_final(model.transformer(x, attn_mask=mask)).float()
        rows = torch.arange(len(captions), device=device)
        pooled = x[rows, end]
        projection = model.text_projection
        pooled = projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
        real = torch.arange(length, device=device)[None] <= end[:, None]
        return F.normalize(pooled, dim=-1), x * real[..., None], real
