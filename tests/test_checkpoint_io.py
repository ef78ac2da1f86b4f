"""A checkpoint write that dies half-way leaves the previous checkpoint intact."""

from __future__ import annotations

import os

import pytest
import torch

from mmexp.callbacks import AtomicCheckpointIO
from mmexp.io import atomic_torch_save
from mmexp.checkpoint import collect_rng_states, restore_rng_states


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save({"step": 2, "w": torch.zeros(1000)}, f)  # some bytes reach the disk...
        f.flush()
        raise KeyboardInterrupt("killed during the write")  # ...then the process is killed

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)

    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.ones(3))
    assert os.listdir(path.parent) == ["last.ckpt"], "no temporary file may be left behind"


def test_rng_states_round_trip():
    states = collect_rng_states()
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    restore_rng_states(states)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


class _WritesAMarker:
    """Unpickling this runs ``os.system(touch marker)``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "payload": _WritesAMarker(marker)}, path)
    return path, marker


def test_a_checkpoint_with_a_pickled_object_is_refused_and_nothing_in_it_runs(tmp_path):
    from mmexp.checkpoint import load_checkpoint
    from mmexp.errors import CheckpointError

    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "weights_only" in str(err.value)
    assert not marker.exists(), "unpickling ran code from the checkpoint"


@pytest.mark.parametrize("task", ["train", "eval", "sample"])
def test_every_task_refuses_a_malicious_checkpoint(tmp_path, task):
    from tests.conftest import run_cli

    path, marker = _malicious_checkpoint(tmp_path)
    proc = run_cli(f"task={task}", f"ckpt_path={path}", "trainer=cpu", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                   cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "CheckpointError" in proc.stderr and str(path) in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()


def test_checkpoints_written_by_mmexp_load_with_weights_only(tmp_path):
    from mmexp.checkpoint import SCHEMA_VERSION
    from mmexp.train import train
    from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg

    cfg = compose_cfg(tmp_path, *FAST, *TINY["dcgan"], *SMALL_SHAPES, "data.batch_size=16", "metrics=none",
                      "trainer.max_steps=4", "trainer.limit_val_batches=0", "logger=none")
    train(cfg)
    ckpt = torch.load(os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert ckpt["mmexp"]["schema"] == SCHEMA_VERSION
    restore_rng_states(ckpt["mmexp"]["rng_states"])


def test_a_schema_1_checkpoint_is_migrated_on_load_and_resumes(tmp_path, caplog):
    """Checkpoints written before schema 2 kept NumPy's RNG state as an ndarray: they still load (only the
    NumPy globals an ndarray needs are allowed), are migrated with a message, and training resumes from them."""
    import numpy as np

    from mmexp.checkpoint import SCHEMA_VERSION, load_checkpoint
    from mmexp.train import train
    from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg

    overrides = [*FAST, *TINY["dcgan"], *SMALL_SHAPES, "data.batch_size=16", "metrics=none",
                 "trainer.limit_val_batches=0", "logger=none"]
    cfg = compose_cfg(tmp_path / "a", *overrides, "trainer.max_steps=4")
    train(cfg)
    path = os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    old = torch.load(path, weights_only=True)
    rng = old["mmexp"]["rng_states"]
    n = rng["numpy"]
    rng["numpy"] = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    rng["python"] = (rng["python"]["version"], tuple(rng["python"]["internal"]), rng["python"]["gauss_next"])
    del old["mmexp"]["schema"]
    legacy = tmp_path / "legacy.ckpt"
    torch.save(old, legacy)
    with pytest.raises(Exception):
        torch.load(legacy, weights_only=True)  # what a plain weights_only load says of it

    with caplog.at_level("WARNING"):
        migrated = load_checkpoint(legacy)
    assert migrated["mmexp"]["schema"] == SCHEMA_VERSION and "migrated" in caplog.text
    resumed = compose_cfg(tmp_path / "b", *overrides, "trainer.max_steps=8", f"ckpt_path={legacy}")
    train(resumed)
    assert torch.load(os.path.join(resumed.paths.output_dir, "checkpoints", "last.ckpt"),
                      weights_only=True)["global_step"] == 8


LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy")


@pytest.mark.parametrize("name,terms", [
    ("dcgan", {"adversarial": ("HingeLoss", 1.0)}),
    ("vae", {"recon": ("BernoulliNLL", 1.0), "kl": ("GaussianKL", 4.0)}),
    ("vqvae", {"recon": ("MSELoss", 1.0), "commitment": ("CommitmentLoss", 0.5), "codebook": ("CodebookLoss", 1.0)}),
])
def test_checkpoints_of_the_previous_schema_rebuild_their_models_with_their_losses(tmp_path, caplog, name, terms):
    """Real checkpoints written before the loss group (tests/data/legacy): migrated on load with a message, the
    model rebuilt from the checkpoint alone has the losses it was trained with, and samples."""
    import shutil

    from mmexp.evaluate import load_trained, sample
    from tests.conftest import compose_cfg

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(os.path.join(LEGACY, f"{name}-schema1.ckpt"), ckpt)
    cfg = compose_cfg(tmp_path / "sample", "task=sample", f"ckpt_path={ckpt}", "n=4", "trainer=cpu")
    with caplog.at_level("WARNING"):
        model, _, train_cfg = load_trained(cfg)
    assert "migrated to schema" in caplog.text and "loss group" in caplog.text
    got = {k: (type(t).__name__, t.weight) for k, t in model.loss.terms.items()}
    assert got == terms
    if name == "vqvae":
        assert train_cfg.monitor.metric == "val/rfid"
    sample(cfg)
    assert len(list((tmp_path / "sample" / "run" / "samples" / "images").glob("*.png"))) == 4


def test_training_resumes_from_a_checkpoint_of_the_previous_schema(tmp_path):
    from mmexp.train import train
    from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg

    cfg = compose_cfg(tmp_path, *FAST, "model=dcgan", *TINY["dcgan"], *SMALL_SHAPES, "loss=gan_hinge", "data.batch_size=8",
                      "metrics=none", "logger=none", "trainer.max_steps=8", "trainer.limit_val_batches=0",
                      f"ckpt_path={os.path.join(LEGACY, 'dcgan-schema1.ckpt')}")
    train(cfg)
    out = torch.load(os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert out["global_step"] == 8 and out["mmexp"]["schema"] >= 3
