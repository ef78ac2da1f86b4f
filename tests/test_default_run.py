"""The first run a newcomer makes (`python -m mmexp`), in miniature: it must learn images that differ
from one another. The paper's DCGAN, the default before, collapsed to near-identical grey tiles on the
shapes data (the same 192 iterations as below: per-image mean colour std 0.004, per-pixel std 0.04;
session 11's SN-DCGAN default, width 16: 0.25 and 0.28)."""


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
