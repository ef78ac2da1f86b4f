"""Composing and instantiating configs: Hydra's ``instantiate`` with mmexp's errors, resolvers, hashes."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from mmexp.errors import ConfigError

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """``${mmexp.wandb_offline:}``, ``${mmexp.degradation_scale:...}``; called once, on ``import mmexp``."""
    from mmexp.loggers import wandb_offline

    if not OmegaConf.has_resolver("mmexp.wandb_offline"):
        OmegaConf.register_new_resolver("mmexp.wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("mmexp.degradation_scale"):
        OmegaConf.register_new_resolver("mmexp.degradation_scale", degradation_scale)


def degradation_scale(node: Any) -> int:
    """The downsampling factor of a degradation config (0 when it does not downsample): the ``scale`` of its
    ``Downsample``, found also inside pipelines (``Compose`` stages, ``OneOf`` options), where the last one
    sets the input's size. The SR protocol's ``crop_border`` follows it (``metrics=sr``). Options that
    downsample by different factors are refused (no one border fits them)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        if str(node.get("_target_", "")).rsplit(".", 1)[-1] == "Downsample":
            return int(node.get("scale", 4))
        found = [degradation_scale(v) for k, v in node.items() if k not in ("_target_", "options")]
        found = [f for f in found if f]
        opts = node.get("options") or []
        options = [degradation_scale(v) for v in (opts.values() if isinstance(opts, Mapping) else opts)]
        if len(set(f for f in options if f)) > 1:
            raise ConfigError(f"degradation options downsample by different factors {sorted(set(options))}: "
                              "set metrics.crop_border yourself")
        found += [f for f in options if f][:1]
        return found[-1] if found else 0
    if isinstance(node, (list, tuple)):
        found = [f for f in (degradation_scale(v) for v in node) if f]
        return found[-1] if found else 0
    return 0


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
        # Hydra's own wrappers, and the ImportError it raises around an error met while importing a _target_'s
        # module (a missing optional package: MissingDependencyError)
        cause = err.__cause__
        while isinstance(cause, (InstantiationException, ImportError)) and not isinstance(cause, MMExpError) \
                and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, MMExpError):
            raise cause from None
        raise


def _accepts(target: str, name: str) -> bool:
    from hydra.utils import get_class

    try:
        params = inspect.signature(get_class(target)).parameters
    except (ValueError, TypeError, ImportError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def instantiate_group(cfg: DictConfig | None, **provided: Any) -> list:
    """Instantiate every entry with a ``_target_`` of a group such as ``callbacks`` or ``logger``.

    ``provided`` holds what the entry point knows and configs cannot say (the resolved run config, the
    data's identity...): each object receives, as constructor arguments, those of ``provided`` that
    its constructor declares and its config does not set.
    """
    objects = []
    for name, entry in (cfg or {}).items():
        if not (isinstance(entry, DictConfig) and "_target_" in entry):
            continue
        extra = {k: v for k, v in provided.items()
                 if entry.get(k) is None and _accepts(entry._target_, k)}
        log.info("instantiating %s <%s>", name, entry._target_)
        if extra:  # given to the constructor as they are: instantiate would recurse into them
            objects.append(build(entry, _partial_=True)(**extra))
        else:
            objects.append(build(entry))
    return objects


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def data_identity(data_cfg: DictConfig | Mapping) -> dict:
    """What defines a dataset's images (not how it is loaded): for reference-statistics keys."""
    cfg = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    # how it is loaded, and what it declares about its labels, do not change the images
    loading = {"batch_size", "eval_batch_size", "num_workers", "pin_memory", "persistent_workers", "drop_last",
               "num_classes"}
    # no degradation (the default) keeps the identity data had before degradations existed, and its caches
    return {k: v for k, v in cfg.items() if k not in loading and not (k == "degradation" and v is None)}
