"""task=eval and task=sample rebuild a model from its checkpoint alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmexp.grids import to_unit
from mmexp.errors import ConfigError
from mmexp.evaluate import evaluate, load_trained, sample
from mmexp.train import train
from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg, run_cli


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
    cfg = compose_cfg(tmp_path, "task=sample", f"ckpt_path={trained['dcgan']}", "n=9", "seed=5", "trainer=cpu")
    sample(cfg)
    out = Path(cfg.paths.output_dir) / "samples"
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 9
    assert Image.open(out / "grid.png").size[0] > 3 * 32
    # the files hold the checkpoint's samples for seed=5, as 8-bit PNGs (torchvision's rounding)
    model, _, _ = load_trained(cfg)
    with torch.no_grad():
        expected = model.generate(9, generator=torch.Generator().manual_seed(5))
    expected = (to_unit(expected) * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    written = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in images])
    assert written.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(written, expected)
    assert (written[0] != written[1]).any()  # one sample per noise, not one image repeated


def test_sample_from_vqvae_writes_reconstructions(tmp_path, trained):
    cfg = compose_cfg(tmp_path, "task=sample", f"ckpt_path={trained['vqvae']}", "n=4", "trainer=cpu")
    sample(cfg)
    assert len(list((Path(cfg.paths.output_dir) / "samples" / "images").glob("*.png"))) == 4


def test_eval_on_two_processes_equals_one(tmp_path, trained):
    """The generated set depends on the seed and the sample count, never on the number of processes:
    DDP (gloo, 2 ranks) and one process report the same FID/KID over the same images. A test split of
    27 makes the sampler pad rank 1 with a repeat of image 0, which must count once."""
    common = ["task=eval", f"ckpt_path={trained['dcgan']}", "metrics=fid10k_test", "metrics.num_samples=40",
              "metrics.batch_size=16", "metrics.kid_subsets=20", "data.dataset.num_test=27",
              "logger=none", "trainer.enable_progress_bar=false"]
    runs = {}
    for name, trainer in (("one", ["trainer=cpu"]), ("two", ["trainer=ddp_cpu", "trainer.devices=2"])):
        run_cli(*common, *trainer, f"hydra.run.dir={tmp_path / name}", f"paths.cache_dir={tmp_path / name / 'cache'}",
                cwd=tmp_path, timeout=600)
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        assert runs[name]["protocol/counts/num_real"] == 27 and runs[name]["protocol/counts/num_fake"] == 40
        # the reference statistics: computed from every rank's images, one file
        (stats,) = (tmp_path / name / "cache" / "refstats").iterdir()
        assert int(torch.load(stats, weights_only=True)["tensors"]["n"]) == 27
    for key in ("eval/fid", "eval/kid_mean", "eval/kid_std", "eval/precision", "eval/recall"):
        assert runs["two"][key] == pytest.approx(runs["one"][key], rel=1e-4, abs=1e-9), key
    assert runs["one"]["eval/fid"] > 0


def test_eval_of_vqvae_is_rfid_of_reconstructions(tmp_path, trained):
    """A VQ-VAE cannot sample yet: its FID is of reconstructions of the split, named rfid, and says so."""
    cfg = compose_cfg(tmp_path, "task=eval", f"ckpt_path={trained['vqvae']}", "metrics=fid10k_test",
                      "trainer=cpu", "trainer.enable_progress_bar=false", "metrics.num_samples=40",
                      "metrics.batch_size=16", "metrics.kid_subsets=20", "data.dataset.num_test=16")
    evaluate(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert "eval/rfid" in saved and "eval/rkid_mean" in saved and "eval/fid" not in saved, saved
    assert saved["protocol/samples"] == "reconstructions of split test"
    assert saved["protocol/counts/num_fake"] == 16  # no top-up: reconstructions of the 16 test images
    assert compose_cfg(tmp_path, "model=vqvae").callbacks.best_checkpoint.monitor == "val/rfid"
    assert compose_cfg(tmp_path, "model=vqvae").optimized_metric == "val/rfid"


def test_load_gives_a_pipeline_whose_images_depend_on_their_seed_only(trained):
    import mmexp

    pipe = mmexp.load(trained["dcgan"], device="cpu")
    four = pipe.generate(n=4, seed=10)
    assert four.shape == (4, 3, 32, 32) and four.min() >= -1 and four.max() <= 1
    assert torch.equal(pipe.generate(n=1, seed=12)[0], four[2]), "image j of a call is drawn with seed + j"
    with pytest.raises(ConfigError, match="not conditional"):
        pipe.generate("a small red circle on a black background")


def test_generate_task_writes_a_folder_dataset_and_a_grid_beside_it(tmp_path, trained):
    from mmexp.generate import generate

    cfg = compose_cfg(tmp_path, "task=generate", f"ckpt_path={trained['dcgan']}", "n=5", "seed=3", "trainer=cpu")
    generate(cfg)
    run = Path(cfg.paths.output_dir)
    files = sorted((run / "generated").glob("*.png"))
    assert len(files) == 5 and (run / "grid.png").is_file() and not (run / "generated" / "grid.png").exists()
    records = [json.loads(line) for line in (run / "generated" / "captions.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in records] == [f.name for f in files]
    import mmexp

    expected = mmexp.load(trained["dcgan"], device="cpu").generate(n=5, seed=3)
    written = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32)).permute(2, 0, 1) / 255
                           for f in files])
    assert (written - (expected + 1) / 2).abs().max() <= 1 / 255 + 1e-6


def test_generate_refuses_bad_input_and_writes_nothing(tmp_path, trained):
    from mmexp.generate import generate

    cfg = compose_cfg(tmp_path, "task=generate", f"ckpt_path={trained['dcgan']}", "prompts=/nonexistent.txt")
    with pytest.raises(ConfigError, match="no such file"):
        generate(cfg)
    cfg = compose_cfg(tmp_path, "task=generate", f"ckpt_path={trained['dcgan']}", "prompt=a red circle")
    with pytest.raises(ConfigError, match="not conditional"):
        generate(cfg)
    assert not (Path(cfg.paths.output_dir) / "generated").exists()
