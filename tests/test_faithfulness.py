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


# -- the attribute reader and caption accuracy ---------------------------------------------------------
# A reader small enough to train in seconds on a loaded CPU; the metrics=t2i reader trains longer (see README).
TINY_READER = dict(num_train=384, pixel_steps=300, batch_size=2048, head_steps=600, width=16)


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    from mmexp.metrics.faithfulness import AttributeReader

    r = AttributeReader(cache_dir=str(tmp_path_factory.mktemp("reader")), **TINY_READER)
    r.net()
    return r


@pytest.fixture(scope="module")
def real_val():
    """Real shapes images the reader never saw (another seed and split), their captions and labels."""
    import torch

    ds = ShapesDataset("val", num_val=160, seed=77)
    store = ds.rendered()
    images = torch.from_numpy(store["images"]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return images, [str(c) for c in store["captions"]], torch.from_numpy(store["labels"])


def _shuffled(captions):
    import random

    out = list(captions)
    random.Random(0).shuffle(out)
    return out


def test_reader_scores_real_images_high_and_shuffled_captions_low(reader, real_val):
    from mmexp.metrics.faithfulness import caption_checks, label_checks, summarize

    images, captions, labels = real_val
    reading = reader.read(images)
    real = summarize(caption_checks(reading, captions))
    shuffled = summarize(caption_checks(reading, _shuffled(captions)))
    print("real", real, "\nshuffled", shuffled)
    # ceiling: the (tiny) reader reads real images almost perfectly (measured: every check >= 0.989,
    # caption_all 0.975 on these 160 images; shuffled: caption_all 0.006)
    for check in ("caption_background", "caption_color", "caption_count"):
        assert real[check] >= 0.97, (check, real)
    for check in ("caption_shape", "caption_size", "caption_relation"):
        assert real[check] >= 0.95, (check, real)
    assert real["caption_all"] >= 0.9, real
    # floor: the same images against other images' captions
    assert shuffled["caption_all"] <= 0.05, shuffled
    assert shuffled["caption_color"] <= real["caption_color"] - 0.3
    assert label_checks(reading, labels, captions).mean() >= 0.85
    assert label_checks(reading, labels.roll(1), captions).mean() <= 0.5


def test_reader_is_cached_by_its_config(reader, real_val):
    import torch

    from mmexp.metrics.faithfulness import AttributeReader

    assert reader.path.is_file()
    again = AttributeReader(cache_dir=reader.cache_dir, **TINY_READER)
    assert again.path == reader.path
    x = real_val[0][:8]
    torch.testing.assert_close(again.net()(x)["shape"], reader.net()(x)["shape"])  # loaded, not retrained
    other = AttributeReader(cache_dir=reader.cache_dir, **{**TINY_READER, "seed": 5})
    assert other.key != reader.key and not other.path.is_file()


def test_suite_scores_captions_and_labels_through_the_callback(reader, real_val):
    import torch

    from mmexp.callbacks import ValidationMetrics
    from mmexp.metrics import MetricSuite
    from mmexp.metrics.faithfulness import caption_checks, summarize

    images, captions, labels = real_val
    suite = MetricSuite(metrics=["caption_acc", "label_acc"], num_samples=100, reference_samples=100,
                        attribute_reader=reader)
    callback = ValidationMetrics(suite)
    callback._active = True
    fakes = []
    for start in range(0, 160, 64):
        # fakes: the real images themselves in the first batch, then images that belong to other captions
        sl = slice(start, start + 64)
        fake = images[sl] if start == 0 else images[sl].roll(1, 0)
        fakes.append(fake)
        batch = {"index": torch.arange(start, min(start + 64, 160))}
        callback._update({"real": images[sl], "fake": fake, "caption": captions[sl], "label": labels[sl]}, batch)
    results = suite.compute()
    expected = summarize(caption_checks(reader.read(torch.cat(fakes)[:100]), captions[:100]))
    for key, value in expected.items():
        assert results[key] == pytest.approx(value), key
    ceiling = summarize(caption_checks(reader.read(images[:100]), captions[:100]))
    assert results["real_caption_all"] == pytest.approx(ceiling["caption_all"])
    assert results["real_caption_all"] > results["caption_all"] + 0.2
    assert 0 < results["label_acc"] <= 1 and suite.last_counts["num_captioned"] == 100
    protocol = suite.protocol
    assert protocol["faithfulness"]["reader"]["key"] == reader.key and "caption_checks" in protocol["faithfulness"]


def test_caption_accuracy_rejects_bad_input(reader, real_val):
    from mmexp.errors import ConfigError as Bad
    from mmexp.metrics import MetricSuite

    suite = MetricSuite(metrics=["caption_acc"], attribute_reader=reader)
    with pytest.raises(Bad, match="a photo of a dog"):
        suite.update_conditional(real_val[0][:1], ["a photo of a dog"])
    with pytest.raises(ConfigError, match="unknown metric 'caption'"):
        MetricSuite(metrics=["caption"])


def test_t2i_protocol_composes(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path, "metrics=t2i", "data=shapes", "data.dataset.holdout=[red circle]")
    suite = instantiate(cfg.metrics)
    assert suite.metrics == ("fid", "kid", "caption_acc", "label_acc") and suite.splits == ("val", "compositional")
    assert suite.attribute_reader.cache_dir == str(cfg.paths.cache_dir)
    assert instantiate(cfg.data).dataset("compositional").holdout == (("red", "circle"),)


def test_eval_t2i_scores_val_and_compositional_splits_of_a_trained_text_model(tmp_path, reader):
    """task=eval metrics=t2i on a checkpoint of a (tiny, 2-step) text-conditioned diffusion model writes caption
    accuracy for the val and the compositional split, with the protocol (splits, counts, reader) beside them."""
    import json
    from pathlib import Path

    from mmexp.evaluate import evaluate
    from mmexp.train import train
    from tests.conftest import FAST, TINY, compose_cfg

    data = ["data.dataset.num_train=32", "data.dataset.num_val=12", "data.dataset.num_compositional=10",
            "data.dataset.max_shapes=1", "data.dataset.holdout=[red circle,blue square]"]
    run = compose_cfg(tmp_path / "train", "model=diffusion", *FAST, *TINY["diffusion"], *data, "data.batch_size=8",
                      "metrics=none", "trainer.max_steps=2", "trainer.limit_val_batches=0", "logger=none")
    train(run)
    ckpt = Path(run.paths.output_dir) / "checkpoints" / "last.ckpt"
    # the module's tiny reader, found in its cache by its config
    tiny_reader = [f"metrics.attribute_reader.{k}={v}" for k, v in TINY_READER.items()]
    cfg = compose_cfg(tmp_path / "eval", "task=eval", f"ckpt_path={ckpt}", "metrics=t2i", "metrics.metrics=[caption_acc]",
                      "metrics.num_samples=10", "metrics.reference_samples=10", "metrics.batch_size=5", *tiny_reader,
                      f"metrics.attribute_reader.cache_dir={reader.cache_dir}", "trainer=cpu",
                      "trainer.enable_progress_bar=false")
    results = evaluate(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    for prefix in ("eval", "eval_compositional"):
        for check in ("color", "shape", "size", "background", "all"):
            assert 0 <= saved[f"{prefix}/caption_{check}"] <= 1, (prefix, check, saved)
            assert saved[f"{prefix}/caption_{check}"] == pytest.approx(results[f"{prefix}/caption_{check}"])
        # the ceiling: real images of the split with their own captions, read by the same reader
        assert saved[f"{prefix}/real_caption_color"] >= 0.9, saved
    assert saved["protocol/name"] == "t2i" and json.loads(saved["protocol/splits"]) == ["val", "compositional"]
    assert saved["protocol/counts/num_captioned"] == 10 and saved["protocol/counts_compositional/num_captioned"] == 10
    assert saved["protocol/faithfulness/reader/key"] == reader.key
    beside = ckpt.parents[1] / "eval" / "t2i.json"
    assert json.loads(beside.read_text())["eval_compositional/caption_color"] == saved["eval_compositional/caption_color"]
