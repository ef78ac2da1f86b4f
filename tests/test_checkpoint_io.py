"""A checkpoint write that dies half-way leaves the previous checkpoint intact."""

from __future__ import annotations

import os

import pytest
import torch

from mmexp.callbacks import AtomicCheckpointIO
from mmexp.io import atomic_torch_save
from mmexp.callbacks.run_state import collect_rng_states, restore_rng_states


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
