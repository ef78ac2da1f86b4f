"""Stages that a run trains before its own model, in the same command (``stages:`` in the config).

A two-stage generator needs its first stage trained before the second (a VQ-VAE before the prior over its
codes). ``stages`` lists those stages; each is an ordinary ``task=train`` run, composed from the primary
config and the stage's overrides, written into ``<this run>/<stage name>/`` (checkpoints, metrics.json, logs:
a real run directory), and its ``checkpoints/last.ckpt`` becomes a key of this run's config::

    stages:
      stage1:
        overrides: [model=vqvae, trainer.max_steps=2000, metrics=none]
        result: model.stage1.ckpt_path

What a stage shares with this run: its ``data``, ``seed``, ``paths`` (caches, data) and ``logger``, unless the
stage's overrides set them (``data=...`` replaces the data; ``data.batch_size=...`` changes one key of the
shared data). ``${...}`` in the overrides are read from this run's config. Under ``fast_dev_run`` a stage trains
one step and validates one batch, but writes its checkpoint (the next stage needs it).

A stage that finished (its ``metrics.json`` exists) is not trained again; one that stopped early resumes from
its ``last.ckpt``. Resuming this run (``ckpt_path=...``) trains no stage: each result key is taken from the
resumed checkpoint's config (the files this run was trained with).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mmexp.errors import ConfigError

log = logging.getLogger("mmexp")

#: nodes a stage takes from the run that starts it unless its overrides set them
SHARED = ("data", "seed", "logger")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def compose_stage(overrides: list[str]) -> DictConfig:
    """The primary config (``conf/train.yaml``) with ``overrides``, as Hydra composes a command line."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_module(config_module="mmexp.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def stage_config(cfg: DictConfig, name: str, overrides: list[str]) -> DictConfig:
    """The config of stage ``name`` of the run ``cfg`` (see the module docstring)."""
    own = compose_stage(overrides)
    stage = copy.deepcopy(own)
    keys = [_key(o) for o in overrides]
    with open_dict(stage):
        for node in SHARED:
            if node in keys or node not in cfg:
                continue  # the stage chose its own (data=..., seed=...)
            stage[node] = copy.deepcopy(cfg[node])
            for key in keys:  # the stage's own changes to a shared node win
                if key.startswith(node + "."):
                    OmegaConf.update(stage, key, OmegaConf.select(own, key), force_add=True)
        paths = OmegaConf.to_container(cfg.paths, resolve=True)
        paths["output_dir"] = os.path.join(paths["output_dir"], name)
        stage.paths = paths
        stage.task, stage.task_name, stage.ckpt_path, stage.stages = "train", f"{cfg.get('task_name')}/{name}", None, None
        fdr = cfg.trainer.get("fast_dev_run")
        if fdr:
            # a fast_dev_run writes no checkpoint, and the next stage needs one: the same amount of work instead
            steps = 1 if fdr is True else int(fdr)
            stage.trainer.fast_dev_run = False
            stage.trainer.max_steps, stage.trainer.max_epochs = steps, -1
            stage.trainer.limit_val_batches, stage.trainer.check_val_every_n_epoch = steps, 1
            stage.trainer.num_sanity_val_steps = 0
    return stage


def run_stages(cfg: DictConfig, resume: dict[str, Any] | None = None) -> None:
    """Train the stages of ``cfg.stages`` that are not done, in order, and set each one's ``result`` key of
    ``cfg`` to its ``checkpoints/last.ckpt``. ``resume``: the mmexp section of the checkpoint this run resumes
    from (then no stage runs; results come from its config)."""
    from mmexp.train import train

    stages = cfg.get("stages") or {}
    for name, spec in stages.items():
        if not isinstance(spec, (dict, DictConfig)) or "overrides" not in spec or not spec.get("result"):
            raise ConfigError(f"stages.{name} must have `overrides` (a list, as on a command line) and `result` "
                              f"(the key of this run's config that gets the stage's checkpoint); got {spec}")
        result = str(spec.result)
        if resume:
            stored = OmegaConf.create((resume.get("config") or {}))
            value = OmegaConf.select(stored, result)
            if value is None:
                raise ConfigError(f"resuming: the checkpoint's config has no {result}, which stage {name!r} of the "
                                  "stages set; resume with stages=null and set it on the command line")
            log.info("resuming: stage %s is not trained again; %s=%s (from the checkpoint)", name, result,
                     value)
            with open_dict(cfg):
                OmegaConf.update(cfg, result, value, force_add=True)
            continue
        overrides = [str(o) for o in spec.overrides]  # reading them resolves ${...} against this run
        stage = stage_config(cfg, name, overrides)
        run_dir = stage.paths.output_dir
        last = os.path.join(run_dir, "checkpoints", "last.ckpt")
        if os.path.exists(os.path.join(run_dir, "metrics.json")) and os.path.exists(last):
            log.info("stage %s is done already (%s)", name, run_dir)
        else:
            if os.path.exists(last):
                with open_dict(stage):
                    stage.ckpt_path = last
                log.info("stage %s: resuming %s", name, last)
            log.info("stage %s: python -m mmexp %s (into %s)", name, " ".join(overrides), run_dir)
            train(stage)
        if not os.path.exists(last):
            raise ConfigError(f"stage {name!r} wrote no {last}; check its callbacks (last_checkpoint)")
        with open_dict(cfg):
            OmegaConf.update(cfg, result, last, force_add=True)
        log.info("stage %s done: %s=%s", name, result, last)
