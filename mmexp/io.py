"""Files mmexp writes: atomic ``torch.save``, ``metrics.json``; numbers made JSON-ready."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from typing import Any, Mapping

import torch

log = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    ``os.replace`` within one directory is atomic on POSIX: a run killed during the write leaves the
    previous file intact (and at worst a stray ``.tmp`` file, never a truncated checkpoint).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value


def flatten(prefix: str, mapping: Mapping[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"prefix/a/b": 1}; lists become JSON strings so the result stays flat."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(name, value))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = value
    return flat


def write_metrics_json(path: str, metrics: Mapping[str, Any], protocol: Mapping[str, Any] | None,
                       provenance: Mapping[str, Any] | None = None) -> dict:
    """One flat JSON object: every number, the protocol it was measured with (``protocol/...``) and
    what produced it (``provenance/...``)."""
    out: dict[str, Any] = {}
    for key, value in sorted(metrics.items()):
        number = to_float(value)
        if number is not None:
            out[key] = number if math.isfinite(number) else str(number)
    if protocol:
        out.update(flatten("protocol", protocol))
    if provenance:
        out.update(flatten("provenance", provenance))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    log.info("metrics written to %s", path)
    return out
