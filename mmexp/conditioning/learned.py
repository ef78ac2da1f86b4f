"""A text encoder trained with the model: a word vocabulary from the training captions + a small transformer.

The transformer is a pre-norm encoder (Vaswani et al., "Attention Is All You Need", NeurIPS 2017;
pre-norm as in Xiong et al., ICML 2020) with learned positions, the kind of text encoder GLIDE (Nichol et al.
2022) trains jointly with its diffusion model, here small enough for captions of a few dozen words.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from mmexp.conditioning.base import TextEncoder, check_captions
from mmexp.conditioning.condition import Condition
from mmexp.errors import CheckpointError, ConfigError, UnknownWordError

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class Vocabulary:
    """Word-level vocabulary: lower-case words (letters and digits, with inner apostrophes: ``don't``);
    whitespace and punctuation separate words and are dropped.

    Ids: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, then the words by decreasing count (ties alphabetical),
    so building it from the same captions always gives the same ids.

    Args:
        words (Sequence[str]): every token, the three specials first.
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>")
    PAD, BOS, EOS = 0, 1, 2

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if tuple(words[:3]) != self.SPECIALS or len(set(words)) != len(words):
            raise CheckpointError(f"not a vocabulary: it must start with {self.SPECIALS} and hold no repeats, "
                                  f"got {words[:5]}... ({len(words)} entries)")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @classmethod
    def build(cls, captions: Iterable[str]) -> Vocabulary:
        counts = Counter(w for c in captions for w in cls.split(c))
        return cls(list(cls.SPECIALS) + sorted(counts, key=lambda w: (-counts[w], w)))

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, captions: Sequence[str], max_length: int) -> list[list[int]]:
        """``<bos> words <eos>`` ids per caption, words truncated to ``max_length - 2``.

        Raises :class:`UnknownWordError` naming every unknown word of the batch, with close known words.
        """
        split = [self.split(c) for c in captions]
        unknown = sorted({w for words in split for w in words if w not in self.index})
        if unknown:
            known = self.words[3:]
            hints = []
            for w in unknown[:10]:
                close = difflib.get_close_matches(w, known, n=3)
                hints.append(f"{w!r}" + (f" (close: {', '.join(close)})" if close else ""))
            raise UnknownWordError(
                f"text_encoder=learned never saw the word(s) {', '.join(hints)}"
                f"{' and more' if len(unknown) > 10 else ''} in its {len(known)}-word training vocabulary "
                f"(e.g. {', '.join(known[:12])}); rephrase the prompt with known words, or use a pretrained "
                "encoder (text_encoder=minilm|use|clip)")
        body = max_length - 2
        return [[self.BOS] + [self.index[w] for w in words[:body]] + [self.EOS] for words in split]


class LearnedTextEncoder(TextEncoder):
    """Text encoder trained with the model (``text_encoder=learned``).

    Captions become ``<bos> words <eos>`` ids (:class:`Vocabulary`, built from the training captions by
    :meth:`fit_vocabulary`), then token embedding + learned position embedding, ``depth`` pre-norm
    transformer layers attending only to real tokens, and a final LayerNorm. ``tokens`` are the final states
    (zeros at padding), ``pooled`` their mean over real tokens.

    The vocabulary is module state (``_extra_state``: a list of strings, loadable with
    ``torch.load(weights_only=True)``), so a checkpoint alone encodes prompts. The token embedding is
    created with the vocabulary, by :meth:`fit_vocabulary` or when a checkpoint's state is loaded.

    Args:
        dim (int): token and pooled size. Default: 128.
        depth (int): transformer layers. Default: 2.
        heads (int): attention heads (``dim`` must be divisible by it). Default: 4.
        max_length (int): most token positions, ``<bos>`` and ``<eos>`` included; longer captions keep
            their first ``max_length - 2`` words. Default: 64.
        mlp_ratio (int): hidden size of the feed-forward layers, in multiples of ``dim``. Default: 4.
        dropout (float): dropout in the transformer layers. Default: 0.0.
    """

    name = "learned"
    frozen = False

    def __init__(self, dim: int = 128, depth: int = 2, heads: int = 4, max_length: int = 64,
                 mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__(dim, max_length)
        if max_length < 3:
            raise ConfigError(f"LearnedTextEncoder: max_length={max_length} leaves no room for a word "
                              "besides <bos> and <eos>; use >= 3")
        if depth < 0 or heads < 1 or dim % heads:
            raise ConfigError(f"LearnedTextEncoder: dim={dim} must be divisible by heads={heads}, depth={depth} >= 0")
        self.vocabulary: Vocabulary | None = None
        # created with the vocabulary (its size is the vocabulary's)
        self.register_module("token_embedding", None)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * mlp_ratio, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False) if depth else nn.Identity()
        self.norm = nn.LayerNorm(dim)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocabulary_built(self) -> bool:
        return self.vocabulary is not None

    def _set_vocabulary(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        if self.token_embedding is None or self.token_embedding.num_embeddings != len(vocabulary):
            self.token_embedding = nn.Embedding(len(vocabulary), self.dim, padding_idx=Vocabulary.PAD,
                                                device=self.position.device)
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            with torch.no_grad():
                self.token_embedding.weight[Vocabulary.PAD].zero_()

    def fit_vocabulary(self, captions: Sequence[str]) -> None:
        """Build the vocabulary from the training captions (and the token embedding with it).

        Raises :class:`ConfigError` when it is already built: the trained embedding rows belong to it.
        """
        if self.vocabulary is not None:
            raise ConfigError(f"text_encoder=learned already has a vocabulary ({len(self.vocabulary)} entries); "
                              "it is fixed once built, since the trained embeddings belong to it")
        self._set_vocabulary(Vocabulary.build(check_captions(captions, "LearnedTextEncoder.fit_vocabulary")))

    def get_extra_state(self) -> dict[str, Any]:
        return {"vocabulary": None if self.vocabulary is None else list(self.vocabulary.words)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # load_state_dict reads a module's extra state before its children, so the token embedding
        # created here has the checkpoint's size when its weights are loaded next
        words = state.get("vocabulary")
        if words is not None:
            self._set_vocabulary(Vocabulary(words))

    # ------------------------------------------------------------------ encode
    def encode(self, captions: Sequence[str]) -> Condition:
        captions = check_captions(captions, "text_encoder=learned")
        if self.vocabulary is None:
            raise ConfigError("text_encoder=learned has no vocabulary yet: the model builds it from the training "
                              "captions (Conditioner.prepare / fit_vocabulary) or loads it from a checkpoint")
        ids = self.vocabulary.encode(captions, self.max_length)
        length = max(len(i) for i in ids)
        device = self.position.device
        index = torch.full((len(ids), length), Vocabulary.PAD, dtype=torch.long)
        for row, i in enumerate(ids):
            index[row, : len(i)] = torch.tensor(i)
        index = index.to(device)
        mask = index != Vocabulary.PAD
        x = self.token_embedding(index) + self.position[:length]
        if isinstance(self.transformer, nn.TransformerEncoder):
            x = self.transformer(x, src_key_padding_mask=~mask)
        x = self.norm(x) * mask[..., None]
        pooled = x.sum(1) / mask.sum(1, keepdim=True)
        return Condition(pooled, x, mask)
