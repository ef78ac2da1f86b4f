"""Shared fixtures: compose mmexp's configs in-process, with every path under a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"

# W&B never reaches the network from tests, and prints less
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


def compose_cfg(tmp_path: Path, *overrides: str, config_name: str = "train") -> DictConfig:
    """The config `python -m mmexp OVERRIDES` would run, with outputs and caches under tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="mmexp.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


# the cheapest settings that still run every hook
FAST = (
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "data.num_workers=0",
)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m mmexp ARGS` in a subprocess, as a user types it."""
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mmexp", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mmexp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str) -> DictConfig:
        return compose_cfg(tmp_path, *overrides)

    yield make
    GlobalHydra.instance().clear()
