"""``python -m mmexp``: compose ``conf/train.yaml``, then train (default), evaluate or sample.

Reads like lightning-hydra-template's ``src/train.py``: seed, instantiate data, model, callbacks,
loggers and trainer; fit; evaluate; return the metric a sweep optimises.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress import ProgressBar
from omegaconf import DictConfig, OmegaConf

from mmexp.callbacks import AtomicCheckpointIO, BestCheckpoint, ValidationMetrics, read_run_state
from mmexp.checkpoint import init_weights, resumable_path
from mmexp.config import build, data_identity, instantiate_group, stable_hash
from mmexp.batch import check_keys
from mmexp.errors import ConfigError, NonFiniteLossError
from mmexp.io import to_float, write_metrics_json
from mmexp.loggers import WandbLogger, find_logger
from mmexp.loggers import finish as finish_loggers
from mmexp.stages import run_stages
from mmexp.provenance import provenance

log = logging.getLogger("mmexp")


def check_compatible(model: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    """Catch before training what would otherwise fail deep inside the first step."""
    model.check_data(tuple(datamodule.image_shape))
    provides = tuple(getattr(datamodule, "provides", ()) or ())
    if provides:
        check_keys(provides, getattr(model, "required_keys", ()), type(model).__name__,
                   f"data '{getattr(datamodule, 'name', type(datamodule).__name__)}'")


def build_target_is(entry: DictConfig, kind: type) -> bool:
    from hydra.utils import get_class

    try:
        return issubclass(get_class(entry._target_), kind)
    except (ImportError, ValueError, TypeError):
        return False


def instantiate_loggers(cfg: DictConfig | None, resume_ids: dict[str, str]) -> list:
    loggers = []
    for name, entry in (cfg or {}).items():
        if not (isinstance(entry, DictConfig) and "_target_" in entry):
            continue
        extra = {}
        if build_target_is(entry, WandbLogger) and resume_ids.get("wandb") and not entry.get("id"):
            extra["id"] = resume_ids["wandb"]  # a resumed run continues its W&B run
            log.info("resuming W&B run %s", extra["id"])
        loggers.append(build(entry, **extra))
    return loggers


def log_hyperparameters(trainer: pl.Trainer, cfg: DictConfig, model: pl.LightningModule) -> None:
    if not trainer.loggers:
        return
    params = OmegaConf.to_container(cfg, resolve=True)
    params["model/params/total"] = sum(p.numel() for p in model.parameters())
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def train(cfg: DictConfig) -> dict[str, float]:
    ckpt_path = resumable_path(cfg.ckpt_path, cfg.paths.output_dir) if cfg.get("ckpt_path") else None
    resume = read_run_state(ckpt_path) if ckpt_path else {}
    if cfg.get("stages"):
        # earlier stages (a VQ-VAE before its prior) first, each a run of its own under this run's directory
        run_stages(cfg, resume=resume if ckpt_path else None)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    log.info("data <%s>", cfg.data._target_)
    datamodule: pl.LightningDataModule = build(cfg.data)
    log.info("model <%s>", cfg.model._target_)
    model: pl.LightningModule = build(cfg.model)
    if cfg.get("init_from"):
        if ckpt_path:  # resuming restores every weight (and the optimizer) from ckpt_path
            log.info("resuming from %s: init_from=%s is not applied", ckpt_path, cfg.init_from)
        else:
            init_weights(model, cfg.init_from)
    check_compatible(model, datamodule)

    callbacks = instantiate_group(cfg.get("callbacks"), run_config=OmegaConf.to_container(cfg, resolve=True),
                                  data_id=stable_hash(data_identity(cfg.data)))
    if not cfg.trainer.get("enable_progress_bar", True):  # the bar callback would contradict the switch
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_loggers(cfg.get("logger"), resume.get("logger_ids", {}))
    failed = True
    try:
        trainer: pl.Trainer = build(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
        )
        log_hyperparameters(trainer, cfg, model)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except NonFiniteLossError as err:
            last = os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt")
            kept = last if os.path.exists(last) else "none was written before the failure"
            log.error("training stopped: %s; last good checkpoint: %s", err, kept)
            raise
        metrics = dict(trainer.callback_metrics)
        metrics.update(validate_final_weights(trainer, model, datamodule, callbacks))

        if cfg.get("test"):
            best_callback = next((c for c in callbacks if isinstance(c, BestCheckpoint)), None)
            best = getattr(best_callback, "best_model_path", "") or None
            log.info("testing %s", best or "the final weights (no best checkpoint was kept)")
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
            metrics.update(trainer.callback_metrics)
            if cfg.get("peers"):
                from mmexp.evaluate import score_peers

                metrics.update(score_peers(cfg, datamodule, metrics))

        finish_run(trainer, cfg, metrics, next((c for c in callbacks if isinstance(c, ValidationMetrics)), None))
        failed = False
    finally:
        # one logger run per job: a sweep's next job must not log into this one (also when this one failed)
        finish_loggers(loggers, failed=failed)
    return {k: v for k, v in ((k, to_float(v)) for k, v in metrics.items()) if v is not None}


def validate_final_weights(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule,
                           callbacks: list) -> dict:
    """Validate the weights training ended with, unless the last validation already saw them.

    A run that stops at ``max_steps`` between two scheduled validations would otherwise report no ``val/*``
    numbers for the weights it saved. The best checkpoint then considers this validation too.
    """
    last = getattr(model, "validated_step", None)
    if not trainer.enable_validation or trainer.fast_dev_run or last == trainer.global_step:
        return {}
    log.info("validating the final weights (step %d; last validation: %s)", trainer.global_step,
             "none" if last is None else f"step {last}")
    trainer.validate(model, datamodule=datamodule, verbose=False)
    for callback in callbacks:
        if isinstance(callback, BestCheckpoint):
            callback.consider(trainer)
    return dict(trainer.callback_metrics)


def finish_run(trainer: pl.Trainer, cfg: DictConfig, metrics: dict, metric_callback: Any) -> dict:
    """metrics.json in the run directory and the W&B summary: every number with its protocol and provenance."""
    if not trainer.is_global_zero:
        return {}
    protocol = getattr(metric_callback, "protocol", None)
    out = write_metrics_json(os.path.join(cfg.paths.output_dir, "metrics.json"), metrics, protocol,
                             provenance(trainer))
    wandb = find_logger(trainer.loggers, WandbLogger)
    if wandb is not None:
        wandb.experiment.summary.update(out)
    return out


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("extras", {}).get("print_config"):
        log.info("composed config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.task == "train":
        try:
            metrics = train(cfg)
        except NonFiniteLossError:
            if not _in_sweep():
                raise
            # one diverged trial must not end the sweep; the Optuna sweeper records a trial whose return value is
            # not a number as failed and goes on (a NaN it would try to record as a value, and stop)
            log.error("this sweep job diverged: returning no value for %s, so the sweep records it as failed",
                      cfg.get("optimized_metric"))
            return None
    elif cfg.task in ("eval", "sample"):
        from mmexp import evaluate

        metrics = evaluate.evaluate(cfg) if cfg.task == "eval" else evaluate.sample(cfg)
    elif cfg.task == "generate":
        from mmexp.generate import generate

        metrics = generate(cfg)
    elif cfg.task == "restore":
        from mmexp.restore import restore

        metrics = restore(cfg)
    else:
        raise ConfigError(f"unknown task={cfg.task!r}; choose one of: train, eval, sample, generate, restore")

    name = cfg.get("optimized_metric")
    if not name or cfg.task != "train":
        return None
    value = metrics.get(name)
    if value is None or value != value:
        log.warning("optimized_metric %r was not logged or is NaN (logged: %s): returning no value, so a sweep "
                    "records this job as failed", name, sorted(metrics))
        return None
    return value
