"""task=eval and task=sample rebuild a model from its checkpoint alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmexp.evaluate import evaluate, sample
from mmexp.train import train
from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A few steps of a tiny GAN and VQ-VAE; their last checkpoints."""
    ckpts = {}
    for model in ("dcgan", "vqvae"):
        tmp = tmp_path_factory.mktemp(model)
        cfg = compose_cfg(tmp, f"model={model}", *FAST, *TINY[model], *SMALL_SHAPES, "data.batch_size=16",
                          "metrics=none", "trainer.max_steps=4", "trainer.limit_val_batches=0", "logger=none")
        train(cfg)
        ckpts[model] = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return ckpts


def test_eval_scores_a_checkpoint_with_a_named_protocol(tmp_path, trained):
    cfg = compose_cfg(tmp_path, "task=eval", f"ckpt_path={trained['dcgan']}", "metrics=fid10k_test",
                      "trainer=cpu", "trainer.enable_progress_bar=false",
                      # the protocol, shrunk for a test: 40 generated (more than the 32-image split,
                      # so the rest are generated) against the whole test split
                      "metrics.num_samples=40", "metrics.reference_samples=32", "metrics.batch_size=16")
    results = evaluate(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["protocol/name"] == "fid10k_test" and saved["protocol/reference_split"] == "test"
    assert saved["eval/fid"] > 0 and "eval/kid_mean" in saved
    assert saved["eval/fid"] == pytest.approx(results["eval/fid"])
    assert saved["protocol/counts/num_fake"] == 40 and saved["protocol/counts/num_real"] == 32
    beside = trained["dcgan"].parents[1] / "eval" / "fid10k_test.json"
    assert json.loads(beside.read_text())["eval/fid"] == saved["eval/fid"]


def test_eval_without_checkpoint_says_what_is_needed(tmp_path):
    from mmexp.errors import ConfigError

    cfg = compose_cfg(tmp_path, "task=eval")
    with pytest.raises(ConfigError, match="ckpt_path"):
        evaluate(cfg)


def test_sample_writes_a_grid_and_one_png_per_image(tmp_path, trained):
    cfg = compose_cfg(tmp_path, "task=sample", f"ckpt_path={trained['dcgan']}", "n=9", "trainer=cpu")
    sample(cfg)
    out = Path(cfg.paths.output_dir) / "samples"
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 9
    assert Image.open(images[0]).size == (32, 32)
    assert Image.open(out / "grid.png").size[0] > 3 * 32


def test_sample_from_vqvae_writes_reconstructions(tmp_path, trained):
    cfg = compose_cfg(tmp_path, "task=sample", f"ckpt_path={trained['vqvae']}", "n=4", "trainer=cpu")
    sample(cfg)
    assert len(list((Path(cfg.paths.output_dir) / "samples" / "images").glob("*.png"))) == 4
