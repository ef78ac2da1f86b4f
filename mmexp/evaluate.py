"""``task=eval`` and ``task=sample``: rebuild a trained model from its checkpoint alone and use it.

A checkpoint carries the composed config it was trained with (see ``RunState``), so
``python -m mmexp task=eval ckpt_path=RUN/checkpoints/last.ckpt metrics=fid10k_test`` needs nothing
else. ``data.*`` overrides on the command line still apply (a dataset that moved: ``data.root=...``).
"""

from __future__ import annotations

import logging
import os

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torchvision.utils import make_grid, save_image

from mmexp.callbacks import AtomicCheckpointIO, ValidationMetrics
from mmexp.pipeline import rebuild
from mmexp.grids import to_unit
from mmexp.errors import ConfigError
from mmexp.config import build, data_identity, stable_hash
from mmexp.io import to_float, write_metrics_json

log = logging.getLogger("mmexp")


def _command_line_overrides(prefix: str) -> list[str]:
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not running under Hydra (called from Python)
        return []
    return [o for o in overrides if o.lstrip("+~").startswith(prefix)]


def load_trained(cfg: DictConfig) -> tuple[pl.LightningModule, pl.LightningDataModule, DictConfig]:
    """Model (with the checkpoint's weights) and datamodule, both from the checkpoint's own config; ``data.*``
    overrides from this command line win (the dataset may live elsewhere now), and so does a ``degradation=...``
    (score a restoration model on another degradation than it trained on). Without ``ckpt_path``, a model without
    trained weights (a classical restorer: ``model=bicubic``...) is built, with the data, from this command line's
    config."""
    if not cfg.get("ckpt_path"):
        model = build(cfg.model) if cfg.get("model") is not None and not needs_checkpoint(cfg.model) else None
        if model is None:
            raise ConfigError(f"task={cfg.task} needs ckpt_path=PATH (a checkpoint written by task=train)")
        return model.eval(), build(cfg.data), cfg
    model, train_cfg, _ = rebuild(cfg.ckpt_path, _command_line_overrides("data."))
    if _command_line_overrides("degradation"):
        # the stored config is resolved: data.degradation holds the training run's, so replace it there too
        chosen = OmegaConf.to_container(cfg.degradation, resolve=True) if cfg.get("degradation") is not None else None
        with open_dict(train_cfg):
            train_cfg.degradation = chosen
            train_cfg.data.degradation = chosen
            # the command line's degradation is the one scored, also where training scored another one
            if "eval_degradation" in train_cfg.data:
                train_cfg.data.eval_degradation = None
    return model, build(train_cfg.data), train_cfg


def needs_checkpoint(model_cfg: DictConfig) -> bool:
    """Whether the model of ``model_cfg`` gets its weights from a checkpoint (False: a classical method, or a
    network that comes with pretrained weights, ``pretrained: true``); True when unknown."""
    from hydra.utils import get_class

    if model_cfg.get("pretrained"):
        return False
    try:
        return bool(getattr(get_class(model_cfg._target_), "needs_checkpoint", True))
    except (ImportError, ValueError, AttributeError):
        return True


def score_peers(cfg: DictConfig, datamodule: pl.LightningDataModule, metrics: dict) -> dict[str, float]:
    """Score the classical ``peers`` (name -> model config) on the test split with the ``metrics`` protocol, as the
    trained model was (``test/*``), and log whether the model beats each: ``peer/<name>/<metric>`` and
    ``margin/<name>/<metric>`` (model minus peer; for LPIPS, lower is better)."""
    out: dict[str, float] = {}
    if cfg.get("metrics") is None:  # metrics=none: no protocol to score the peers with (nor the model)
        log.info("peers %s not scored: metrics=none", sorted(cfg.peers))
        return out
    for name, peer_cfg in cfg.peers.items():
        peer = build(peer_cfg)
        callback = ValidationMetrics(build(cfg.metrics), prefix=f"peer/{name}",
                                     data_id=stable_hash(data_identity(cfg.data)), split="test")
        trainer: pl.Trainer = build(cfg.trainer, callbacks=[callback], logger=False, max_epochs=1,
                                    enable_checkpointing=False)
        trainer.test(peer, datamodule=datamodule, verbose=False)
        for key, value in trainer.callback_metrics.items():
            if not key.startswith(f"peer/{name}/"):
                continue
            metric = key.rsplit("/", 1)[1]
            out[key] = to_float(value)
            mine = to_float(metrics.get(f"test/{metric}"))
            if mine is None:
                continue
            margin = mine - out[key]
            out[f"margin/{name}/{metric}"] = margin
            better = margin < 0 if "lpips" in metric else margin > 0
            log.info("%s %s %s: model %.4f vs %s %.4f (%+.4f)", "BEATS" if better else "does NOT beat", name, metric,
                     mine, name, out[key], margin)
    return out


def eval_protocol(cfg: DictConfig, train_cfg: DictConfig) -> DictConfig:
    """The metrics protocol ``task=eval`` scores with: ``metrics=`` from the command line when given; else the
    checkpoint's own (a restoration run trained with ``metrics=restoration``/``sr`` is scored by PSNR/SSIM on its
    test split, not by the default FID protocol), with this machine's ``refstats_dir``; else the default."""
    own = train_cfg.get("metrics") if cfg.get("ckpt_path") else None
    if own is None or _command_line_overrides("metrics"):
        return cfg.metrics
    own = OmegaConf.create(OmegaConf.to_container(own, resolve=True))
    if "refstats_dir" in own and cfg.metrics is not None and "refstats_dir" in cfg.metrics:
        own.refstats_dir = cfg.metrics.refstats_dir
    log.info("task=eval: the checkpoint's own metrics protocol '%s' (metrics=NAME chooses another)",
             own.get("name", "?"))
    return own


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score a checkpoint with the ``metrics`` protocol on its reference split; write metrics.json."""
    if cfg.get("metrics") is None:
        raise ConfigError("task=eval needs a metrics protocol, e.g. metrics=fid10k_test (metrics=none was given)")
    model, datamodule, train_cfg = load_trained(cfg)
    suite = build(eval_protocol(cfg, train_cfg))
    # a protocol may score several splits (metrics=t2i: val, then the compositional split); the first is
    # reported as eval/<metric>, the others as eval_<split>/<metric>
    splits = list(getattr(suite, "splits", ()) or (suite.reference_split or "test",))
    metrics, protocol = {}, None
    for i, split in enumerate(splits):
        prefix = "eval" if i == 0 else f"eval_{split}"
        callback = ValidationMetrics(suite, prefix=prefix, data_id=stable_hash(data_identity(train_cfg.data)),
                                     split=split)
        trainer: pl.Trainer = build(
            cfg.trainer, callbacks=[callback], logger=False, plugins=[AtomicCheckpointIO()], max_epochs=1
        )
        datamodule.setup("validate" if split == "val" else ("test" if split == "test" else "fit"))
        # trainer.validate(dataloaders=...) runs no datamodule hooks: the loader applies the degradation itself
        loader = datamodule.dataloader(split, batch_size=suite.batch_size, degrade=True)
        with torch.random.fork_rng():
            torch.manual_seed(int(suite.seed))
            trainer.validate(model, dataloaders=loader, verbose=False)
        metrics.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith(f"{prefix}/")})
        if protocol is None:
            protocol = callback.protocol
        elif protocol is not None and "counts" in (callback.protocol or {}):
            protocol[f"counts_{split}"] = callback.protocol["counts"]
    if protocol is not None and len(splits) > 1:
        protocol["splits"] = splits
    # every rank holds the same numbers (the callback gathers all ranks' samples); one writes them
    if not trainer.is_global_zero:
        return {k: v for k, v in ((k, to_float(v)) for k, v in metrics.items()) if v is not None}
    out = write_metrics_json(os.path.join(cfg.paths.output_dir, "metrics.json"), metrics, protocol)
    if cfg.get("ckpt_path"):  # and beside the evaluated run, so its results stay with it
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(cfg.ckpt_path)))
        os.makedirs(os.path.join(run_dir, "eval"), exist_ok=True)
        write_metrics_json(os.path.join(run_dir, "eval", f"{suite.name}.json"), metrics, protocol)
    for key, value in out.items():
        log.info("%s = %s", key, value)
    return {k: v for k, v in out.items() if isinstance(v, float)}


def sample(cfg: DictConfig) -> dict[str, float]:
    """Write ``n`` images (a grid and one PNG each) from a checkpoint into the run's samples/."""
    model, datamodule, _ = load_trained(cfg)
    n = int(cfg.n)
    out_dir = os.path.join(cfg.paths.output_dir, "samples")
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    with torch.no_grad():
        try:
            images = model.generate(n, generator=generator)
            grid_images, nrow = images, int(n**0.5) or 1
        except NotImplementedError as why:
            # reconstruction models (VQ-VAE before its prior): reconstruct validation images
            log.info("%s; writing reconstructions of validation images instead", why)
            datamodule.setup("validate")
            inputs = torch.cat([b["image"] for b in _take(datamodule.dataloader("val"), n)])[:n].to(device)
            images = model.reconstruct(inputs)
            grid_images = torch.stack([inputs, images], dim=1).flatten(0, 1)
            nrow = 2 * max(1, int((n / 2) ** 0.5))
    save_image(make_grid(to_unit(grid_images), nrow=nrow, padding=2, pad_value=1.0), os.path.join(out_dir, "grid.png"))
    for i, image in enumerate(to_unit(images)):
        save_image(image, os.path.join(out_dir, "images", f"{i:05d}.png"))
    log.info("wrote %d images and grid.png to %s", n, out_dir)
    return {}


def _take(loader, n: int):
    seen = 0
    for batch in loader:
        yield batch
        seen += batch["image"].shape[0]
        if seen >= n:
            return
