"""MetricSuite under DDP: two gloo processes, each fed its shard the way Lightning's DistributedSampler
deals it (every W-th sample, the last round padded with repeats), report what one process reports
over the same images; the reference statistics are computed from every rank's images and written once.
"""

from __future__ import annotations

import math
import os
import socket
import time

import pytest
import torch

from mmexp.metrics import MetricSuite
from mmexp.metrics import distributed as mdist

N_REAL, N_FAKE = 5, 7  # odd: the sampler pads both
OPTIONS = {"name": "t", "metrics": "fid,kid,pr,psnr,ssim", "batch_size": 4, "kid_subsets": 20}
RESULTS = ("fid", "kid_mean", "kid_std", "precision", "recall", "psnr", "ssim")


def _shard(n: int, rank: int, world: int) -> list[int]:
    """torch.utils.data.DistributedSampler(shuffle=False, drop_last=False) over range(n)."""
    total = math.ceil(n / world) * world
    order = list(range(n)) + list(range(n))[: total - n]
    return order[rank:total:world]


def _feed(suite: MetricSuite, real, fake, indices_real, indices_fake, batch: int = 3) -> None:
    for i in range(0, len(indices_real), batch):
        idx = torch.tensor(indices_real[i : i + batch])
        suite.update_real(real[idx], idx)
        suite.update_pair(fake[idx], real[idx], idx)  # pairs: fake i against real i
    for i in range(0, len(indices_fake), batch):
        idx = torch.tensor(indices_fake[i : i + batch])
        suite.update_fake(fake[idx], idx)


def _worker(rank: int, world: int, port: int, real, fake, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes share the cores
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # 3 more generated samples than fed: the indices a caller must still generate
        suite = MetricSuite(refstats_dir=f"{out}/refstats", num_samples=N_FAKE + 3, **OPTIONS)
        key = suite.reference_key(dataset="photos", split="test", resolution=32)
        assert not suite.load_reference(key)
        _feed(suite, real, fake, _shard(N_REAL, rank, world), _shard(N_FAKE, rank, world))
        suite.save_reference(key)  # every rank's images, written by rank 0 only
        missing = suite.missing_fake_indices()
        results = suite.compute()
        # a second suite finds the file rank 0 wrote, on every rank
        again = MetricSuite(refstats_dir=f"{out}/refstats", **OPTIONS)
        loaded = again.load_reference(again.reference_key(dataset="photos", split="test", resolution=32))
        # rank 0's buffers win, whatever each rank holds
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.fill_(rank + 1.0)
        mdist.broadcast_buffers(bn)
        torch.save({"results": results, "counts": suite.last_counts, "loaded": loaded, "n": again.num_real,
                    "missing": missing, "bn": bn.running_mean.clone()}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_ranks(ctx, timeout: float, poll: float) -> None:
    """Wait for spawned ranks; kill them and fail after ``timeout`` seconds (a collective one rank never joined)."""
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=poll):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two ranks did not finish (a collective that only one rank entered?)")


def test_two_gloo_ranks_equal_one_process(metrics_cache, metrics_photos, metrics_float, tmp_path):
    real = metrics_float(metrics_photos(32, N_REAL, "a", seed=11))
    fake = metrics_float(metrics_photos(32, N_FAKE, "b", seed=12))
    ctx = torch.multiprocessing.spawn(_worker, args=(2, _free_port(), real, fake, str(tmp_path)), nprocs=2,
                                      join=False)
    _join_ranks(ctx, 600, poll=5)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    single = MetricSuite(refstats_dir=str(tmp_path / "single"), **OPTIONS)
    _feed(single, real, fake, list(range(N_REAL)), list(range(N_FAKE)))
    expected = single.compute()
    assert set(expected) == set(RESULTS)
    for r in ranks:
        for name in RESULTS:
            assert r["results"][name] == pytest.approx(expected[name], rel=1e-4, abs=1e-9), name
        assert r["loaded"] and r["n"] == N_REAL
        # padding repeats are counted once: the counts of the whole split
        assert r["counts"]["num_real"] == N_REAL and r["counts"]["num_fake"] == N_FAKE
        assert r["counts"]["num_pairs"] == N_REAL
        assert r["missing"] == [N_FAKE, N_FAKE + 1, N_FAKE + 2]
        assert torch.equal(r["bn"], torch.ones(3))
    assert expected["fid"] > 10  # different photos: a real distance
    files = sorted((tmp_path / "refstats").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt", files  # one writer, no stray temporary files
    stored = torch.load(files[0], weights_only=True)["tensors"]
    assert int(stored["n"]) == N_REAL and stored["features"].shape == (N_REAL, 2048)


def test_gather_without_process_group_sorts_and_drops_repeats():
    samples = mdist.IndexedSamples()
    samples.add(torch.tensor([4, 0, 2]), v=torch.tensor([[4.0], [0.0], [2.0]]))
    samples.add(torch.tensor([0, 5]), v=torch.tensor([[9.0], [5.0]]))  # index 0 again: a padding repeat
    index, values = samples.gather()
    assert index.tolist() == [0, 2, 4, 5] and values["v"].flatten().tolist() == [0.0, 2.0, 4.0, 5.0]
    assert not mdist.is_distributed() and mdist.all_gather_cat(torch.ones(2)).tolist() == [1.0, 1.0]


# -- caption and label accuracy (metrics=t2i) under DDP ------------------------------------------------------
# the small reader of tests/test_faithfulness.py (seconds of CPU): good enough that accuracies are not all 0
READER = {"num_train": 384, "pixel_steps": 300, "batch_size": 2048, "head_steps": 600, "width": 16}
N_CAPTIONED = 11  # odd: the sampler pads the last round with a repeat


def _captioned_data():
    """Real shapes images with captions and labels, half of them another image's (so accuracies are not all 1)."""
    from mmexp.data.shapes import ShapesDataset

    store = ShapesDataset("val", num_val=N_CAPTIONED, seed=5, max_shapes=2).rendered()
    images = torch.from_numpy(store["images"]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    captions = [str(c) for c in store["captions"]]
    labels = torch.from_numpy(store["labels"])
    half = N_CAPTIONED // 2
    captions = captions[:half] + captions[half + 1:] + captions[half:half + 1]
    labels = torch.cat([labels[:half], labels[half:].roll(1)])
    return images, captions, labels


def _feed_captioned(suite, images, captions, labels, indices, batch: int = 3) -> None:
    for i in range(0, len(indices), batch):
        idx = torch.tensor(indices[i : i + batch])
        caps = [captions[j] for j in idx.tolist()]
        suite.update_conditional(images[idx], caps, labels[idx], idx)  # the generated images' conditions
        suite.update_conditional(images[idx], caps, None, idx, real=True)  # the reader's ceiling


def _captioned_suite(cache_dir: str) -> MetricSuite:
    from mmexp.metrics.faithfulness import AttributeReader

    reader = AttributeReader(cache_dir=cache_dir, **READER)  # trained by the test, loaded from its cache here
    # fewer generated samples than fed: indices >= num_samples must be ignored on every rank alike
    return MetricSuite(metrics=["caption_acc", "label_acc"], num_samples=N_CAPTIONED - 2,
                       reference_samples=N_CAPTIONED, attribute_reader=reader)


def _captioned_worker(rank: int, world: int, port: int, cache_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        suite = _captioned_suite(cache_dir)
        _feed_captioned(suite, *_captioned_data(), _shard(N_CAPTIONED, rank, world))
        torch.save({"results": suite.compute(), "counts": suite.last_counts}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_caption_and_label_accuracy_under_two_gloo_ranks_equal_one_process(tmp_path):
    from mmexp.metrics.faithfulness import AttributeReader

    cache = str(tmp_path / "cache")
    AttributeReader(cache_dir=cache, **READER).net()  # train once; the ranks load it
    single = _captioned_suite(cache)
    _feed_captioned(single, *_captioned_data(), list(range(N_CAPTIONED)))
    expected = single.compute()
    # not trivially equal: accuracies strictly between 0 and 1 (half the captions and labels belong elsewhere)
    assert 0 < expected["caption_all"] < 1 and 0 < expected["label_acc"] < 1, expected
    assert expected["real_caption_all"] != expected["caption_all"], expected

    ctx = torch.multiprocessing.spawn(_captioned_worker, args=(2, _free_port(), cache, str(tmp_path)), nprocs=2,
                                      join=False)
    _join_ranks(ctx, 300, poll=2)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        assert set(got["results"]) == set(expected)
        for name, value in expected.items():
            assert got["results"][name] == pytest.approx(value, abs=1e-12), name
        # padding repeats are counted once; indices >= num_samples are left out
        assert got["counts"]["num_captioned"] == N_CAPTIONED - 2 and got["counts"]["num_labelled"] == N_CAPTIONED - 2
        assert got["counts"]["num_real_captioned"] == N_CAPTIONED
