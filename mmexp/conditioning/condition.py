"""``Condition``: what every condition encoder and the :class:`~mmexp.conditioning.Conditioner` return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmexp.errors import ConfigError


@dataclass
class Condition:
    """A batch of conditions: one pooled vector and a token sequence per sample.

    Always all three fields, so a model that attends over tokens (cross-attention, a prefix of a
    transformer prior) and one that takes a single vector (FiLM, AdaGN, a projection discriminator)
    read the same object. An encoder without token states (USE) gives its pooled vector as a
    one-token sequence.

    Attributes:
        pooled (Tensor): ``[B, D]`` float, one vector per sample.
        tokens (Tensor): ``[B, L, D]`` float; positions where ``mask`` is False are zeros.
        mask (Tensor): ``[B, L]`` bool, True = a real token. Real tokens come first (a prefix),
            and every row has at least one.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.pooled.dim() != 2 or self.tokens.dim() != 3 or self.mask.dim() != 2:
            raise ConfigError(
                "Condition: expected pooled [B, D], tokens [B, L, D], mask [B, L]; got "
                f"{tuple(self.pooled.shape)}, {tuple(self.tokens.shape)}, {tuple(self.mask.shape)}")
        b, length, d = self.tokens.shape
        if self.pooled.shape != (b, d) or self.mask.shape != (b, length) or self.mask.dtype != torch.bool:
            raise ConfigError(
                f"Condition: pooled {tuple(self.pooled.shape)}, tokens {tuple(self.tokens.shape)} and mask "
                f"{tuple(self.mask.shape)} ({self.mask.dtype}) disagree; want [B, D], [B, L, D], bool [B, L]")

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self.pooled.shape[0]

    @property
    def dim(self) -> int:
        return self.pooled.shape[1]

    @property
    def device(self) -> torch.device:
        return self.pooled.device

    # ------------------------------------------------------------------ tensor-like helpers
    def to(self, *args, **kwargs) -> Condition:
        """``Tensor.to`` on the float fields (a dtype changes ``pooled``/``tokens``, never ``mask``)."""
        pooled, tokens = self.pooled.to(*args, **kwargs), self.tokens.to(*args, **kwargs)
        return Condition(pooled, tokens, self.mask.to(pooled.device))

    def detach(self) -> Condition:
        return Condition(self.pooled.detach(), self.tokens.detach(), self.mask)

    def __getitem__(self, index) -> Condition:
        """Select samples (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Condition(self.pooled[index], self.tokens[index], self.mask[index])

    def repeat(self, n: int) -> Condition:
        """The batch ``n`` times over, ``[a, b] -> [a, b, a, b]`` (as ``Tensor.repeat``)."""
        return Condition(self.pooled.repeat(n, 1), self.tokens.repeat(n, 1, 1), self.mask.repeat(n, 1))

    def repeat_interleave(self, n: int) -> Condition:
        """Each sample ``n`` times, ``[a, b] -> [a, a, b, b]`` (several images per prompt)."""
        return Condition(self.pooled.repeat_interleave(n, 0), self.tokens.repeat_interleave(n, 0),
                         self.mask.repeat_interleave(n, 0))

    @staticmethod
    def cat(conditions: Sequence[Condition]) -> Condition:
        """Concatenate along the batch, padding token sequences to the longest (e.g. ``cat([cond, null])``
        for one classifier-free-guidance forward pass)."""
        if not conditions:
            raise ConfigError("Condition.cat: nothing to concatenate")
        dims = {c.dim for c in conditions}
        if len(dims) != 1:
            raise ConfigError(f"Condition.cat: conditions of different sizes {sorted(dims)}")
        length = max(c.tokens.shape[1] for c in conditions)
        tokens = [F.pad(c.tokens, (0, 0, 0, length - c.tokens.shape[1])) for c in conditions]
        masks = [F.pad(c.mask, (0, length - c.mask.shape[1]), value=False) for c in conditions]
        return Condition(torch.cat([c.pooled for c in conditions]), torch.cat(tokens), torch.cat(masks))


def pad_tokens(sequences: Sequence[torch.Tensor], dim: int, device=None, dtype=torch.float32
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[L_i, D]`` tensors -> zero-padded ``tokens [B, max L_i, D]`` and ``mask [B, max L_i]``."""
    length = max(1, max((s.shape[0] for s in sequences), default=1))
    tokens = torch.zeros(len(sequences), length, dim, device=device, dtype=dtype)
    mask = torch.zeros(len(sequences), length, dtype=torch.bool, device=device)
    for i, s in enumerate(sequences):
        tokens[i, : s.shape[0]] = s.to(device=device, dtype=dtype)
        mask[i, : s.shape[0]] = True
    return tokens, mask
