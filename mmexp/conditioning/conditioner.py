"""What a conditional model owns: captions and/or class labels -> one :class:`Condition`, with condition dropout
for classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmexp.batch import batch_size as batch_length
from mmexp.conditioning.base import TextEncoder, check_captions
from mmexp.conditioning.condition import Condition
from mmexp.errors import ConfigError

log = logging.getLogger(__name__)

class LabelEncoder(nn.Module):
    """Class label -> vector: an embedding table (the class embedding of class-conditional GANs and diffusion
    models, e.g. Miyato & Koyama's projection discriminator, ICLR 2018, and Dhariwal & Nichol's ADM, 2021).

    Args:
        num_classes (int): number of classes; labels are ``0 .. num_classes - 1``.
        dim (int): size of the vector.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ConfigError(f"LabelEncoder: num_classes={num_classes} and dim={dim} must be >= 1")
        self.num_classes = int(num_classes)
        self.embedding = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        """``label`` int64 ``[B]`` -> ``[B, dim]``."""
        if label.dim() != 1 or label.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"LabelEncoder: labels must be an integer tensor [B], got {label.dtype} "
                              f"{tuple(label.shape)}")
        # checked where it costs no device sync (labels given at sampling time are usually on the CPU)
        if label.device.type == "cpu" and label.numel() and (label.min() < 0 or label.max() >= self.num_classes):
            bad = label[(label < 0) | (label >= self.num_classes)].unique().tolist()
            raise ConfigError(f"LabelEncoder: labels {bad} are outside 0..{self.num_classes - 1}")
        return self.embedding(label.to(self.embedding.weight.device))


class Conditioner(nn.Module):
    """Captions and/or labels -> :class:`Condition` of size ``dim``, with learned null conditions.

    * text: the encoder's token states and pooled vector, each through a linear layer to ``dim``;
    * label: a :class:`LabelEncoder` vector, appended as one token after the caption's real tokens and added to
      the pooled vector (``pooled = text pooled + label``);
    * a dropped or missing part is replaced by a learned null embedding: text by one null token (and a null
      pooled vector), a label by a null label vector. ``null(B)`` replaces everything: the unconditional input of
      classifier-free guidance, ``eps_uncond``. Dropping at training time (:meth:`sample_drop`) teaches the model
      that input; at sampling time ``caption=None`` or ``label=None`` means "that part is unknown".

    The tokens' ``mask`` stays a prefix: text ``[B, L]`` (a dropped caption: the null token alone), then the label
    token right after each caption's last real token, ``L + 1`` positions in all.

    Args:
        text_encoder (TextEncoder | None): see ``conf/text_encoder/``; None: no text. Default: None.
        num_classes (int | None): number of classes; None: no labels. Default: None. With neither text nor
            labels the conditioner is unconditional: every condition is the null one (one learned token), so an
            unconditional model is the same class with the same interface.
        dim (int): size of the condition's pooled vector and tokens. Default: 256.
        p_drop_text (float): probability of dropping a sample's caption in training. Default: 0.1.
        p_drop_label (float): probability of dropping a sample's label in training (independently of the
            caption). Default: 0.1.
        p_drop_all (float): probability of dropping everything at once, on top of the independent drops; with
            both text and labels, independent drops alone train the fully unconditional input only
            ``p_drop_text * p_drop_label`` of the time. Default: 0.0.
        p_drop_word (float): probability of replacing each of a kept caption's token states by a learned "masked
            word" token in training (word dropout, as BERT's ``[MASK]`` on the condition side). A model that must
            draw from a caption missing its colour or its shape learns to read each word for what it says alone,
            which is what a colour-shape pair it never saw needs; with ``text_encoder=learned encoder.depth=0``
            the states are the words themselves. It draws ``B x max_length`` extra uniforms only when > 0, so
            runs without it keep their random streams. Default: 0.0.
    """

    def __init__(self, text_encoder: TextEncoder | None = None, num_classes: int | None = None, dim: int = 256,
                 p_drop_text: float = 0.1, p_drop_label: float = 0.1, p_drop_all: float = 0.0,
                 p_drop_word: float = 0.0) -> None:
        super().__init__()
        for name, p in (("p_drop_text", p_drop_text), ("p_drop_label", p_drop_label), ("p_drop_all", p_drop_all),
                        ("p_drop_word", p_drop_word)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"Conditioner: {name}={p} is not a probability in [0, 1]")
        if text_encoder is not None and not isinstance(text_encoder, TextEncoder):
            raise ConfigError(f"Conditioner: text_encoder must be a TextEncoder, got {type(text_encoder).__name__}")
        self.dim = int(dim)
        self.p_drop_text, self.p_drop_label, self.p_drop_all = float(p_drop_text), float(p_drop_label), float(p_drop_all)
        self.p_drop_word = float(p_drop_word)
        if self.p_drop_word and text_encoder is None:
            raise ConfigError(f"Conditioner: p_drop_word={p_drop_word} needs a text encoder (text_encoder=none)")
        self.text_encoder = text_encoder
        if text_encoder is not None:
            self.text_tokens = nn.Linear(text_encoder.dim, dim)
            self.text_pooled = nn.Linear(text_encoder.dim, dim)
            self.null_text_token = nn.Parameter(torch.randn(dim) * 0.02)
            self.null_text_pooled = nn.Parameter(torch.randn(dim) * 0.02)
            if self.p_drop_word:
                self.masked_word_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.label_encoder = LabelEncoder(num_classes, dim) if num_classes else None
        if self.label_encoder is not None:
            self.null_label = nn.Parameter(torch.randn(dim) * 0.02)
        if text_encoder is None and self.label_encoder is None:
            # unconditional: every condition is the null one, a single learned token (taming's start token)
            self.null_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.register_buffer("_device_marker", torch.empty(0), persistent=False)

    # ------------------------------------------------------------------ what it uses
    @property
    def uses_text(self) -> bool:
        return self.text_encoder is not None

    @property
    def uses_label(self) -> bool:
        return self.label_encoder is not None

    @property
    def unconditional(self) -> bool:
        """Neither text nor labels: every condition is the null condition."""
        return not (self.uses_text or self.uses_label)

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Batch keys a model with this conditioner consumes (besides ``image``)."""
        return (("caption",) if self.uses_text else ()) + (("label",) if self.uses_label else ())

    @property
    def device(self) -> torch.device:
        return self._device_marker.device

    def prepare(self, captions: Sequence[str] | None, dataset: str = "captions") -> None:
        """Get the text encoder ready for a dataset's captions, once, before training (in ``setup``): build the
        learned encoder's vocabulary if it has none, and encode a frozen encoder's embeddings into its cache.
        Does nothing without text.

        Args:
            captions (Sequence[str] | None): every caption the model will encode from the data: the training
                split's, and the validation split's when validation conditions on its captions (the learned
                vocabulary is fixed once built; a word outside it raises :class:`mmexp.errors.UnknownWordError`).
            dataset (str): name of the cache file (the datamodule's name). Default: ``captions``.
        """
        if not self.uses_text:
            return
        if captions is None:
            raise ConfigError("Conditioner.prepare: this conditioner uses text, but the data gave no captions")
        captions = check_captions(captions, "Conditioner.prepare")
        if not self.text_encoder.vocabulary_built:
            self.text_encoder.fit_vocabulary(captions)
        self.text_encoder.warm(captions, dataset)

    def prepare_from(self, datamodule: Any, splits: Sequence[str] = ("train", "val")) -> None:
        """:meth:`prepare` with the captions of a datamodule's ``splits`` (those it has; a datamodule without a
        val split still trains). Does nothing without text."""
        captions: list[str] = []
        if self.uses_text:
            for split in splits:
                try:
                    ds = datamodule.dataset(split)
                except Exception as err:  # noqa: BLE001
                    log.debug("no %s split for captions: %s", split, err)
                    continue
                captions += ds.captions() if hasattr(ds, "captions") else [ds[i]["caption"] for i in range(len(ds))]
        self.prepare(captions or None, dataset=str(getattr(datamodule, "name", "data")))

    # ------------------------------------------------------------------ dropout
    def sample_drop(self, batch_size: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Training-time dropout masks ``(drop_text, drop_label)``, bool ``[B]`` (None for an unused part).

        Always draws ``3 * batch_size`` uniforms (from ``generator``, else the global RNG of the conditioner's
        device), whatever the probabilities, so changing them does not shift other random streams.
        """
        device = generator.device if generator is not None else self.device
        u = torch.rand(3, batch_size, generator=generator, device=device).to(self.device)
        drop_all = u[2] < self.p_drop_all
        drop_text = (u[0] < self.p_drop_text) | drop_all if self.uses_text else None
        drop_label = (u[1] < self.p_drop_label) | drop_all if self.uses_label else None
        return drop_text, drop_label

    # ------------------------------------------------------------------ conditions
    def forward(self, caption: Sequence[str] | None = None, label: torch.Tensor | None = None,
                drop_text: torch.Tensor | None = None, drop_label: torch.Tensor | None = None,
                batch_size: int | None = None, drop_words: torch.Tensor | None = None) -> Condition:
        """The condition of a batch.

        Args:
            caption (Sequence[str] | None): B captions; None: text unknown (null text). Default: None.
            label (Tensor | None): int64 ``[B]`` labels; None: label unknown (null label). Default: None.
            drop_text (Tensor | None): bool ``[B]``, True: replace that caption by the null text. Default: None.
            drop_label (Tensor | None): bool ``[B]``, True: replace that label by the null label. Default: None.
            batch_size (int | None): B, needed only when neither captions nor labels are given. Default: None.
            drop_words (Tensor | None): bool ``[B, >= L]`` (L: the encoded captions' length), True: replace that
                token state by the masked-word token (word dropout; needs ``p_drop_word > 0`` at construction).
                Default: None.
        """
        if drop_words is not None and not hasattr(self, "masked_word_token"):
            raise ConfigError("Conditioner: drop_words given, but this conditioner was built with p_drop_word=0")
        if caption is not None and not self.uses_text:
            raise ConfigError("Conditioner: got captions, but this model is " + (
                "conditioned on labels only (text_encoder=none); pass labels" if self.uses_label else
                "unconditional (no text encoder, no num_classes); pass batch_size only"))
        if label is not None and not self.uses_label:
            raise ConfigError("Conditioner: got labels, but this model is " + (
                "conditioned on text only (num_classes unset); pass captions" if self.uses_text else
                "unconditional (no text encoder, no num_classes); pass batch_size only"))
        if caption is not None:
            caption = check_captions(caption, "Conditioner")
        sizes = {n: s for n, s in (("caption", None if caption is None else len(caption)),
                                   ("label", None if label is None else len(label)),
                                   ("batch_size", batch_size)) if s is not None}
        if not sizes:
            raise ConfigError("Conditioner: give captions, labels or batch_size")
        if len(set(sizes.values())) != 1:
            raise ConfigError(f"Conditioner: batch sizes disagree: {sizes}")
        b = next(iter(sizes.values()))
        for name, drop in (("drop_text", drop_text), ("drop_label", drop_label)):
            if drop is not None and (drop.shape != (b,) or drop.dtype != torch.bool):
                raise ConfigError(f"Conditioner: {name} must be a bool tensor [{b}], got {drop.dtype} {tuple(drop.shape)}")
        device = self.device
        rows = torch.arange(b, device=device)

        tokens = mask = pooled = None
        if self.uses_text:
            if caption is None:
                tokens = self.null_text_token.expand(b, 1, self.dim)
                mask = torch.ones(b, 1, dtype=torch.bool, device=device)
                pooled = self.null_text_pooled.expand(b, self.dim)
            else:
                text = self.text_encoder.encode(caption).to(device)
                tokens = self.text_tokens(text.tokens) * text.mask[..., None]
                mask, pooled = text.mask, self.text_pooled(text.pooled)
                if drop_words is not None:
                    if drop_words.shape[0] != b or drop_words.shape[1] < tokens.shape[1]:
                        raise ConfigError(f"Conditioner: drop_words must be bool [{b}, >= {tokens.shape[1]}], "
                                          f"got {tuple(drop_words.shape)}")
                    words = drop_words[:, :tokens.shape[1], None].to(device) & mask[..., None]
                    tokens = torch.where(words, self.masked_word_token, tokens)
                if drop_text is not None:
                    drop = drop_text.to(device)
                    null_tokens = F.pad(self.null_text_token[None, None], (0, 0, 0, tokens.shape[1] - 1))
                    null_mask = torch.arange(tokens.shape[1], device=device)[None] == 0
                    tokens = torch.where(drop[:, None, None], null_tokens, tokens)
                    mask = torch.where(drop[:, None], null_mask, mask)
                    pooled = torch.where(drop[:, None], self.null_text_pooled, pooled)

        if self.uses_label:
            if label is None:
                emb = self.null_label.expand(b, self.dim)
            else:
                emb = self.label_encoder(label)
                if drop_label is not None:
                    emb = torch.where(drop_label.to(device)[:, None], self.null_label, emb)
            if tokens is None:
                tokens, mask, pooled = emb[:, None], torch.ones(b, 1, dtype=torch.bool, device=device), emb
            else:
                lengths = mask.sum(1)
                tokens = F.pad(tokens, (0, 0, 0, 1)).index_put((rows, lengths), emb)
                mask = torch.arange(tokens.shape[1], device=device)[None] <= lengths[:, None]
                pooled = pooled + emb
        if self.unconditional:
            tokens, mask = self.null_token.expand(b, 1, self.dim), torch.ones(b, 1, dtype=torch.bool, device=device)
            pooled = self.null_token.expand(b, self.dim)
        return Condition(pooled, tokens, mask)

    def null(self, batch_size: int) -> Condition:
        """The fully unconditional condition (every part null), ``batch_size`` times."""
        return self(batch_size=batch_size)

    def from_batch(self, batch: Mapping[str, Any], drop: bool = False,
                   generator: torch.Generator | None = None) -> Condition:
        """The condition of a training/validation batch: its ``caption``/``label`` (those this conditioner uses),
        with condition dropout (:meth:`sample_drop`) when ``drop``."""
        b = batch_length(batch)
        drop_text, drop_label = self.sample_drop(b, generator) if drop else (None, None)
        drop_words = None
        if drop and self.p_drop_word:
            device = generator.device if generator is not None else self.device
            u = torch.rand(b, self.text_encoder.max_length, generator=generator, device=device)
            drop_words = (u < self.p_drop_word).to(self.device)
        return self(batch["caption"] if self.uses_text else None, batch["label"] if self.uses_label else None,
                    drop_text, drop_label, batch_size=b, drop_words=drop_words)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, p_drop_text={self.p_drop_text}, p_drop_label={self.p_drop_label}, "
                f"p_drop_all={self.p_drop_all}, p_drop_word={self.p_drop_word}")
