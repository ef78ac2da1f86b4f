"""Reading checkpoints safely, and what mmexp adds to them.

Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain Python types only, so a
file that carries an arbitrary pickled object is refused before anything in it runs
(:class:`mmexp.errors.CheckpointError`, naming the file). mmexp writes only such types (RNG states as
tensors and lists, the config as plain dicts). Checkpoints written before schema 2 held NumPy's RNG state as
an ``ndarray``; for those exactly the four NumPy globals that an ``ndarray`` of ``uint32`` needs are allowed
(still no arbitrary callables), and the file is migrated (see :func:`migrate`).

A checkpoint's ``mmexp`` section (``CHECKPOINT_KEY``) holds ``schema`` (:data:`SCHEMA_VERSION`), ``config``
(the composed run config, resolved), ``rng_states`` and ``logger_ids`` (the W&B run id).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mmexp.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "mmexp"

#: 1: RNG states with NumPy arrays (no ``schema`` key); 2: RNG states as tensors/lists, ``schema`` recorded;
#: 3: losses in the ``loss`` group (``model.loss`` a LossSet; no ``model.beta``/``likelihood``/``quantizer.beta``),
#: VQ-VAE scored as ``rfid`` (reconstruction FID).
SCHEMA_VERSION = 3


# ---------------------------------------------------------------------------------------- RNG states
def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python RNG states, as tensors and plain types only."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states` (also reads schema-1 states: NumPy tuples)."""
    torch.set_rng_state(states["torch"])
    npy = states["numpy"]
    if isinstance(npy, dict):
        keys = npy["keys"].numpy().astype(np.uint32) if torch.is_tensor(npy["keys"]) else np.asarray(npy["keys"], np.uint32)
        npy = (npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(npy)
    py = states["python"]
    if isinstance(py, dict):
        py = (py["version"], tuple(py["internal"]), py["gauss_next"])
    random.setstate(py)
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------- loading
def _legacy_numpy_globals() -> list:
    """What a schema-1 file's NumPy RNG state (an ``ndarray`` of ``uint32``) needs unpickled, and no more."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", migrate_schema: bool = True) -> dict:
    """The checkpoint at ``path``, read with ``weights_only=True`` and migrated to :data:`SCHEMA_VERSION`.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, or carries anything but
    tensors and plain types (nothing in such a file is executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as first:
            if "numpy" not in str(first):
                raise
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).split("\n")
        detail = next((line.strip() for line in reason if "Unsupported global" in line or "GLOBAL" in line), reason[0])
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds objects other than tensors and plain Python types "
            f"({detail}). mmexp loads checkpoints with torch.load(weights_only=True) so that no code in a file runs; "
            "only use checkpoints from a source you trust, and re-save them as plain state dicts") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint (a {type(ckpt).__name__}, expected a dict)")
    return migrate(ckpt, path) if migrate_schema else ckpt


def schema_of(ckpt: dict) -> int:
    return int((ckpt.get(CHECKPOINT_KEY) or {}).get("schema", 1))


# ---------------------------------------------------------------------------------------- migrations
def _to_schema_2(ckpt: dict) -> list[str]:
    """RNG states from NumPy/Python tuples to tensors and lists."""
    state = ckpt.get(CHECKPOINT_KEY) or {}
    rng = state.get("rng_states")
    changes = []
    if rng is not None and not isinstance(rng.get("numpy"), dict):
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        rng["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        version, internal, gauss_next = rng["python"]
        rng["python"] = {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}
        changes.append("RNG states stored as tensors and lists")
    return changes


def _term(target: str, weight: float = 1.0) -> dict:
    return {"_target_": target, "weight": float(weight)}


def _to_schema_3(ckpt: dict) -> list[str]:
    """The stored run config from losses inside model configs to the ``loss`` group, and ``val/fid`` of a VQ-VAE
    to ``val/rfid``: so ``task=eval|sample|generate`` and resumed runs rebuild the model from an older checkpoint.
    The weights are unchanged (no loss held state)."""
    config = (ckpt.get(CHECKPOINT_KEY) or {}).get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return []
    model, changes = config["model"], []
    target = str(model.get("_target_", ""))
    loss = None
    if target.endswith("models.gan.GAN") and isinstance(model.get("loss"), dict) and "kind" in model["loss"]:
        kind = model["loss"]["kind"]
        adversarial = {"bce": "NonSaturatingLoss", "hinge": "HingeLoss"}.get(kind)
        if adversarial is None:
            raise CheckpointError(f"cannot migrate a GAN loss of kind {kind!r} (known: bce, hinge)")
        loss = {"_target_": "mmexp.losses.LossSet",
                "terms": {"adversarial": _term(f"mmexp.losses.adversarial.{adversarial}")}}
        changes.append(f"GAN loss kind={kind} -> loss group ({adversarial})")
    elif target.endswith("models.vae.VAE") and ("beta" in model or "likelihood" in model):
        likelihood = model.pop("likelihood", "gaussian")
        beta = model.pop("beta", 1.0)
        nll = {"gaussian": "GaussianNLL", "bernoulli": "BernoulliNLL"}[likelihood]
        loss = {"_target_": "mmexp.losses.LossSet",
                "terms": {"recon": _term(f"mmexp.losses.likelihood.{nll}"),
                          "kl": _term("mmexp.losses.kl.GaussianKL", beta)}}
        changes.append(f"VAE likelihood={likelihood}, beta={beta} -> loss group")
    elif target.endswith("models.vqvae.VQVAE") and "beta" in (model.get("quantizer") or {}):
        beta = model["quantizer"].pop("beta")
        loss = {"_target_": "mmexp.losses.LossSet",
                "terms": {"recon": _term("mmexp.losses.reconstruction.MSELoss"),
                          "commitment": _term("mmexp.losses.vq.CommitmentLoss", beta),
                          "codebook": _term("mmexp.losses.vq.CodebookLoss")}}
        changes.append(f"VQ-VAE quantizer.beta={beta} -> loss group (commitment weight)")
    if loss is not None:
        model["loss"] = loss
        config["loss"] = loss
    if target.endswith("models.vqvae.VQVAE"):
        for key in ("monitor", "optimized_metric"):
            node = config.get(key)
            if isinstance(node, dict) and node.get("metric") in ("val/fid", "val/kid_mean"):
                node["metric"] = node["metric"].replace("val/", "val/r")
                changes.append(f"{key}.metric -> {node['metric']}")
            elif node in ("val/fid", "val/kid_mean"):
                config[key] = node.replace("val/", "val/r")
                changes.append(f"{key} -> {config[key]}")
    return changes


#: schema N -> function migrating a checkpoint dict from N to N + 1 in place, returning what it changed
MIGRATIONS: dict[int, Callable[[dict], list[str]]] = {1: _to_schema_2, 2: _to_schema_3}


def migrate(ckpt: dict, path: str = "<checkpoint>") -> dict:
    """Bring ``ckpt`` to :data:`SCHEMA_VERSION` in place (logging what changed); a newer schema is refused."""
    schema = original = schema_of(ckpt)
    if schema > SCHEMA_VERSION:
        raise CheckpointError(f"{path} was written by a newer mmexp (checkpoint schema {schema}, this mmexp reads up "
                              f"to {SCHEMA_VERSION}); upgrade mmexp")
    if schema == SCHEMA_VERSION:
        return ckpt
    changes: list[str] = []
    while schema < SCHEMA_VERSION:
        changes += MIGRATIONS[schema](ckpt)
        schema += 1
    if CHECKPOINT_KEY in ckpt:
        ckpt[CHECKPOINT_KEY]["schema"] = SCHEMA_VERSION
    log.warning("checkpoint %s was written with schema %d and was migrated to schema %d on load: %s", path, original,
                SCHEMA_VERSION, "; ".join(changes) or "nothing to change")
    return ckpt


def resumable_path(path: str | os.PathLike, output_dir: str | os.PathLike) -> str:
    """A checkpoint path that Lightning can resume from with ``weights_only=True``.

    A current checkpoint is returned as is. An older one is migrated once into
    ``<output_dir>/checkpoints/migrated-<name>`` (the original is never modified) and that path returned.
    """
    from mmexp.io import atomic_torch_save

    path = os.fspath(path)
    ckpt = load_checkpoint(path, migrate_schema=False)
    if schema_of(ckpt) == SCHEMA_VERSION:
        return path
    migrated = os.path.join(os.fspath(output_dir), "checkpoints", f"migrated-{os.path.basename(path)}")
    atomic_torch_save(migrate(ckpt, path), migrated)
    log.warning("resuming from %s, the migrated copy of %s", migrated, path)
    return migrated
