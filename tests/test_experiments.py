"""Every `experiment=` runs: a fast_dev_run of each, on its dataset's real files or fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import mmexp
from mmexp.train import train
from tests.conftest import FAST, TINY, compose_cfg

EXPERIMENTS = sorted(p.stem for p in (Path(mmexp.__file__).parent / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(tmp_path, data_roots, experiment):
    composed = compose_cfg(tmp_path, f"experiment={experiment}")
    data = Path(composed.hydra.runtime.choices.data).name
    model = Path(composed.hydra.runtime.choices.model).name
    if data not in data_roots:
        pytest.skip(f"experiment {experiment} needs {data}'s files")
    # test=false: the classical peers' scoring (test split, whole photos) is tested on its own
    cfg = compose_cfg(tmp_path, f"experiment={experiment}", "debug=fdr", "metrics=none", "test=false", *FAST,
                      "data.batch_size=4", "data.eval_batch_size=4", *TINY[model], *data_roots[data])
    metrics = train(cfg)
    assert any(k.startswith("train/") for k in metrics), OmegaConf.to_yaml(cfg.model)
