"""Restoration models (issue 9): networks, the relativistic GAN loss, every model config trains, init_from,
ESRGAN from an L1 checkpoint, SCICO's ported DnCNN, and the classical baselines through task=eval."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data as skd
import torch
import torch.nn.functional as F
from PIL import Image

from mmexp.checkpoint import init_weights
from mmexp.config import build
from mmexp.errors import CheckpointError, ConfigError, ShapeMismatchError
from mmexp.losses.adversarial import RelativisticAverageLoss
from mmexp.metrics.restoration import prepare, psnr_per_image
from mmexp.models.baselines import NLMeans, Telea, estimate_sigma
from mmexp.networks.discriminators import VGGStyleDiscriminator
from mmexp.networks.dncnn import DnCNN, read_flax_msgpack, scico_denoiser, scico_dncnn
from mmexp.networks.rrdbnet import RRDBNet
from mmexp.networks.srresnet import MSRResNet
from mmexp.train import train
from tests.conftest import FAST, compose_cfg
from tests.restoration_data import use_paired_crops

DATA = Path(__file__).parent / "data"

#: tiny networks: these tests check plumbing and contracts, not image quality
TINY_RESTORE = {
    "msrresnet": ["model.network.num_feat=8", "model.network.num_block=1", "model.network.upscale=2"],
    "rrdbnet": ["model.network.num_feat=8", "model.network.num_block=1", "model.network.num_grow_ch=4",
                "model.network.upscale=2"],
    "esrgan": ["model.network.num_feat=8", "model.network.num_block=1", "model.network.num_grow_ch=4",
               "model.network.upscale=2", "model.discriminator.base_channels=4"],
    "dncnn": ["model.network.depth=4", "model.network.num_feat=8"],
    "dncnn_pretrained": ["model.network.variant=6M"],
}
SCALE = {"msrresnet": 2, "rrdbnet": 2, "esrgan": 2}


def photo(size: int = 64, which: str = "astronaut", at: tuple[int, int] = (180, 200)) -> torch.Tensor:
    """A real photo crop ``[1, 3, size, size]`` in [-1, 1]."""
    a = getattr(skd, which)()[at[0]: at[0] + size, at[1]: at[1] + size, :3]
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr_per_image(prepare(a), prepare(b)).mean())


def restoration_cfg(tmp_path, model: str, *extra: str):
    cfg = compose_cfg(tmp_path, f"model={model}", *FAST, "data.batch_size=4", "data.eval_batch_size=4",
                      *TINY_RESTORE[model], *extra)
    return use_paired_crops(cfg, 32, scale=SCALE.get(model, 1), sigma=0 if model in SCALE else 25)


def tiny_checkpoint(tmp: Path, model: str) -> Path:
    """``model`` (tiny) trained for 3 steps on paired crops, without validation or logger: its last.ckpt."""
    cfg = restoration_cfg(tmp, model, "trainer.max_steps=3", "trainer.limit_val_batches=0", "logger=none",
                          "metrics=none")
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def needs_scico() -> None:
    if importlib.util.find_spec("scico") is None or importlib.util.find_spec("msgpack") is None:
        pytest.skip("SCICO's DnCNN weights ship with the scico package (pip install --no-deps scico) and are read "
                    "with msgpack; one of them is not installed")


# ------------------------------------------------------------------------------------------ networks and loss
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_msrresnet_upscales_any_size_and_starts_near_bilinear(scale):
    x = photo(24)[..., :21, :17]
    net = MSRResNet(num_feat=16, num_block=2, upscale=scale)
    y = net(x)
    assert y.shape == (1, 3, 21 * scale, 17 * scale)
    # the body starts small (scaled init), so the output begins close to the bilinear skip
    bilinear = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    assert (y - bilinear).abs().mean() < 0.1


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_rrdbnet_output_size(scale):
    assert RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, upscale=scale)(photo(16)).shape == (1, 3, 16 * scale,
                                                                                               16 * scale)


def test_networks_refuse_bad_settings():
    with pytest.raises(ConfigError, match="upscale"):
        MSRResNet(upscale=8)
    with pytest.raises(ConfigError, match="upscale"):
        RRDBNet(upscale=3)
    with pytest.raises(ConfigError, match="multiple of 32"):
        VGGStyleDiscriminator(input_size=48)
    with pytest.raises(ShapeMismatchError, match="64x64"):
        VGGStyleDiscriminator(base_channels=4, input_size=64)(torch.zeros(1, 3, 32, 32))


def test_relativistic_average_loss_matches_esrgan_formulation():
    """ESRGAN (BasicSR's esrgan_model): BCE-with-logits of real - mean(fake) against 1 and fake - mean(real)
    against 0 for D, the reverse for G, each half weighted 0.5."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(8, generator=g), torch.randn(8, generator=g) + 0.5
    bce = F.binary_cross_entropy_with_logits
    d_ref = 0.5 * (bce(real - fake.mean(), torch.ones(8)) + bce(fake - real.mean(), torch.zeros(8)))
    g_ref = 0.5 * (bce(real - fake.mean(), torch.zeros(8)) + bce(fake - real.mean(), torch.ones(8)))
    term = RelativisticAverageLoss()
    torch.testing.assert_close(term.d_loss(real_logits=real, fake_logits=fake), d_ref)
    torch.testing.assert_close(term(fake_logits=fake, real_logits=real), g_ref)


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("model", sorted(TINY_RESTORE))
def test_every_restoration_model_trains_and_previews(tmp_path, model):
    if model == "dncnn_pretrained":
        needs_scico()
    cfg = restoration_cfg(tmp_path, model, "debug=fdr")
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and metrics["val/psnr"] > 10
    if model == "esrgan":
        assert "train/d_loss" in metrics and "train/loss/adversarial" in metrics and "train/loss/perceptual" in metrics
    grids = list((Path(cfg.paths.output_dir) / "samples").glob("*.png"))
    assert len(grids) == 1
    # three rows (input | output | target) of 32 px images, 2 px padding
    assert Image.open(grids[0]).size[1] == 3 * 32 + 4 * 2


def test_restoration_model_refuses_a_scale_that_disagrees_with_the_data(tmp_path):
    cfg = restoration_cfg(tmp_path, "msrresnet", "debug=fdr", "model.network.upscale=4")  # data is x2
    with pytest.raises(ShapeMismatchError, match="scale"):
        train(cfg)


def test_adversarial_loss_without_discriminator_is_a_config_error(tmp_path):
    cfg = restoration_cfg(tmp_path, "rrdbnet", "loss=esrgan")
    with pytest.raises(ConfigError, match="discriminator"):
        build(cfg.model)


@pytest.fixture(scope="module")
def rrdb_checkpoint(tmp_path_factory) -> Path:
    """A tiny x2 RRDBNet trained with L1 for a few steps: the start of ESRGAN."""
    return tiny_checkpoint(tmp_path_factory.mktemp("rrdb"), "rrdbnet")


def test_init_from_reports_missing_and_unexpected_keys(tmp_path, rrdb_checkpoint, caplog):
    esrgan = build(restoration_cfg(tmp_path, "esrgan").model)
    with caplog.at_level("INFO", logger="mmexp.checkpoint"):
        missing, unexpected = init_weights(esrgan, rrdb_checkpoint)
    # the generator comes from the L1 run; the discriminator does not exist there
    assert missing and all(k.startswith("discriminator.") for k in missing)
    assert unexpected == []
    state = torch.load(rrdb_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in esrgan.network.state_dict().items():
        torch.testing.assert_close(value, state[f"network.{key}"], rtol=0, atol=0)
    assert "missing key(s)" in caplog.text and "discriminator." in caplog.text

    # the other way round: an L1 model from an ESRGAN checkpoint ignores the discriminator's keys
    torch.save({"state_dict": esrgan.state_dict()}, tmp_path / "esrgan.ckpt")
    rrdb = build(restoration_cfg(tmp_path, "rrdbnet").model)
    missing, unexpected = init_weights(rrdb, tmp_path / "esrgan.ckpt")
    assert missing == [] and unexpected and all(k.startswith("discriminator.") for k in unexpected)


def test_init_from_refuses_a_shape_mismatch_naming_the_parameter(tmp_path, rrdb_checkpoint):
    wider = build(restoration_cfg(tmp_path, "rrdbnet", "model.network.num_feat=16").model)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"network\.conv_first\.weight: checkpoint \(8, 3, 3, 3\) vs model "
                                              r"\(16, 3, 3, 3\)"):
        init_weights(wider, rrdb_checkpoint)
    for k, v in wider.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k])


def test_init_from_restarts_an_ema_from_the_loaded_weights(tmp_path, rrdb_checkpoint):
    model = build(restoration_cfg(tmp_path, "rrdbnet", "model.ema_decay=0.99").model)
    missing, _ = init_weights(model, rrdb_checkpoint)
    assert any(k.startswith("ema.module.") for k in missing)
    for (name, p), q in zip(model.network.named_parameters(), model.ema.module.parameters()):
        assert torch.equal(p, q), name


def test_esrgan_fine_tunes_from_the_l1_checkpoint(tmp_path, rrdb_checkpoint):
    """The ESRGAN command of the README: model=esrgan init_from=<L1 RRDB checkpoint>."""
    cfg = restoration_cfg(tmp_path, "esrgan", f"init_from={rrdb_checkpoint}", "trainer.max_steps=4",
                          "trainer.limit_val_batches=1", "logger=none")
    metrics = train(cfg)
    assert np.isfinite(metrics["train/d_loss"]) and np.isfinite(metrics["train/loss"])
    start = torch.load(rrdb_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    end = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                     weights_only=True)["state_dict"]
    # it started from the L1 weights (the first layer is still close) and trained (they moved)
    key = "network.conv_first.weight"
    assert 0 < (end[key] - start[key]).abs().max() < 0.05
    assert any(k.startswith("discriminator.") for k in end)


def test_init_from_through_the_entry_point_logs_and_is_skipped_on_resume(tmp_path, rrdb_checkpoint, caplog):
    cfg = restoration_cfg(tmp_path, "rrdbnet", f"init_from={rrdb_checkpoint}", f"ckpt_path={rrdb_checkpoint}",
                          "trainer.max_steps=4", "trainer.limit_val_batches=0", "logger=none", "metrics=none")
    with caplog.at_level("INFO", logger="mmexp"):
        train(cfg)
    assert "init_from" in caplog.text and "is not applied" in caplog.text


# ------------------------------------------------------------------------------------------ SCICO's DnCNN
def test_flax_msgpack_reader_reads_scico_layout():
    needs_scico()
    from mmexp.networks.dncnn import scico_weights_file

    tree = read_flax_msgpack(scico_weights_file("17M"))
    assert tree["params"]["conv_start"]["kernel"].shape == (3, 3, 1, 64)  # HWIO
    assert tree["params"]["conv_end"]["kernel"].shape == (3, 3, 64, 1)
    assert tree["batch_stats"]["ConvBNBlock_14"]["BatchNorm_0"]["var"].shape == (64,)


def test_scico_port_reproduces_scico_outputs():
    """The reference (tests/data/scico/scico_dncnn_reference.npz) is SCICO's own JAX forward pass
    (``scico.denoiser.DnCNN(variant)(noisy)``, scico 0.0.7, jax 0.8.1) on a 48x48 grey crop of skimage's
    astronaut with sigma = 25 Gaussian noise (numpy default_rng(25))."""
    needs_scico()
    ref = np.load(DATA / "scico" / "scico_dncnn_reference.npz")
    for variant in ("6M", "17M"):
        net = scico_dncnn(variant)
        with torch.no_grad():
            out = net(torch.from_numpy(ref["noisy"])[None, None])[0, 0].numpy()
        np.testing.assert_allclose(out, ref[f"scico_{variant}"], atol=1e-5)


def test_scico_port_against_jax_directly():
    """The strongest check, where SCICO and JAX are installed: both implementations on the same photo."""
    needs_scico()
    pytest.importorskip("jax", reason="SCICO's own forward needs jax (pip install jax flax)")
    pytest.importorskip("flax", reason="SCICO's own forward needs flax")
    from scico.denoiser import DnCNN as ScicoDnCNN

    x = np.asarray(Image.fromarray(skd.camera()).resize((96, 80)), dtype=np.float32) / 255
    x = x + np.random.default_rng(0).standard_normal(x.shape).astype(np.float32) * 0.1
    ours = scico_dncnn("17M")(torch.from_numpy(x)[None, None]).detach()[0, 0].numpy()
    np.testing.assert_allclose(ours, np.asarray(ScicoDnCNN("17M")(x)), atol=1e-5)


def test_scico_port_denoises_a_real_photo():
    """SCICO's 17M (trained at sigma 25.5) on a grey 256x256 photo at sigma 25 gains what DnCNN gains (~10 dB
    over the noisy input here; a broken layout or BatchNorm port gives noise or a blurred image)."""
    needs_scico()
    grey = torch.from_numpy(skd.camera()[128:384, 128:384].astype(np.float32) / 255)[None, None]
    noisy = grey + torch.randn(grey.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255
    with torch.no_grad():
        out = scico_dncnn("17M")(noisy)
    gain = psnr(out * 2 - 1, grey * 2 - 1) - psnr(noisy * 2 - 1, grey * 2 - 1)
    assert gain > 8, gain
    # colour images: the grey network on each channel of mmexp's [-1, 1] images
    rgb = photo(64)
    noisy_rgb = rgb + torch.randn(rgb.shape, generator=torch.Generator().manual_seed(1)) * 50 / 255
    with torch.no_grad():
        out_rgb = scico_denoiser("17M", 3)(noisy_rgb)
        per_channel = torch.cat([scico_dncnn("17M")((noisy_rgb[:, c:c + 1] + 1) / 2) * 2 - 1 for c in range(3)], 1)
    torch.testing.assert_close(out_rgb, per_channel)
    assert psnr(out_rgb, rgb) > psnr(noisy_rgb, rgb) + 5


def test_dncnn_is_residual():
    net = DnCNN(channels=3, depth=3, num_feat=4)
    for m in net.layers:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.weight)
    x = photo(16)
    torch.testing.assert_close(net.eval()(x), x)  # zero noise estimate -> the input itself


# ------------------------------------------------------------------------------------------ baselines
def test_estimate_sigma_on_a_real_photo():
    x = photo(256, "coffee", (100, 150))
    for sigma in (15, 25, 50):
        noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(sigma)) * sigma * 2 / 255
        assert estimate_sigma(noisy).item() == pytest.approx(sigma, rel=0.15)


def test_nlmeans_denoises_a_real_photo():
    x = photo(128, "coffee", (100, 150))
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 25 * 2 / 255
    out = NLMeans().restore(noisy)
    assert out.shape == x.shape and psnr(out, x) > psnr(noisy, x) + 4


def test_bm3d_denoises_a_real_photo():
    pytest.importorskip("bm3d", reason="model=bm3d is an optional extra (pip install bm3d)")
    from mmexp.models.baselines import BM3D

    x = photo(64, "coffee", (100, 150))
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 25 * 2 / 255
    assert psnr(BM3D(sigma=25).restore(noisy), x) > psnr(noisy, x) + 4


def test_telea_fills_only_the_hole():
    x = photo(64)
    hole = torch.zeros(1, 1, 64, 64)
    hole[..., 20:30, 25:40] = 1
    damaged = torch.where(hole > 0, torch.ones_like(x), x)
    out = Telea().restore(damaged, hole=hole)
    known = hole.expand_as(x) == 0
    assert torch.equal(out[known], damaged[known])  # known pixels composited back exactly
    assert psnr(out, x) > psnr(damaged, x) + 5


def test_bicubic_torch_kernel_is_f_interpolate():
    from mmexp.models.baselines import Bicubic

    x = photo(20)
    torch.testing.assert_close(Bicubic(scale=3, kernel="torch").restore(x),
                               F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False).clamp(-1, 1))


def test_bicubic_matlab_kernel_is_the_degradations_imresize():
    resize = pytest.importorskip("mmexp.degradations.resize", reason="the degradations are another branch")
    from mmexp.models.baselines import Bicubic

    x = photo(20)
    torch.testing.assert_close(Bicubic(scale=2).restore(x), resize.imresize(x, scale=2.0).clamp(-1, 1))


def test_identity_peer_is_the_noisy_input_at_the_textbook_psnr():
    # mid-grey images: nothing clips, so the "noisy input" row is 20 log10(255 / 25) = 20.17 dB at sigma 25
    from mmexp.degradations import GaussianNoise
    from mmexp.models.baselines import Identity

    clean = torch.zeros(4, 3, 64, 64)
    batch = GaussianNoise(sigma=25)({"image": clean}, seeds=[0, 1, 2, 3])
    out = Identity().restore(batch["input"])
    torch.testing.assert_close(out, batch["input"].clamp(-1, 1), rtol=0, atol=0)
    psnr = psnr_per_image(prepare(out), prepare(clean)).mean().item()
    assert psnr == pytest.approx(20 * math.log10(255 / 25), abs=0.05)


def test_baselines_run_through_task_eval_without_a_checkpoint(tmp_path):
    from mmexp.evaluate import evaluate

    cfg = compose_cfg(tmp_path, "task=eval", "model=bicubic", "model.kernel=torch", "model.scale=2",
                      "metrics=restoration", "metrics.metrics=[psnr,ssim]", "metrics.y_channel=true",
                      "metrics.crop_border=2", "trainer=cpu", "trainer.enable_progress_bar=false")
    use_paired_crops(cfg, 32, scale=2, n=6)
    results = evaluate(cfg)
    # the same number by hand: every test pair, Y channel, 2 px border cropped, averaged per image
    from tests.restoration_data import PairedCrops

    ds = PairedCrops("test", 32, 2, n=6)
    x = torch.stack([ds[i]["input"] for i in range(6)])
    y = torch.stack([ds[i]["target"] for i in range(6)])
    up = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)
    expected = psnr_per_image(prepare(up, True, 2), prepare(y, True, 2)).mean().item()
    assert results["eval/psnr"] == pytest.approx(expected, abs=1e-4)
    saved = json_of(Path(cfg.paths.output_dir) / "metrics.json")
    assert saved["protocol/restoration/color"] == "y" and saved["protocol/restoration/crop_border"] == 2


def test_trained_model_without_checkpoint_is_refused_by_task_eval(tmp_path):
    from mmexp.evaluate import evaluate

    cfg = compose_cfg(tmp_path, "task=eval", "model=msrresnet", "metrics=restoration")
    with pytest.raises(ConfigError, match="ckpt_path"):
        evaluate(cfg)


def json_of(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
