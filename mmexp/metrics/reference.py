"""On-disk cache of a real dataset's Inception statistics (reference statistics).

One file per key, ``<dir>/<key>.pt``; the key is a hash of the fields that determine the statistics
(dataset, split, resolution, protocol, extractor weights, input conversion, format version, and for
file-based datasets a fingerprint of the files: see ``fingerprint()`` of the datasets). The file
stores those fields and a sha256 of its tensors; :func:`load` verifies both and treats a mismatch or an
unreadable file as a miss (the caller recomputes and overwrites), never as valid statistics.

Under DDP the statistics are computed from the features of every rank, and only rank 0 writes the
file (see ``MetricSuite.save_reference``): one writer per file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from mmexp.io import atomic_torch_save
from mmexp.metrics.distributed import positions_to_indices
from mmexp.metrics.frechet import feature_statistics
from mmexp.metrics.inception import INPUT_CONVERSION

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def default_dir() -> Path:
    """``$MMEXP_REFSTATS_DIR``, else ``$MMEXP_CACHE/refstats``, else ``~/.cache/mmexp/refstats``."""
    if os.environ.get("MMEXP_REFSTATS_DIR"):
        return Path(os.environ["MMEXP_REFSTATS_DIR"]).expanduser()
    base = os.environ.get("MMEXP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmexp")
    return Path(base) / "refstats"


def make_key(fields: dict) -> str:
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def statistics(real: torch.Tensor, keep_features: bool) -> dict[str, torch.Tensor]:
    """What a cache file holds for real features ``[N, D]``: ``mu``, ``sigma``, ``n`` and, when KID or
    precision/recall need them (``keep_features``), the features themselves."""
    mu, sigma = feature_statistics(real)
    tensors = {"mu": mu, "sigma": sigma, "n": torch.tensor(real.shape[0])}
    if keep_features:
        tensors["features"] = real.float()
    return tensors


def save(path: Path, fields: dict, tensors: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    payload = {"format": FORMAT_VERSION, "fields": fields, "tensors": tensors,
               "checksum": tensors_checksum(tensors)}
    atomic_torch_save(payload, path)
    return path


def load(path: Path, fields: dict, remove_bad: bool = True) -> dict[str, torch.Tensor] | None:
    """Tensors of a valid cache file for ``fields``, or None (missing, stale or corrupt). Bad files
    are removed when ``remove_bad`` (under DDP only rank 0 touches the file; it overwrites it anyway)."""
    path = Path(path)
    if not path.is_file():
        return None
    reason = None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            reason = "unknown format"
        elif json.loads(json.dumps(payload.get("fields"), default=str)) != json.loads(json.dumps(fields, default=str)):
            reason = f"stale (stored fields {payload.get('fields')} != expected {fields})"
        elif tensors_checksum(payload["tensors"]) != payload.get("checksum"):
            reason = "checksum mismatch"
    except Exception as e:  # noqa: BLE001 - any unreadable file is a miss
        reason = f"unreadable ({type(e).__name__}: {e})"
    if reason is not None:
        if not remove_bad:
            return None
        log.warning("Reference statistics cache %s is %s: ignoring it and rebuilding", path, reason)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return payload["tensors"]


class ReferenceStore:
    """The real-image statistics a :class:`~mmexp.metrics.MetricSuite` compares with: cache keys,
    the cache files, and the statistics in use.

    Args:
        directory: where cache files go (default :func:`default_dir`).

    :meth:`load` and :meth:`save` are collective under DDP: a miss on any rank is a miss on every
    rank (so all compute the statistics together), and rank 0 alone writes a file while the others
    wait at a barrier, then use the same statistics.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self.tensors: dict[str, torch.Tensor] | None = None  # mu, sigma, n (, features)
        self.key: str | None = None
        self._fields: dict[str, dict] = {}

    def register(self, fields: dict) -> str:
        """The key of ``fields``, remembered for :meth:`load` and :meth:`save`."""
        key = make_key(fields)
        self._fields[key] = fields
        return key

    def fields(self, key: str) -> dict:
        if key not in self._fields:
            raise KeyError(f"unknown reference key {key!r}: obtain it from reference_key() first")
        return self._fields[key]

    def path(self, key: str) -> Path:
        return (self.directory or default_dir()) / f"{key}.pt"

    def clear(self) -> None:
        self.tensors, self.key = None, None

    def load(self, key: str) -> bool:
        """Use the cached statistics of ``key``; False (and none in use, not even earlier ones) when
        the file is missing, stale or corrupt on any rank."""
        from mmexp.metrics.distributed import all_true, is_rank_zero

        tensors = load(self.path(key), self.fields(key), remove_bad=is_rank_zero())
        if not all_true(tensors is not None):
            self.clear()
            return False
        self.tensors, self.key = tensors, key
        return True

    def save(self, key: str, real: torch.Tensor) -> Path:
        """Statistics of the real features ``[N, D]`` (the same on every rank): written by rank 0,
        then in use everywhere."""
        from mmexp.metrics.distributed import barrier, is_rank_zero

        fields = self.fields(key)
        tensors = statistics(real, keep_features=fields["features"])
        path = self.path(key)
        if is_rank_zero():
            save(path, fields, tensors)
        barrier()
        self.tensors = {k: v.cpu() for k, v in tensors.items()}
        self.key = key
        return path


class ReferenceStatistics:
    """The reference-statistics half of :class:`~mmexp.metrics.MetricSuite` (a mixin): which real
    statistics a protocol needs, their cache key, and loading / computing / saving them through a
    :class:`ReferenceStore`. The suite provides ``_store``, ``_real`` / ``_arrived`` (the real features
    fed on this rank), ``metrics``, ``name``, ``reference_split``, ``reference_samples``,
    ``feature_extractor``, ``resize``, ``inception_weights()``, ``needs_reference`` and ``update_real``.
    """

    @property
    def has_reference(self) -> bool:
        return self._store.tensors is not None

    @property
    def reference_key_in_use(self) -> str | None:
        return self._store.key

    def clear_reference(self) -> None:
        self._store.clear()

    @property
    def refstats_dir(self) -> Path | None:
        return self._store.directory

    def reference_fields(self, dataset: str, split: str | None = None, resolution=None, **extra) -> dict:
        """What determines the real statistics (``extra``: e.g. a content fingerprint of the files)."""
        return {
            "dataset": str(dataset),
            "split": str(split if split is not None else self.reference_split),
            "resolution": resolution if not isinstance(resolution, (tuple, list)) else list(resolution),
            "protocol": self.name,
            "reference_samples": self.reference_samples,
            "features": any(m in ("kid", "pr") for m in self.metrics),
            "extractor": self.feature_extractor,
            "weights_sha256": self.inception_weights().identity()["sha256"],
            "resize": self.resize,
            "input_conversion": INPUT_CONVERSION,
            **{k: v for k, v in sorted(extra.items())},
        }

    def reference_key(self, dataset: str, split: str | None = None, resolution=None, **extra) -> str:
        """Cache key of the real statistics for (dataset, split, resolution, protocol, weights...)."""
        return self._store.register(self.reference_fields(dataset, split, resolution, **extra))

    def reference_path(self, key: str) -> Path:
        return self._store.path(key)

    def load_reference(self, key: str) -> bool:
        """Load cached real statistics; False (and none loaded, not even an earlier one) when missing,
        stale or corrupt. Collective under DDP."""
        return self._store.load(key)

    @torch.inference_mode()
    def save_reference(self, key: str) -> Path | None:
        """Save the statistics of the real features fed with ``update_real`` (every rank's) under
        ``key`` and use them; collective under DDP (rank 0 writes). None (with a warning) when no
        real image arrived on any rank."""
        self._store.fields(key)
        real = self._real.gather()[1].get("features")
        if real is None or not real.shape[0]:
            log.warning("no real images were fed: reference statistics %s not saved", key)
            return None
        path = self._store.save(key, real)
        self._real.clear()
        self._arrived["real"] = 0
        return path

    def ensure_reference(self, batches: Iterable, dataset: str, split: str | None = None, resolution=None,
                         device: torch.device | str | None = None) -> bool:
        """Load the cached reference, or compute it from ``batches`` (tensors or dicts with ``image``
        and optionally ``index``) and cache it. Returns True when it came from the cache. A no-op when
        no metric needs real images. Collective under DDP (each rank passes its own batches)."""
        if not self.needs_reference:
            return True
        key = self.reference_key(dataset, split, resolution)
        if self.load_reference(key):
            log.info("Reference statistics loaded from %s", self.reference_path(key))
            return True
        self._real.clear()
        self._arrived["real"] = 0
        for b in batches:
            x, index = (b["image"], b.get("index")) if isinstance(b, dict) else (b, None)
            self.update_real(x if device is None else x.to(device), index)
            if (index is None and self.reference_samples is not None
                    and int(positions_to_indices(self._arrived["real"], 1)[0]) >= self.reference_samples):
                break
        path = self.save_reference(key)
        log.info("Reference statistics saved to %s", path)
        return False
