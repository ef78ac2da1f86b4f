"""The validation callback's reference statistics follow the images, not only the config."""

from __future__ import annotations

import os

import lightning as L
import numpy as np
from PIL import Image

from mmexp.callbacks import ValidationMetrics
from mmexp.config import build, data_identity, stable_hash
from mmexp.data.folder import ImageFolderDataset
from tests import fixtures
from tests.conftest import TINY, compose_cfg

FOLDER = ["data=folder", "data.image_size=32", "data.dataset.val_fraction=0.25", "data.dataset.test_fraction=0.25",
          "data.batch_size=4"]


def _rewrite(path, value: int) -> None:
    """Same name and format, other pixels, a later modification time."""
    with Image.open(path) as im:
        size, mode = im.size, im.mode
    Image.new("RGB", size, (value, 255 - value, value)).convert(mode if mode != "P" else "RGB").save(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_folder_fingerprint_follows_the_files(tmp_path):
    root = fixtures.write_image_folder_fixture(tmp_path / "images", n=8)
    first = ImageFolderDataset(root, "val", image_size=32, val_fraction=0.25).fingerprint()
    assert ImageFolderDataset(root, "val", image_size=32, val_fraction=0.25).fingerprint() == first
    val = ImageFolderDataset(root, "val", image_size=32, val_fraction=0.25)
    _rewrite(val.path(0), 200)
    edited = ImageFolderDataset(root, "val", image_size=32, val_fraction=0.25).fingerprint()
    assert edited != first
    Image.new("RGB", (40, 40), (1, 2, 3)).save(root / "cat" / "new.png")
    assert ImageFolderDataset(root, "val", image_size=32, val_fraction=0.25).fingerprint() not in (first, edited)


def test_changed_files_behind_an_unchanged_config_rebuild_the_statistics(tmp_path, metrics_cache):
    root = fixtures.write_image_folder_fixture(tmp_path / "images", n=12)
    cfg = compose_cfg(tmp_path, *FOLDER, f"data.root={root}", *TINY["dcgan"], "metrics.metrics=[fid,kid]",
                      "metrics.kid_subsets=10", "metrics.num_samples=4", "metrics.reference_samples=null",
                      "metrics.batch_size=8")
    model, suite = build(cfg.model), build(cfg.metrics)  # one suite: the Inception loads once
    refstats = tmp_path / "cache" / "refstats"

    def validate():
        """A new run with the same config: a fresh datamodule (the folder listed again)."""
        callback = ValidationMetrics(suite, data_id=stable_hash(data_identity(cfg.data)))
        trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False)
        datamodule = build(cfg.data)
        trainer.validate(model, datamodule=datamodule, verbose=False)
        return callback.suite.reference_key_in_use, float(trainer.callback_metrics["val/fid"]), datamodule

    key1, fid1, dm = validate()
    assert sorted(p.stem for p in refstats.iterdir()) == [key1]
    key2, fid2, _ = validate()
    assert key2 == key1 and fid2 == fid1  # unchanged files: the cache is used
    _rewrite(dm.dataset("val").path(0), 250)  # edited in place
    key3, fid3, _ = validate()
    assert key3 != key1 and fid3 != fid1
    assert sorted(p.stem for p in refstats.iterdir()) == sorted([key1, key3])
    Image.fromarray(np.full((50, 50, 3), 90, np.uint8)).save(root / "dog" / "added.png")  # a file added
    key4, _, _ = validate()
    assert key4 not in (key1, key3) and len(list(refstats.iterdir())) == 3
