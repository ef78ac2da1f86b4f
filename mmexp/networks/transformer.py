"""A GPT-style decoder-only transformer over a VQ-VAE's code indices (the second stage of a two-stage generator).

Esser, Rombach & Ommer, "Taming Transformers for High-Resolution Image Synthesis", CVPR 2021 (a GPT over the
raster-ordered code grid of a first-stage model, conditioned by a prefix of condition tokens, unconditional with a
start token alone); Razavi, van den Oord & Vinyals, "Generating Diverse High-Fidelity Images with VQ-VAE-2",
NeurIPS 2019 (an autoregressive prior over VQ-VAE codes); the blocks are GPT-2's pre-norm blocks (Radford et al.
2019). Conditioning by cross-attention to the condition's token states, the alternative to the prefix, is as in
the decoder of Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.errors import ConfigError, ShapeMismatchError

#: how the condition reaches the transformer
CONDITIONINGS = ("prefix", "cross_attention")


class Attention(nn.Module):
    """Multi-head attention with an optional key/value cache (for sampling one position at a time).

    Args:
        dim (int): width of queries and outputs.
        heads (int): attention heads; must divide ``dim``.
        kv_dim (int | None): width of the keys' source when it is not the queries' (cross-attention). Default:
            None (= ``dim``).
        dropout (float): dropout of the attention weights and the output. Default: 0.0.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"Attention: dim={dim} is not divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.out_dropout = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, n, dim]`` attends to keys/values ``[B, heads, m, dim/heads]``; ``mask`` bool, broadcastable
        to ``[B, heads, n, m]``, True = may attend."""
        q = self.split(self.q(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_dropout(self.out(y.transpose(1, 2).flatten(2)))


class Block(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the condition (optional), MLP.

    Args:
        dim (int): width.
        heads (int): attention heads.
        mlp_ratio (float): hidden width of the MLP over ``dim``. Default: 4.0.
        cross_attention (bool): add a cross-attention layer to the condition's tokens. Default: False.
        dropout (float): dropout. Default: 0.0.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, cross_attention: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, dropout=dropout)
        self.cross = Attention(dim, heads, dropout=dropout) if cross_attention else None
        self.norm_cross = nn.LayerNorm(dim) if cross_attention else None
        hidden = int(dim * mlp_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor, cache: dict | None = None,
                memory: tuple[torch.Tensor, torch.Tensor] | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``cache`` (sampling): ``{"k", "v"}`` of the positions before ``x``'s, extended in place."""
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        x = x + self.attn(h, k, v, self_mask)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), *memory, memory_mask)
        return x + self.mlp(self.norm2(x))


class CodeTransformer(nn.Module):
    """GPT over the ``h x w`` code grid of a VQ-VAE in raster order, conditioned on a token sequence.

    The input sequence is ``[condition tokens (prefix only)] <start> c_0 ... c_{N-2}``; the output at ``<start>``
    and at each ``c_i`` is the distribution of the next code, so one forward pass gives the logits of all
    ``N = h * w`` codes (teacher forcing). Image positions have learned embeddings (one per grid cell); prefix
    condition tokens have their own learned positions.

    Args:
        num_codes (int): codebook size K of the first stage (the vocabulary of image tokens).
        grid_size (int | Sequence[int]): ``(h, w)`` of the code grid (an int: square).
        cond_dim (int): width of the condition's tokens (the conditioner's ``dim``).
        dim (int): width of the transformer. Default: 256.
        depth (int): number of blocks. Default: 4.
        heads (int): attention heads. Default: 4.
        mlp_ratio (float): MLP hidden width over ``dim``. Default: 4.0.
        conditioning (str): ``"prefix"``: the condition's tokens, projected to ``dim``, come first in the
            sequence and every code attends to them (taming-transformers' ``cond_transformer``);
            ``"cross_attention"``: every block cross-attends to them. Default: ``"prefix"``.
        max_cond_length (int): the longest condition (in tokens) a prefix can hold (its learned positions).
            Default: 80.
        dropout (float): dropout of attention, residual branches and embeddings. Default: 0.0.

    ``forward(codes, cond_tokens, cond_mask) -> logits [B, N, K]``; :meth:`start` and :meth:`step` sample with
    a key/value cache, one position at a time.
    """

    def __init__(self, num_codes: int, grid_size: int | Sequence[int], cond_dim: int, dim: int = 256,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, conditioning: str = "prefix",
                 max_cond_length: int = 80, dropout: float = 0.0) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ConfigError(f"CodeTransformer: conditioning={conditioning!r}; choose one of {CONDITIONINGS}")
        h, w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(int(s) for s in grid_size)
        self.num_codes, self.grid_size, self.length = int(num_codes), (h, w), h * w
        self.conditioning, self.max_cond_length = conditioning, int(max_cond_length)
        self.code_embedding = nn.Embedding(num_codes, dim)
        self.start_token = nn.Parameter(torch.zeros(dim))
        self.positions = nn.Parameter(torch.zeros(self.length, dim))
        self.cond_proj = nn.Linear(cond_dim, dim)
        if conditioning == "prefix":
            self.cond_positions = nn.Parameter(torch.zeros(self.max_cond_length, dim))
        self.dropout = nn.Dropout(dropout)
        cross = conditioning == "cross_attention"
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, cross, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_codes, bias=False)
        self.apply(self._init)
        for p in (self.start_token, self.positions, *([self.cond_positions] if not cross else [])):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # GPT-2's initialisation
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ pieces
    def _condition(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.shape[1] > self.max_cond_length and self.conditioning == "prefix":
            raise ShapeMismatchError(
                f"CodeTransformer: the condition has {tokens.shape[1]} tokens but the prefix holds at most "
                f"max_cond_length={self.max_cond_length}; raise model.transformer.max_cond_length or shorten "
                "the captions (text_encoder.max_length)")
        c = self.cond_proj(tokens)
        if self.conditioning == "prefix":
            c = c + self.cond_positions[: c.shape[1]]
        return c, mask

    def _self_mask(self, cond_mask: torch.Tensor | None, queries: int, offset: int, total: int) -> torch.Tensor:
        """``[B or 1, 1, queries, total]`` bool: query ``i`` (absolute position ``offset + i``) may see key ``j``
        when ``j <= offset + i`` and ``j`` is not a padded condition token."""
        device = self.positions.device
        q = torch.arange(offset, offset + queries, device=device)[:, None]
        allowed = torch.arange(total, device=device)[None] <= q
        if cond_mask is None:
            return allowed[None, None]
        keys = F.pad(cond_mask, (0, total - cond_mask.shape[1]), value=True)
        return (allowed[None] & keys[:, None])[:, None]

    def _memory(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every block's cross-attention keys and values of the condition (computed once per sampling)."""
        return [block.cross.keys_values(cond) for block in self.blocks]

    def _run(self, x: torch.Tensor, self_mask: torch.Tensor, caches: list[dict] | None,
             memory: list[tuple[torch.Tensor, torch.Tensor]] | None, memory_mask: torch.Tensor | None
             ) -> torch.Tensor:
        mem_mask = None if memory_mask is None else memory_mask[:, None, None]
        for i, block in enumerate(self.blocks):
            x = block(x, self_mask, None if caches is None else caches[i], None if memory is None else memory[i],
                      mem_mask)
        return self.head(self.norm(x))

    # ------------------------------------------------------------------ training
    def forward(self, codes: torch.Tensor, cond_tokens: torch.Tensor, cond_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, N, K]`` of every code given the codes before it (teacher forcing).

        Args:
            codes (Tensor): int64 ``[B, N]`` code indices in raster order (``[B, h, w]`` is flattened).
            cond_tokens (Tensor): ``[B, L, cond_dim]`` condition tokens (a :class:`~mmexp.conditioning.Condition`'s
                ``tokens``).
            cond_mask (Tensor): bool ``[B, L]``, True = a real token.
        """
        codes = codes.flatten(1)
        b, n = codes.shape
        if n != self.length:
            raise ShapeMismatchError(f"CodeTransformer: got {n} codes per image, built for a "
                                     f"{self.grid_size[0]}x{self.grid_size[1]} grid ({self.length})")
        x = torch.cat([self.start_token.expand(b, 1, -1), self.code_embedding(codes[:, :-1])], 1) + self.positions
        cond, mask = self._condition(cond_tokens, cond_mask)
        if self.conditioning == "prefix":
            prefix = cond.shape[1]
            x = torch.cat([cond, x], 1)
            logits = self._run(self.dropout(x), self._self_mask(mask, prefix + n, 0, prefix + n), None, None, None)
            return logits[:, prefix:]
        return self._run(self.dropout(x), self._self_mask(None, n, 0, n), None, self._memory(cond), mask)

    # ------------------------------------------------------------------ sampling with a cache
    def start(self, cond_tokens: torch.Tensor, cond_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Begin sampling: the logits ``[B, K]`` of the first code, and the state :meth:`step` continues."""
        cond, mask = self._condition(cond_tokens, cond_mask)
        b = cond.shape[0]
        state = {"caches": [{} for _ in self.blocks], "pos": 0, "memory": None, "memory_mask": None,
                 "cond_mask": None, "offset": 0}
        x = self.start_token.expand(b, 1, -1) + self.positions[:1]
        if self.conditioning == "prefix":
            state["cond_mask"], state["offset"] = mask, cond.shape[1]
            x = torch.cat([cond, x], 1)
            total = x.shape[1]
            logits = self._run(x, self._self_mask(mask, total, 0, total), state["caches"], None, None)
        else:
            state["memory"], state["memory_mask"] = self._memory(cond), mask
            logits = self._run(x, self._self_mask(None, 1, 0, 1), state["caches"], state["memory"], mask)
        return logits[:, -1], state

    def step(self, codes: torch.Tensor, state: dict) -> torch.Tensor:
        """Feed the code just drawn (int64 ``[B]``) and get the logits ``[B, K]`` of the next one."""
        state["pos"] += 1
        pos, offset = state["pos"], state["offset"]
        if pos >= self.length:
            raise ConfigError(f"CodeTransformer.step: all {self.length} codes are drawn already")
        x = self.code_embedding(codes)[:, None] + self.positions[pos]
        total = offset + pos + 1
        mask = self._self_mask(state["cond_mask"], 1, total - 1, total)
        return self._run(x, mask, state["caches"], state["memory"], state["memory_mask"])[:, -1]

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, grid_size={self.grid_size}, conditioning={self.conditioning!r}")
