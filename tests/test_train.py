"""End to end: every model on every dataset, outputs of a run, exact resume, bad input, loggers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmexp.errors import NonFiniteLossError, ShapeMismatchError
from mmexp.train import train
from tests.conftest import FAST, FASHION_ROOT, SMALL_SHAPES, TINY, compose_cfg

DATASETS = ["shapes", "digits", "fashion_mnist", "mnist", "cifar10", "celeba", "folder"]


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("model", ["dcgan", "vae", "vqvae"])
def test_fast_dev_run_every_model_on_every_dataset(tmp_path, data_roots, model, data):
    if data not in data_roots:
        pytest.skip(f"{FASHION_ROOT} is absent: apt-get install dataset-fashion-mnist")
    cfg = compose_cfg(tmp_path, f"model={model}", f"data={data}", "debug=fdr", "metrics=none",
                      "data.batch_size=4", "data.eval_batch_size=4", *FAST, *TINY[model], *data_roots[data])
    metrics = train(cfg)
    losses = {k: v for k, v in metrics.items() if k.startswith("train/")}
    assert losses, f"no training loss was logged: {metrics}"
    assert all(math.isfinite(v) for v in losses.values()), losses


def run_dir_of(cfg) -> Path:
    return Path(cfg.paths.output_dir)


def test_short_run_writes_checkpoints_samples_and_metrics(tmp_path):
    """The default model and data, shortened: the run directory holds what the README promises."""
    cfg = compose_cfg(tmp_path, *FAST, *TINY["dcgan"], *SMALL_SHAPES, "data.batch_size=16",
                      "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
                      "metrics.num_samples=32", "metrics.reference_samples=32", "metrics.batch_size=32",
                      "data.dataset.num_test=16", "test=true")
    metrics = train(cfg)
    run = run_dir_of(cfg)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-step*.ckpt")), "best checkpoint by val/fid"
    grids = sorted((run / "samples").glob("step*.png"))
    assert len(grids) == 2, "one grid per validation"
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("val/fid", "val/kid_mean", "val/kid_std"):
        assert key in saved and isinstance(saved[key], float), saved
    assert saved["protocol/name"] == "val"
    # test=true: the best checkpoint scored on the test split, the same way
    assert "test/fid" in saved and "test/kid_mean" in saved, saved
    # scored against the 16 test images, not against the val reference still loaded from validation
    assert saved["protocol/counts/num_real"] == 16 and saved["test/fid"] != saved["val/fid"], saved
    assert saved["val/fid"] == pytest.approx(metrics["val/fid"])
    assert (run / "csv" / "metrics.csv").is_file()


def test_image_size_the_model_cannot_take_is_caught_before_training(tmp_path):
    cfg = compose_cfg(tmp_path, *FAST, *SMALL_SHAPES, "data.image_size=48")
    with pytest.raises(ShapeMismatchError) as err:
        train(cfg)
    assert "48" in str(err.value)


def test_channel_mismatch_names_both_shapes(tmp_path):
    cfg = compose_cfg(tmp_path, *FAST, *TINY["dcgan"], *SMALL_SHAPES,
                      "model.generator.channels=1", "model.discriminator.channels=1")
    with pytest.raises(ShapeMismatchError) as err:
        train(cfg)
    message = str(err.value)
    assert "(3, 32, 32)" in message and "(1, 32, 32)" in message, message
    assert not (run_dir_of(cfg) / "checkpoints").exists(), "nothing may train"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from mmexp.models.vae import VAE

    original = VAE.training_step
    calls = {"n": 0}

    def poisoned(self, batch, batch_idx):
        calls["n"] += 1
        if calls["n"] == 7:  # a loss that blows up at the 7th step
            batch = dict(batch, image=batch["image"] * float("nan"))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VAE, "training_step", poisoned)
    cfg = compose_cfg(tmp_path, *FAST, *TINY["vae"], *SMALL_SHAPES, "model=vae", "data.batch_size=8",
                      "metrics=none", "trainer.max_steps=20", "trainer.limit_val_batches=0",
                      "callbacks.last_checkpoint.every_n_train_steps=5")
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    assert "step" in str(err.value)
    kept = torch.load(run_dir_of(cfg) / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values() if t.is_floating_point())


def test_wandb_offline_run_writes_its_files(tmp_path):
    cfg = compose_cfg(tmp_path, *FAST, *TINY["dcgan"], *SMALL_SHAPES, "logger=wandb", "metrics=none",
                      "trainer.max_steps=4", "trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1",
                      "data.batch_size=16")
    assert cfg.logger.wandb.offline is True
    train(cfg)
    runs = list((run_dir_of(cfg) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir_of(cfg)).rglob("*"))
    assert list(runs[0].glob("*.wandb")), "the run's event file"
    # the W&B run id travels in the checkpoint so a resumed run continues the same W&B run
    ckpt = torch.load(run_dir_of(cfg) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["mmexp"]["logger_ids"]["wandb"] in runs[0].name
