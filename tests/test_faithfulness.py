"""Faithfulness of text/label-to-image: held-out colour-shape pairs, the attribute reader, caption accuracy."""

from __future__ import annotations

import functools

import pytest

from mmexp.data import ImageDataModule
from mmexp.data.shapes import ShapesDataset, caption_for, parse_caption, parse_holdout
from mmexp.errors import CaptionParseError, ConfigError

HOLDOUT = ["red circle", "blue square"]


# -- held-out pairs and the compositional split ------------------------------------------------------
def _pairs(ds: ShapesDataset) -> list[set[tuple[str, str]]]:
    return [{(o.color, o.shape) for o in ds.scene(i).objects} for i in range(len(ds))]


def test_holdout_pairs_never_in_train_val_test_and_always_in_compositional():
    held = set(parse_holdout(HOLDOUT))
    kw = dict(num_train=400, num_val=100, num_test=100, num_compositional=100, holdout=HOLDOUT, render_once=False)
    for split in ("train", "val", "test"):
        assert not any(p & held for p in _pairs(ShapesDataset(split, **kw))), split
    comp = _pairs(ShapesDataset("compositional", **kw))
    assert all(p & held for p in comp)
    # both pairs are represented, and the captions say so
    assert all(any(pair in p for p in comp) for pair in held)
    ds = ShapesDataset("compositional", **kw)
    assert all("red circle" in ds.caption(i) or "blue square" in ds.caption(i) for i in range(20))
    # without the holdout the same seed does contain those pairs (the filter is what removes them)
    plain = _pairs(ShapesDataset("train", num_train=400, render_once=False))
    assert any(p & held for p in plain)


def test_holdout_is_deterministic_and_leaves_other_scenes_alone():
    kw = dict(num_train=50, num_compositional=30, holdout=HOLDOUT, render_once=False, seed=3)
    a, b = ShapesDataset("compositional", **kw), ShapesDataset("compositional", **kw)
    assert [a.caption(i) for i in range(30)] == [b.caption(i) for i in range(30)]
    # a train scene without a held-out pair is exactly the scene drawn without a holdout
    free, plain = ShapesDataset("train", **kw), ShapesDataset("train", num_train=50, render_once=False, seed=3)
    same = [free.caption(i) == plain.caption(i) for i in range(50)]
    assert all(s for s, p in zip(same, _pairs(plain)) if not p & set(parse_holdout(HOLDOUT)))
    assert not all(same)
    # the render cache is keyed by the holdout
    assert free.cache_key() != plain.cache_key()


def test_holdout_errors_name_the_values():
    with pytest.raises(ConfigError, match="pink circle"):
        ShapesDataset("train", holdout=["pink circle"])
    with pytest.raises(ConfigError, match="circle red"):
        ShapesDataset("train", holdout=["circle red"])
    with pytest.raises(ConfigError, match="holdout"):
        ShapesDataset("compositional")
    with pytest.raises(ConfigError, match="nonsense"):
        ImageDataModule(dataset=functools.partial(ShapesDataset, num_train=4), image_size=32, channels=3,
                        batch_size=2).dataset("nonsense")


def test_compositional_split_through_the_datamodule():
    dm = ImageDataModule(dataset=functools.partial(ShapesDataset, image_size=16, num_train=8, num_val=4, num_test=4,
                                                   num_compositional=6, holdout=HOLDOUT, render_once=False),
                         image_size=16, channels=3, batch_size=2, eval_batch_size=3)
    batches = list(dm.dataloader("compositional"))
    assert sum(b["image"].shape[0] for b in batches) == 6
    held = set(parse_holdout(HOLDOUT))
    assert all({(o.color, o.shape) for o in parse_caption(c).objects} & held for b in batches for c in b["caption"])


def test_caption_parser_round_trips_and_rejects():
    ds = ShapesDataset("train", num_train=200, render_once=False, max_shapes=4)
    for i in range(200):
        facts = parse_caption(ds.caption(i))
        assert facts.text() == ds.caption(i)
        assert [o.color for o in facts.objects] == [o.color for o in ds.scene(i).objects]
    assert caption_for(ds.scene(0)) == ds.caption(0)
    with pytest.raises(CaptionParseError, match="a photo of a dog"):
        parse_caption("a photo of a dog")
