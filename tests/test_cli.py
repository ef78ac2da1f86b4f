"""`python -m mmexp` as a user types it, from a directory that is not the repository."""

from __future__ import annotations

import json

import torch

from tests.conftest import run_cli

TINY_GAN = ["model.generator.base_channels=8", "model.discriminator.base_channels=8",
            "data.dataset.num_train=64", "data.dataset.num_val=32", "data.dataset.num_test=32",
            "data.batch_size=16", "trainer=cpu", "trainer.enable_progress_bar=false"]


def test_help_lists_groups_and_options(tmp_path):
    out = run_cli("--help", cwd=tmp_path).stdout
    for text in ("trainer:", "logger:", "metrics:", "experiment:"):
        assert text in out, out
    # every model config is listed (a model added later only lengthens the line)
    models = next(line for line in out.splitlines() if line.strip().startswith("model:"))
    assert {"dcgan", "sngan", "diffusion", "vae", "vqvae", "vq_prior"} <= {m.strip() for m in models.split(":", 1)[1].split(",")}, models
    for dataset in ("shapes", "digits", "fashion_mnist", "celeba", "folder"):
        assert dataset in out


def test_unknown_option_lists_the_available_ones(tmp_path):
    proc = run_cli("model=nope", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/nope'" in proc.stderr
    for choice in ("dcgan", "vae", "vqvae"):
        assert choice in proc.stderr


def test_run_dir_override_and_outputs(tmp_path):
    run = tmp_path / "myrun"
    run_cli(f"hydra.run.dir={run}", "logger=csv", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
            "metrics.num_samples=32", "metrics.reference_samples=32", f"paths.cache_dir={tmp_path / 'cache'}",
            *TINY_GAN, cwd=tmp_path)
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("*.png"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/fid" in metrics and "val/kid_mean" in metrics


def test_multirun_makes_one_directory_per_run(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("-m", "seed=1,2", "debug=fdr", "metrics=none", "logger=none", f"hydra.sweep.dir={sweep}",
            *TINY_GAN, cwd=tmp_path)
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert runs == ["0", "1"], list(sweep.rglob("*"))
    seeds = [(sweep / r / ".hydra" / "overrides.yaml").read_text() for r in runs]
    assert "seed=1" in seeds[0] and "seed=2" in seeds[1]


def test_ddp_on_two_cpu_processes_with_hydra(tmp_path):
    """Lightning re-launches `python -m mmexp` for rank 1; Hydra must hand it the same config and dir.
    Validation metrics cover both ranks' images, and one process writes the reference statistics."""
    run = tmp_path / "ddp"
    run_cli(f"hydra.run.dir={run}", "trainer=ddp_cpu", "trainer.max_steps=4", "trainer.limit_val_batches=1",
            "trainer.check_val_every_n_epoch=1", "metrics.num_samples=32", "metrics.reference_samples=32",
            "metrics.batch_size=16", "metrics.kid_subsets=10", f"paths.cache_dir={tmp_path / 'cache'}",
            "data.eval_batch_size=16", "logger=csv", *TINY_GAN[:-2], "trainer.enable_progress_bar=false",
            cwd=tmp_path, timeout=600)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # val/fid is logged on both ranks, so the best checkpoint (a collective save) is written
    assert list((run / "checkpoints").glob("best-step*.ckpt"))
    assert not any(p.name != "ddp" for p in tmp_path.iterdir() if p.is_dir() and p.name not in ("ddp", "logs", "cache")), \
        "rank 1 must not create a run directory of its own"
    metrics = json.loads((run / "metrics.json").read_text())
    # 32 val images, one batch of 16 per rank: both ranks' images count
    assert metrics["protocol/counts/num_real"] == 32 and metrics["protocol/counts/num_fake"] == 32, metrics
    assert metrics["val/fid"] > 0 and "val/kid_mean" in metrics
    (stats,) = (tmp_path / "cache" / "refstats").iterdir()
    assert int(torch.load(stats, weights_only=True)["tensors"]["n"]) == 32


def test_a_diverged_sweep_job_does_not_end_the_sweep(tmp_path):
    """seed=1 diverges (a learning rate of 1e30), seed=2 still runs; the single-run form fails loudly."""
    sweep = tmp_path / "sweep"
    common = ["model=vae", "model.encoder.base_channels=8", "model.encoder.num_res_blocks=0",
              "metrics=none", "logger=none", "trainer=cpu", "trainer.max_steps=3", "trainer.limit_val_batches=0",
              "data.dataset.num_train=64", "data.batch_size=16", "trainer.enable_progress_bar=false"]
    proc = run_cli("-m", "model.optimizer.lr=1e30,1e-3", f"hydra.sweep.dir={sweep}", *common, cwd=tmp_path)
    assert "diverged" in proc.stdout + proc.stderr
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file(), "the second job ran to the end"
    single = run_cli("model.optimizer.lr=1e30", f"hydra.run.dir={tmp_path / 'single'}", *common, cwd=tmp_path,
                     check=False)
    assert single.returncode != 0 and "NonFiniteLossError" in single.stderr + single.stdout
