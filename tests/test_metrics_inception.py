"""Inception-based metrics against torch-fidelity on real photos (skimage's bundled images, cropped).

The reference run uses torch-fidelity with ``feature_extractor_weights_path`` = the converted FID weights
plus a FIXED RANDOM fc layer (fixture ``metrics_full_weights``): FID/KID/PR only use pool3 features, so
the comparison is fair; IS compares both implementations on the same (random) classifier.
"""

from __future__ import annotations

import json
import subprocess
import sys
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmexp.metrics import MetricSuite
from mmexp.metrics import inception as inc

N = 12  # images per set: Inception on CPU is slow


class _UInt8Dataset(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def _f(x):
    return x.float() / 127.5 - 1


def test_conversion_matches_torchscript(metrics_cache):
    w = metrics_cache["weights"]
    ours = inc.InceptionV3Features.from_weights(w)
    ts = torch.jit.load(str(inc.fid_helper_model_path()), map_location="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.inference_mode():
        a, logits = ours(x)
        b = ts(x.float() / 128 - 1)  # fid-helper's model takes x_uint8 / 128 - 1 at 299x299
    assert logits is None and a.shape == (3, 2048)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    # the converted file sits in the hub cache under its own name, not torch-fidelity's
    assert w.path.name == inc.CONVERTED_FILE and w.path.parent == inc.hub_checkpoint_dir()
    assert not (w.path.parent / inc.FIDELITY_FILE).exists()


@pytest.mark.parametrize("size", [299, 64])
def test_fid_kid_is_pr_equal_torch_fidelity(size, metrics_full_weights, metrics_photos):
    import torch_fidelity

    real = metrics_photos(size, N, "a", seed=size)
    fake = metrics_photos(size, N, "b", seed=size + 1)
    suite = MetricSuite(metrics="fid,kid,is,pr", weights_path=str(metrics_full_weights), batch_size=N,
                        kid_subsets=50, is_splits=3)
    suite.update_real(_f(real))
    suite.update_fake(_f(fake[: N // 2]))
    suite.update_fake(_f(fake[N // 2 :]))
    ours = suite.compute()
    ref = torch_fidelity.calculate_metrics(
        input1=_UInt8Dataset(fake), input2=_UInt8Dataset(real), cuda=False, batch_size=N,
        feature_extractor="inception-v3-compat", fid=True, kid=True, isc=True, prc=True, kid_subsets=50, kid_subset_size=N, isc_splits=3,
        feature_extractor_weights_path=str(metrics_full_weights), cache=False, verbose=False,
        save_cpu_ram=True,  # no DataLoader worker processes (PR then uses its chunked, equal variant)
    )
    assert suite.protocol["counts"]["kid_subset_size"] == N  # adapted from 1000 to the sample count
    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    assert rel(ours["fid"], ref["frechet_inception_distance"]) < 1e-3
    assert rel(ours["kid_mean"], ref["kernel_inception_distance_mean"]) < 1e-3
    assert rel(ours["is_mean"], ref["inception_score_mean"]) < 1e-3
    assert rel(ours["is_std"], ref["inception_score_std"]) < 1e-2
    assert ours["precision"] == pytest.approx(ref["precision"]) and ours["recall"] == pytest.approx(ref["recall"])
    assert ours["fid"] > 10  # different photos: a real distance, not a degenerate 0


def test_is_skipped_without_logits_and_reference_cache(metrics_cache, metrics_photos, caplog, tmp_path):
    real = _f(metrics_photos(32, 8, "a", seed=5))
    fake = _f(metrics_photos(32, 8, "b", seed=6))
    suite = MetricSuite(name="t", metrics="fid,kid,is", refstats_dir=str(tmp_path), batch_size=8)
    key = suite.reference_key(dataset="photos", split="test", resolution=32)
    assert suite.needs_real and not suite.load_reference(key)
    suite.update_real(real)
    path = suite.save_reference(key)
    assert path.exists() and not suite.needs_real
    suite.update_fake(fake)
    with caplog.at_level(logging.WARNING):
        out1 = suite.compute()
    assert "is_mean" not in out1 and "is_std" not in out1 and "no logits" in caplog.text
    assert set(out1) == {"fid", "kid_mean", "kid_std"}
    # a fresh suite reuses the cached statistics (update_real is then a no-op)
    s2 = MetricSuite(name="t", metrics="fid,kid,is", refstats_dir=str(tmp_path), batch_size=8)
    k2 = s2.reference_key(dataset="photos", split="test", resolution=32)
    assert k2 == key and s2.load_reference(k2) and s2.protocol["reference_key"] == key
    s2.update_real(real[:1] * 0)
    s2.update_fake(fake)
    out2 = s2.compute()
    assert out2["fid"] == pytest.approx(out1["fid"], rel=1e-9) and out2["kid_mean"] == pytest.approx(out1["kid_mean"])
    # a different resolution is a different key; a corrupted file is rebuilt, not used
    assert s2.reference_key(dataset="photos", split="test", resolution=64) != key
    path.write_bytes(b"garbage")
    s3 = MetricSuite(name="t", metrics="fid", refstats_dir=str(tmp_path), batch_size=8)
    assert s3.ensure_reference([real[:5], {"image": real[5:]}], "photos", "test", 32) is False  # recomputed
    assert s3.ensure_reference([], "photos", "test", 32) is True  # now cached
    s3.update_fake(fake)
    # s3 keeps mu/sigma only (no kid/pr): the covariance form of the Fréchet distance is used
    assert s3.compute()["fid"] == pytest.approx(out1["fid"], rel=1e-5)
    suite.reset()
    assert suite.compute() == {} and suite.has_reference


def test_score_cli(metrics_cache, metrics_photos, tmp_path):
    for name, which in (("ref", "a"), ("test", "b")):
        d = tmp_path / name
        d.mkdir()
        for i, im in enumerate(metrics_photos(48, 4, which, seed=7)):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(d / f"{i:02d}.png")
    cmd = [sys.executable, "-m", "mmexp.score", str(tmp_path / "ref"), str(tmp_path / "test"),
           "--metrics", "fid,psnr,ssim", "--device", "cpu", "--batch-size", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(rec["metrics"]) == {"fid", "psnr", "ssim"} and rec["protocol"]["name"] == "score"
    # the same numbers as the suite fed the same pixels directly (files read here with PIL)
    pixels = {name: torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                                 for p in sorted((tmp_path / name).glob("*.png"))]) for name in ("ref", "test")}
    direct = MetricSuite(metrics="fid,psnr,ssim", batch_size=4)
    direct.update_real(_f(pixels["ref"]))
    direct.update_fake(_f(pixels["test"]))
    direct.update_pair(_f(pixels["test"]), _f(pixels["ref"]))
    expected = direct.compute()
    for name in ("fid", "psnr", "ssim"):
        assert rec["metrics"][name] == pytest.approx(expected[name], rel=1e-5), name
    assert expected["fid"] > 1 and 0 < expected["ssim"] < 1
    assert rec["protocol"]["feature_extractor"]["weights"]["file"] == inc.CONVERTED_FILE
    bad = subprocess.run(cmd[:5] + ["--metrics", "fid,nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nope" in bad.stderr and "psnr" in bad.stderr
