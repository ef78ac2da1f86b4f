"""The first run a newcomer makes (`python -m mmexp`), in miniature: it must learn images that differ
from one another. The paper's DCGAN, the default before, collapsed to near-identical grey tiles on the
shapes data (the same 192 iterations as below: per-image mean colour std 0.004, per-pixel std 0.04;
session 11's SN-DCGAN default, width 16: 0.25 and 0.28)."""

import csv
import math

import torch

import mmexp
from tests.conftest import FAST, compose_cfg, run_cli


def test_the_default_is_the_r1_dcgan_on_shapes(tmp_path):
    cfg = compose_cfg(tmp_path)
    assert cfg.model._target_ == "mmexp.models.gan.GAN"
    assert cfg.data.dataset._target_.endswith("ShapesDataset") and cfg.data.image_size == 32
    # non-saturating loss + lazy R1 on a BatchNorm D: FID 109.3 where SN-DCGAN's hinge + spectral norm reached 130.8
    terms = cfg.model.loss.terms
    assert terms.adversarial._target_.endswith("NonSaturatingLoss") and terms.r1._target_.endswith("R1Penalty")
    assert (terms.r1.weight, terms.r1.every) == (0.1, 4)
    assert not cfg.model.discriminator.spectral_norm and cfg.model.generator.upsample == "nearest"
    assert cfg.model.ema_decay == 0.995 and list(cfg.model.optimizer_g.betas) == [0.0, 0.999]
    # half DCGAN's width in channels-last layout: 3.2x the iterations in the same 5 CPU minutes, FID 155.7 -> 130.8
    assert cfg.model.generator.base_channels == cfg.model.discriminator.base_channels == 16 and cfg.model.channels_last
    assert cfg.trainer.max_epochs == cfg.trainer.check_val_every_n_epoch == 80
    # a bar redrawn every 10 batches, not Lightning's threaded Rich bar (benchmarks/README.md: 0.90x -> 0.98x)
    assert cfg.callbacks.progress_bar._target_ == "mmexp.callbacks.ProgressBar" and cfg.callbacks.progress_bar.refresh_rate == 10


def test_a_tiny_default_run_does_not_collapse(tmp_path):
    run = tmp_path / "run"
    # with the progress bar, as a user runs it (FAST switches it off)
    run_cli(*FAST, "trainer.enable_progress_bar=true", "logger=none", "metrics=none", "data.dataset.num_train=1024",
            "trainer.max_epochs=12",
            f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}")
    x = mmexp.load(run / "checkpoints" / "last.ckpt", device="cpu").generate(n=64, seed=0).float()
    assert x.shape == (64, 3, 32, 32)
    per_pixel_std = x.std(0).mean().item()  # 0 for a constant image
    mean_colour_std = x.mean((2, 3)).std(0).mean().item()  # backgrounds (most of each image) differ
    assert per_pixel_std > 0.1 and mean_colour_std > 0.03, (per_pixel_std, mean_colour_std)


def test_the_default_runs_its_manual_steps_straight_to_torch(tmp_path, monkeypatch):
    """`python -m mmexp` as a user runs it (progress bar, CSV logger, every default callback): nothing listens on
    the way through backward and the optimizer step, so none of its steps goes through Lightning's strategy
    (GenerativeModule.direct_steps: ~400 Python calls a batch fewer), yet Lightning counts every step."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from mmexp.models.base import GenerativeModule
    from mmexp.train import train

    through_lightning, decided = [], []
    backward = SingleDeviceStrategy.backward
    monkeypatch.setattr(SingleDeviceStrategy, "backward",
                        lambda self, *a, **k: (through_lightning.append(1), backward(self, *a, **k))[1])
    direct = GenerativeModule.direct_steps
    monkeypatch.setattr(GenerativeModule, "direct_steps", lambda self: (decided.append(direct(self)), decided[-1])[1])
    cfg = compose_cfg(tmp_path, "trainer=cpu", "trainer.enable_progress_bar=true", "logger=csv", "metrics=none",
                      "data.dataset.num_train=256", "data.dataset.num_val=64", "trainer.max_steps=12")
    train(cfg)
    assert decided and all(decided) and through_lightning == []
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12
    with open(next((tmp_path / "run").rglob("metrics.csv"))) as f:
        logged = [r for r in csv.DictReader(f) if r.get("train/d_loss")]
    assert logged and all(math.isfinite(float(r["train/d_loss"])) for r in logged)
