"""Small helpers the entry point and tasks share."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def wandb_offline() -> bool:
    """True unless W&B credentials are configured (env key or ``wandb login``'s netrc entry)."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"}:
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" not in f.read()
    except OSError:
        return True


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mmexp.wandb_offline"):
        OmegaConf.register_new_resolver("mmexp.wandb_offline", wandb_offline)


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


def build(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising mmexp's own errors unwrapped.

    Hydra wraps every exception raised by a constructor in ``InstantiationException``; for bad input
    that mmexp itself diagnoses (an unsupported image size, a missing dataset) the user should see
    that error, with its message first, not a wrapper around it.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from mmexp.errors import MMExpError

    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, MMExpError):
            raise cause from None
        raise


def instantiate_dict(cfg: DictConfig | None, **extra: Any) -> list:
    """Instantiate every entry with a ``_target_`` of a group such as ``callbacks`` or ``logger``."""
    objects = []
    if not cfg:
        return objects
    for name, entry in cfg.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            log.info("instantiating %s <%s>", name, entry._target_)
            objects.append(build(entry, **extra))
    return objects


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


def write_metrics_json(path: str, metrics: Mapping[str, Any], protocol: Mapping[str, Any] | None) -> dict:
    """One flat JSON object: every number, and the protocol it was measured with (``protocol/...``)."""
    out: dict[str, Any] = {}
    for key, value in sorted(metrics.items()):
        number = to_float(value)
        if number is not None:
            out[key] = number if math.isfinite(number) else str(number)
    if protocol:
        out.update(flatten("protocol", protocol))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    log.info("metrics written to %s", path)
    return out


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def data_identity(data_cfg: DictConfig | Mapping) -> dict:
    """What defines a dataset's images (not how it is loaded): for reference-statistics keys."""
    cfg = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    loading = {"batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers", "drop_last"}
    return {k: v for k, v in cfg.items() if k not in loading}


def first(items: Iterable, kind: str):
    for item in items:
        if type(item).__name__ == kind:
            return item
    return None
