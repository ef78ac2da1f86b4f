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
from pathlib import Path

import torch

from mmexp.io import atomic_torch_save
from mmexp.metrics.frechet import feature_statistics

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
