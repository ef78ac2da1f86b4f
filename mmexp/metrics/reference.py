"""On-disk cache of a real dataset's Inception statistics (reference statistics).

One file per key, ``<dir>/<key>.pt``; the key is a hash of the fields that determine the statistics
(dataset, split, resolution, protocol, extractor weights, input conversion, format version). The file
stores those fields and a sha256 of its tensors; :func:`load` verifies both and treats a mismatch or an
unreadable file as a miss (the caller recomputes and overwrites), never as valid statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from mmexp.io import atomic_torch_save

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


def save(path: Path, fields: dict, tensors: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    payload = {"format": FORMAT_VERSION, "fields": fields, "tensors": tensors,
               "checksum": tensors_checksum(tensors)}
    atomic_torch_save(payload, path)
    return path


def load(path: Path, fields: dict) -> dict[str, torch.Tensor] | None:
    """Tensors of a valid cache file for ``fields``, or None (missing, stale or corrupt; bad files are
    removed so that they are rebuilt)."""
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
        log.warning("Reference statistics cache %s is %s: ignoring it and rebuilding", path, reason)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return payload["tensors"]
