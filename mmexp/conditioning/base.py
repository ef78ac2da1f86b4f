"""The text-encoder interface, and the frozen-encoder machinery: lazy loading and the embedding cache.

A :class:`TextEncoder` turns captions into a :class:`~mmexp.conditioning.Condition`. Trained encoders
(:class:`~mmexp.conditioning.LearnedTextEncoder`) are ordinary modules whose weights live in the checkpoint.
Frozen pretrained encoders (:class:`FrozenTextEncoder`: MiniLM, USE, CLIP) are not:

* their network is loaded from its installed package (or weights file) the first time a caption has to be
  encoded, once per process, and is *not a registered submodule*: it is outside ``parameters()`` (so outside
  every optimizer), ``state_dict()`` (a checkpoint stays small; it stores the encoder's identity in
  ``_extra_state`` instead) and ``train()`` (it stays in eval mode);
* every caption is encoded once: embeddings are kept in memory, and :meth:`FrozenTextEncoder.warm` writes a
  dataset's caption embeddings to one file per (encoder, dataset) under ``cache_dir``, reused by later epochs
  and runs. The file records the encoder's identity (name, package version, size and mtime of the weights
  files, options); a file that does not match, or cannot be read, is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmexp.conditioning.condition import Condition, pad_tokens
from mmexp.errors import CheckpointError, ConfigError, MissingDependencyError
from mmexp.io import atomic_torch_save

log = logging.getLogger(__name__)

#: bump when the cache file layout changes (old files are then rebuilt)
CACHE_FORMAT = 1

# loaded frozen networks, one per identity, shared by every encoder of the process
_NETWORKS: dict[str, Any] = {}


def require(module: str, package: str, encoder: str) -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the install that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"text_encoder={encoder} needs the Python package {package!r}, which is not installed "
            f'({e}): pip install "mmexp[text]"') from e


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def file_stats(paths: Iterable[str | os.PathLike]) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}``: cheap evidence that weights files are the ones a cache was built with."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[os.fspath(p)] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def check_captions(captions: Any, who: str) -> list[str]:
    """``captions`` as a list of str, or a :class:`ConfigError` naming what was given instead."""
    if isinstance(captions, str):
        raise ConfigError(f"{who}: captions must be a list of strings, got one string {captions!r}; "
                          "wrap it in a list")
    captions = list(captions)
    if not captions:
        raise ConfigError(f"{who}: got an empty list of captions")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise ConfigError(f"{who}: caption {i} is a {type(c).__name__} ({c!r}), not a str")
    return captions


class TextEncoder(nn.Module):
    """Base class of condition encoders for text: ``encode(captions) -> Condition``.

    Subclasses set :attr:`name` (the ``text_encoder=`` option) and :attr:`frozen`, and implement
    :meth:`encode`. Outputs are float32 on the encoder's device; ``pooled`` and ``tokens`` have
    :attr:`dim` features, ``tokens`` at most :attr:`max_length` positions.

    Args:
        dim (int): size of the pooled vector and of each token state.
        max_length (int): most token positions per caption (longer captions are truncated).
    """

    name: str = "text"
    #: True: pretrained and never trained here (no parameters in the optimizer, none in the checkpoint)
    frozen: bool = False

    def __init__(self, dim: int, max_length: int) -> None:
        super().__init__()
        if dim < 1 or max_length < 1:
            raise ConfigError(f"{type(self).__name__}: dim={dim} and max_length={max_length} must be >= 1")
        self.dim, self.max_length = int(dim), int(max_length)
        # follows .to(device) without being saved; frozen networks and outputs go where it is
        self.register_buffer("_device_marker", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_marker.device

    def encode(self, captions: Sequence[str]) -> Condition:
        """``Condition`` of ``captions`` (a list of B strings): pooled ``[B, dim]``, tokens ``[B, L, dim]``
        with ``L <= max_length``, mask ``[B, L]``."""
        raise NotImplementedError

    def forward(self, captions: Sequence[str]) -> Condition:
        return self.encode(captions)

    # ------------------------------------------------------------------ preparation (no-ops by default)
    @property
    def vocabulary_built(self) -> bool:
        """False only for an encoder whose vocabulary still has to be built from the training captions."""
        return True

    def fit_vocabulary(self, captions: Sequence[str]) -> None:
        """Build the vocabulary from the training captions (encoders with a fixed tokenizer: nothing to do)."""

    def warm(self, captions: Sequence[str], dataset: str = "captions") -> None:
        """Encode a dataset's captions once, ahead of training (encoders trained with the model: nothing to do)."""

    def extra_repr(self) -> str:
        return f"name={self.name}, dim={self.dim}, max_length={self.max_length}, frozen={self.frozen}"


class FrozenTextEncoder(TextEncoder):
    """A pretrained encoder used as is: lazy network, embeddings cached in memory and on disk.

    Subclasses define :attr:`package` (the PyPI distribution, for the identity), :meth:`describe`
    (portable identity: options), :meth:`weight_files`, :meth:`_load` (the network, any object) and
    :meth:`_forward` (a chunk of captions -> pooled, tokens, mask on the network's device).

    Args:
        dim (int): see :class:`TextEncoder`.
        max_length (int): see :class:`TextEncoder`.
        cache_dir (str | None): directory of the on-disk embedding cache (the configs use
            ``${paths.cache_dir}/text_embeddings``); None keeps embeddings in memory only. Default: None.
        cache_dtype (str): dtype the token states are kept in (memory and disk), ``float16`` or
            ``float32``. Pooled vectors are always float32. Every output passes through this dtype,
            so an embedding is the same whether it came from the cache or was just computed.
            Default: ``float16`` (halves the cache; MiniLM token states for CelebA's captions would
            otherwise take gigabytes).
        batch_size (int): captions per forward pass of the network. Default: 256.
    """

    frozen = True
    package: str = ""
    #: False: the encoder has only a pooled vector (tokens are the pooled vector as one token)
    token_states: bool = True

    def __init__(self, dim: int, max_length: int, cache_dir: str | os.PathLike | None = None,
                 cache_dtype: str = "float16", batch_size: int = 256) -> None:
        super().__init__(dim, max_length)
        if cache_dtype not in ("float16", "float32"):
            raise ConfigError(f"{type(self).__name__}: cache_dtype must be 'float16' or 'float32', got {cache_dtype!r}")
        if batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size={batch_size} must be >= 1")
        self.cache_dir = None if cache_dir is None else os.path.expanduser(os.fspath(cache_dir))
        self.cache_dtype = getattr(torch, cache_dtype)
        self.batch_size = int(batch_size)
        # caption -> (pooled [dim] float32, tokens [L, dim] cache_dtype or None), on the CPU
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        #: captions run through the network by this encoder (the cache's hit test counts on it)
        self.num_encoded = 0

    # ------------------------------------------------------------------ identity
    def describe(self) -> dict[str, Any]:
        """Portable identity (saved in checkpoints): name, package and version, options."""
        return {"encoder": self.name, "package": self.package, "version": package_version(self.package),
                "dim": self.dim, "max_length": self.max_length}

    def weight_files(self) -> list[str]:
        """The files the network is read from (their size and mtime enter the cache identity)."""
        return []

    def identity(self) -> dict[str, Any]:
        """What an embedding depends on: :meth:`describe`, the weights files' stats, the cache dtype."""
        return {**self.describe(), "files": file_stats(self.weight_files()),
                "cache_dtype": str(self.cache_dtype).removeprefix("torch."), "format": CACHE_FORMAT}

    @property
    def cache_name(self) -> str:
        """Folder name of this encoder's cache files (variants of one encoder need different names)."""
        return self.name

    def get_extra_state(self) -> dict[str, Any]:
        return {"identity": self.describe()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved, here = dict(state.get("identity", {})), self.describe()
        if saved.get("encoder") != here["encoder"]:
            raise CheckpointError(
                f"the checkpoint's text encoder is {saved.get('encoder')!r}, this model's is {here['encoder']!r}; "
                f"choose text_encoder={saved.get('encoder')}")
        if saved != here:
            log.warning("the checkpoint's text encoder was %s, this one is %s: embeddings may differ", saved, here)

    # ------------------------------------------------------------------ the network
    def _load(self) -> Any:
        raise NotImplementedError

    def _forward(self, network: Any, captions: list[str], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pooled [b, dim], tokens [b, L, dim], mask [b, L])`` of a chunk of captions, computed on ``device``."""
        raise NotImplementedError

    def network(self) -> Any:
        """The loaded network, loaded at the first call in this process (shared by every encoder that reads the
        same weights files, whatever their other options)."""
        key = json.dumps([type(self).__name__, file_stats(self.weight_files())], sort_keys=True)
        if key not in _NETWORKS:
            log.info("loading text encoder %s", self.describe())
            _NETWORKS[key] = self._load()
        return _NETWORKS[key]

    @torch.no_grad()
    def _compute(self, captions: list[str]) -> None:
        """Run the network on ``captions`` and keep their embeddings in memory."""
        network, device = self.network(), self.device
        for start in range(0, len(captions), self.batch_size):
            chunk = captions[start:start + self.batch_size]
            # full precision even inside a mixed-precision step: a cached embedding must not depend on
            # whether it was first computed in setup or in a training step
            with torch.autocast(device.type, enabled=False):
                pooled, tokens, mask = self._forward(network, chunk, device)
            pooled = pooled.float().cpu()
            tokens, lengths = tokens.to("cpu", self.cache_dtype), mask.sum(1).tolist()
            for i, caption in enumerate(chunk):
                self._memory[caption] = (pooled[i].clone(),
                                         tokens[i, : lengths[i]].clone() if self.token_states else None)
            self.num_encoded += len(chunk)

    def clear_cache(self) -> None:
        """Forget the in-memory embeddings (files on disk stay)."""
        self._memory.clear()

    # ------------------------------------------------------------------ encode
    def encode(self, captions: Sequence[str]) -> Condition:
        captions = check_captions(captions, f"text_encoder={self.name}")
        missing = sorted({c for c in captions if c not in self._memory})
        if missing:
            self._compute(missing)
        entries = [self._memory[c] for c in captions]
        # assembled on the CPU, where the cache lives, then moved in one copy per tensor
        pooled = torch.stack([p for p, _ in entries])
        if not self.token_states:
            tokens, mask = pooled[:, None].clone(), torch.ones(len(captions), 1, dtype=torch.bool)
        else:
            tokens, mask = pad_tokens([t for _, t in entries], self.dim)
        return Condition(pooled, tokens, mask).to(self.device)

    # ------------------------------------------------------------------ the on-disk cache
    def cache_path(self, captions: Sequence[str], dataset: str = "captions") -> Path | None:
        """File of the embeddings of this set of captions: ``<cache_dir>/<cache_name>/<dataset>-<hash>.pt``."""
        if self.cache_dir is None:
            return None
        unique = sorted(set(captions))
        digest = hashlib.sha256("\0".join(unique).encode("utf-8")).hexdigest()[:16]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset) or "captions"
        return Path(self.cache_dir) / self.cache_name / f"{safe}-{digest}.pt"

    def warm(self, captions: Sequence[str], dataset: str = "captions") -> None:
        """Have every caption of a dataset encoded: read them from the cache file if it matches this encoder,
        else encode them (only the ones the file lacks, when it matches) and write the file atomically.

        Args:
            captions (Sequence[str]): the dataset's captions (repeats are fine).
            dataset (str): a readable name for the file (the datamodule's name). Default: ``captions``.
        """
        unique = sorted(set(check_captions(captions, f"text_encoder={self.name}")))
        path = self.cache_path(unique, dataset)
        if path is None:
            self._compute([c for c in unique if c not in self._memory])
            return
        stored = self._read_cache(path)
        for caption, entry in stored.items():
            self._memory.setdefault(caption, entry)
        missing = [c for c in unique if c not in stored]
        if not missing:
            return
        self._compute([c for c in missing if c not in self._memory])
        self._write_cache(path, unique)

    def _read_cache(self, path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """The file's embeddings, or ``{}`` when it is absent, unreadable or from another encoder."""
        if not path.exists():
            return {}
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("identity") != self.identity():
                log.info("text embedding cache %s was built by another encoder (%s); rebuilding it",
                         path, data.get("identity"))
                return {}
            captions, pooled, lengths = data["captions"], data["pooled"], data["lengths"].tolist()
            tokens = data["tokens"].split(lengths) if self.token_states else [None] * len(captions)
            if len(captions) != pooled.shape[0] or len(tokens) != len(captions):
                raise ValueError("lengths disagree")
            return {c: (pooled[i], tokens[i]) for i, c in enumerate(captions)}
        except Exception as e:  # noqa: BLE001 - a broken cache is rebuilt, whatever broke it
            log.warning("text embedding cache %s cannot be read (%s: %s); rebuilding it", path, type(e).__name__, e)
            return {}

    def _write_cache(self, path: Path, captions: list[str]) -> None:
        entries = [self._memory[c] for c in captions]
        lengths = [0 if t is None else t.shape[0] for _, t in entries]
        tokens = (torch.cat([t for _, t in entries]) if self.token_states
                  else torch.empty(0, self.dim, dtype=self.cache_dtype))
        atomic_torch_save({"identity": self.identity(), "captions": list(captions),
                           "pooled": torch.stack([p for p, _ in entries]), "lengths": torch.tensor(lengths),
                           "tokens": tokens}, path)
        log.info("text embeddings of %d captions written to %s", len(captions), path)
