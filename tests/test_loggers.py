"""Loggers: W&B credentials detection, one W&B run per job (multirun and Optuna), resumed runs continue
their W&B run, the summary holds every number with its protocol and provenance; Optuna sweeps survive
failed trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mmexp.loggers import wandb_offline
from mmexp.train import train
from tests import wandb_files
from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg, run_cli

TINY_GAN = [*TINY["dcgan"], *SMALL_SHAPES, "data.batch_size=16", "trainer=cpu", "trainer.enable_progress_bar=false"]
TINY_VAE = ["model=vae", *TINY["vae"], *SMALL_SHAPES, "data.batch_size=16", "trainer=cpu",
            "trainer.enable_progress_bar=false", "trainer.max_steps=3", "metrics=none"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME without W&B credentials and an environment without W&B variables."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_wandb_is_offline_without_credentials(home):
    assert wandb_offline() is True


def test_wandb_goes_online_with_an_api_key(home, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_offline() is False
    monkeypatch.setenv("WANDB_MODE", "offline")  # an explicit mode wins
    assert wandb_offline() is True


def test_wandb_goes_online_after_wandb_login(home):
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert wandb_offline() is False
    (home / ".netrc").write_text("machine example.com\n  login user\n  password secret\n")
    assert wandb_offline() is True


def test_the_composed_config_follows_the_detection(home, tmp_path, monkeypatch):
    assert compose_cfg(tmp_path / "a", "logger=wandb").logger.wandb.offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert compose_cfg(tmp_path / "b", "logger=wandb").logger.wandb.offline is False


def test_each_multirun_job_gets_its_own_wandb_run_also_when_one_fails(tmp_path):
    """Job 0 diverges (lr 1e30) and fails, job 1 trains: two W&B runs, each in its job's directory, each
    finished with its own exit code."""
    sweep = tmp_path / "sweep"
    run_cli("-m", "model.optimizer.lr=1e30,1e-3", "logger=wandb", f"hydra.sweep.dir={sweep}",
            "trainer.limit_val_batches=0", *TINY_VAE, cwd=tmp_path)
    files = [wandb_files.run_file(sweep / str(job)) for job in (0, 1)]
    ids = [wandb_files.run_id(f) for f in files]
    assert ids[0] != ids[1]
    assert wandb_files.exit_code(files[0]) == 1, "the diverged job's run is finished as failed"
    assert wandb_files.exit_code(files[1]) == 0


def test_a_resumed_run_continues_its_wandb_run_and_the_summary_has_protocol_and_provenance(tmp_path):
    first = compose_cfg(tmp_path / "first", *FAST, *TINY_GAN, "logger=wandb", "trainer.max_steps=4",
                        "trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1",
                        "metrics.num_samples=16", "metrics.reference_samples=16", "metrics.kid_subset_size=8")
    train(first)
    run1 = Path(first.paths.output_dir)
    f1 = wandb_files.run_file(run1)
    summary = wandb_files.summary(f1)
    saved = json.loads((run1 / "metrics.json").read_text())
    assert summary["val/fid"] == pytest.approx(saved["val/fid"])
    assert summary["protocol/name"] == "val" and summary["provenance/torch"] == torch.__version__
    ckpt = torch.load(run1 / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["mmexp"]["logger_ids"]["wandb"] == wandb_files.run_id(f1)

    resumed = compose_cfg(tmp_path / "resumed", *FAST, *TINY_GAN, "logger=wandb", "trainer.max_steps=8",
                          "metrics=none", f"ckpt_path={run1 / 'checkpoints' / 'last.ckpt'}")
    train(resumed)
    assert wandb_files.run_id(wandb_files.run_file(Path(resumed.paths.output_dir))) == wandb_files.run_id(f1)


FAILING_SEARCH = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: random
optimized_metric: val/loss
hydra:
  mode: MULTIRUN
  sweeper:
    n_trials: 4
    n_jobs: 1
    direction: minimize
    storage: null
    study_name: failures
    # seed 4 draws: diverged, diverged, no validation, a good run (a grid sampler would stop the study
    # itself once exhausted, which the sweeper reports as an error when the last point failed)
    sampler:
      seed: 4
    params:
      model.optimizer.lr: choice(1.0e+30, 0.001)
      trainer.limit_val_batches: choice(0, 1)
"""


def test_an_optuna_sweep_goes_on_past_failed_trials_with_one_wandb_run_each(tmp_path):
    """The real Optuna sweeper, 4 trials: some diverge (lr 1e30), some never validate (so their
    optimized_metric is never logged), one succeeds. The sweep records the failed trials, finishes and
    writes its results; every trial has its own W&B run."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "failing.yaml").write_text(FAILING_SEARCH)
    sweep = tmp_path / "sweep"
    proc = run_cli(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hparams_search=failing", "logger=wandb",
                   f"hydra.sweep.dir={sweep}", *TINY_VAE, cwd=tmp_path)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"model.optimizer.lr": 0.001, "trainer.limit_val_batches": 1}, results
    overrides = [(sweep / str(job) / ".hydra" / "overrides.yaml").read_text() for job in range(4)]
    diverged = sum("lr=1.0e+30" in o or "lr=1e+30" in o for o in overrides)
    unvalidated = sum(("limit_val_batches=0" in o) and not ("lr=1.0e+30" in o or "lr=1e+30" in o) for o in overrides)
    assert diverged >= 1 and unvalidated >= 1, overrides
    assert (proc.stdout + proc.stderr).count("Failed experiment") == diverged + unvalidated
    ids = {wandb_files.run_id(wandb_files.run_file(sweep / str(job))) for job in range(4)}
    assert len(ids) == 4


def test_a_missing_sweeper_plugin_names_the_install_command(monkeypatch):
    import importlib.util

    from mmexp import __main__ as entry

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_optuna") else real(name, *a))
    message = entry.missing_plugin(["hparams_search=optuna_dcgan", "seed=1"])
    assert message and 'pip install "mmexp[optuna]"' in message and "hparams_search=optuna_dcgan" in message
    assert entry.missing_plugin(["seed=1"]) is None
