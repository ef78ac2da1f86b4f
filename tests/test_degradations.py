"""Tests of mmexp/degradations and conf/degradation: MATLAB imresize against independent references, per-sample
seeding (batch-independent, new per train epoch, fixed for val), every config composing and running, clear errors.
Runs in a few seconds on 2 cores."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from mmexp.data import DigitsDataset, ImageDataModule, ShapesDataset
from mmexp.degradations import (
    JPEG,
    BoxMask,
    Compose,
    Downsample,
    FileMask,
    FreeFormMask,
    GaussianBlur,
    GaussianNoise,
    KernelMixtureBlur,
    MixedMask,
    ObjectMask,
    OneOf,
    OutpaintMask,
    PoissonNoise,
    RandomResize,
    SincFilter,
    gaussian_kernel,
    generalized_gaussian_kernel,
    imresize,
    jpeg_roundtrip,
    plateau_kernel,
    sinc_kernel,
)
from mmexp.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, MissingBatchKeyError, ShapeMismatchError
from tests.conftest import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "mmexp" / "conf"
DEGRADATIONS = sorted(p.stem for p in (CONF / "degradation").glob("*.yaml"))


# -- MATLAB imresize ----------------------------------------------------------------------------
def _pil_resize(x: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """PIL's bicubic (Keys a=-0.5, kernel stretched when shrinking, centres aligned: MATLAB's rule) on a float
    image. PIL drops the taps that fall outside the image where MATLAB mirrors, so callers pad symmetrically
    first and compare away from the padded border."""
    img = Image.fromarray(x.astype(np.float32), mode="F")
    return np.asarray(img.resize((size_hw[1], size_hw[0]), Image.BICUBIC), dtype=np.float64)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_down_matches_pil_on_symmetric_padding(scale):
    rng = np.random.default_rng(scale)
    h, w = 12 * scale + scale, 10 * scale  # non-square, sides divisible by the scale
    x = rng.uniform(-1, 1, (h, w))
    pad = 4 * scale  # the stretched kernel reaches 2 * scale pixels: PIL's truncation stays inside the pad
    padded = np.pad(x, pad, mode="symmetric")  # MATLAB's padding: mirror with the edge repeated
    ref = _pil_resize(padded, (padded.shape[0] // scale, padded.shape[1] // scale))
    ref = ref[pad // scale : pad // scale + h // scale, pad // scale : pad // scale + w // scale]
    ours = imresize(torch.from_numpy(x), scale=1 / scale).numpy()
    assert ours.shape == (h // scale, w // scale)
    np.testing.assert_allclose(ours, ref, atol=2e-6)  # PIL holds float32 pixels


def test_imresize_up_matches_pil_and_batches():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (9, 7))
    pad = 4
    padded = np.pad(x, pad, mode="symmetric")
    ref = _pil_resize(padded, (padded.shape[0] * 2, padded.shape[1] * 2))[2 * pad : 2 * pad + 18, 2 * pad : 2 * pad + 14]
    ours = imresize(torch.from_numpy(x), scale=2)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-6)
    # any leading dims, float32 in -> float32 out, each slice resized alone
    batch = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 9, 7))).float()
    out = imresize(batch, scale=2)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 18, 14)
    torch.testing.assert_close(out[1, 2], imresize(batch[1, 2], scale=2))


def test_imresize_known_properties():
    # MATLAB imresize of a constant is that constant (weights sum to 1, mirroring keeps it)
    const = torch.full((2, 30, 45), 0.37, dtype=torch.float64)
    for s in (1 / 2, 1 / 3, 1 / 4, 2, 3):
        y = imresize(const, scale=s)
        assert torch.allclose(y, torch.full_like(y, 0.37), atol=1e-12), s
    # x2 down of a linear ramp is exact away from the border: pixel j (0-based) of the output is the mean
    # position 2j + 0.5 of the pair it covers (the symmetric kernel reproduces linear functions)
    ramp = torch.arange(40, dtype=torch.float64).repeat(4, 1)
    y = imresize(ramp, scale=0.5)[0]
    expected = 2 * torch.arange(20, dtype=torch.float64) + 0.5
    torch.testing.assert_close(y[2:-2], expected[2:-2], atol=1e-12, rtol=0)
    assert (y[0] - expected[0]).abs() > 1e-3  # the border mirrors, so it is not the ramp (the test can tell)
    # sizes as MATLAB: ceil(H * scale)
    assert imresize(torch.zeros(1, 31, 17), scale=0.25).shape == (1, 8, 5)
    with pytest.raises(ConfigError, match="exactly one"):
        imresize(const, scale=0.5, size=(3, 3))


# -- per-sample seeding -------------------------------------------------------------------------
def _batch(n=4, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand((n, 3, size, size), generator=g) * 2 - 1, "index": torch.arange(n)}


ALL = {
    "box": lambda: BoxMask(),
    "freeform": lambda: FreeFormMask(),
    "outpaint": lambda: OutpaintMask(),
    "mixed": lambda: MixedMask({"box": BoxMask(), "thin": FreeFormMask(width=(0.01, 0.05))}, {"box": 0.5, "thin": 0.5}),
    "bicubic_x2": lambda: Downsample(2),
    "noise": lambda: GaussianNoise([0, 50]),
    "blur": lambda: GaussianBlur(kernel_size=7),
    "jpeg": lambda: JPEG([20, 80]),
    "classic": lambda: Compose([GaussianBlur(7), Downsample(4), GaussianNoise([1, 30], clip=True), JPEG()]),
    "second_order": lambda: Compose([GaussianBlur(7), RandomResize(), GaussianNoise([1, 30], clip=True), JPEG(),
                                      Downsample(4, clip=True), JPEG()]),
    "kernel_mixture": lambda: KernelMixtureBlur(kernel_range=(7, 11), sinc_prob=0.3),
    "sinc": lambda: SincFilter(kernel_size=7, prob=1.0),
    "poisson": lambda: PoissonNoise(),
    "one_of": lambda: OneOf({"gaussian": GaussianNoise(10), "poisson": PoissonNoise(1.0)}),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_deterministic_per_seed_and_independent_of_the_batch(name):
    deg = ALL[name]()
    batch = _batch()
    seeds = torch.tensor([11, 12, 13, 14])
    out = deg(batch, seeds)
    again = deg(batch, seeds)
    assert set(out) == set(batch) | set(deg.provides)
    for k in deg.provides:
        assert torch.equal(out[k], again[k]), k
    assert out["target"] is batch["image"] or torch.equal(out["target"], batch["image"])
    assert out["input"].dtype == torch.float32 and out["input"].shape[:2] == (4, 3)
    # sample 2 alone, with its seed, is bit-identical to sample 2 in the batch
    alone = deg({"image": batch["image"][2:3], "index": batch["index"][2:3]}, seeds[2:3])
    assert torch.equal(alone["input"][0], out["input"][2])
    # another seed gives another degradation (for some sample of the batch)
    other = deg(batch, seeds + 100)
    assert torch.equal(other["input"], out["input"]) == (name == "bicubic_x2")  # the one without randomness
    if "hole" in deg.provides:
        hole = out["hole"]
        assert hole.shape == (4, 1, 24, 24) and set(hole.unique().tolist()) <= {0.0, 1.0} and hole.sum() > 0
        # known pixels are the image's, bit-exact; hole pixels the fill (0)
        known = (1 - hole).bool().expand_as(out["input"])
        assert torch.equal(out["input"][known], batch["image"][known])
        assert torch.all(out["input"][~known] == 0)


def test_shapes_and_sizes():
    b = _batch(2, 24)
    s = torch.tensor([1, 2])
    assert Downsample(3)(b, s)["input"].shape == (2, 3, 8, 8)
    assert ALL["classic"]()(b, s)["input"].shape == (2, 3, 6, 6)
    out = ALL["second_order"]()(b, s)
    assert out["input"].shape == (2, 3, 6, 6) and out["input"].abs().max() <= 1
    # JPEG output is 8-bit: every value k / 127.5 - 1
    q = (out["input"] + 1) * 127.5
    torch.testing.assert_close(q, q.round(), atol=1e-4, rtol=0)
    # clips: every frame with the sample's parameters, hole repeated over time
    clip = {"frames": torch.rand(2, 5, 3, 24, 24) * 2 - 1, "index": torch.arange(2)}
    down = Downsample(4)(clip, s)
    assert down["input"].shape == (2, 5, 3, 6, 6) and torch.equal(down["target"], clip["frames"])
    holes = BoxMask()(clip, s)["hole"]
    assert holes.shape == (2, 5, 1, 24, 24) and torch.equal(holes[:, 0], holes[:, 4])


def test_gaussian_noise_is_on_the_255_scale():
    x = torch.zeros(1, 3, 128, 128)
    out = GaussianNoise(25)({"image": x, "index": torch.arange(1)}, [5])["input"]
    # sigma 25 of 255 levels = 50/255 on [-1, 1]
    assert abs(out.std().item() - 50 / 255) < 0.005 and abs(out.mean().item()) < 0.005
    assert out.abs().max() > 1 or out.min() < -0.5  # not clipped by default
    blind = GaussianNoise([0, 50])
    sig = [blind.draw_sigma(torch.Generator().manual_seed(i)) for i in range(200)]
    assert 0 <= min(sig) < 5 and 45 < max(sig) <= 50


def test_jpeg_matches_pil_and_quality_matters():
    rng = np.random.default_rng(1)
    base = np.kron(rng.uniform(0, 255, (6, 6, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 48x48 blocks
    x = torch.from_numpy(base).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = ((jpeg_roundtrip(x, 50)[0] + 1) * 127.5).round().permute(1, 2, 0).numpy()
    import io

    buf = io.BytesIO()
    Image.fromarray(base).save(buf, format="JPEG", quality=50)
    ref = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64)
    # both libjpeg at quality 50; decoders differ by at most a grey level here and there (upsampling, IDCT)
    assert np.abs(ours - ref).mean() < 1.0
    err = lambda q: (jpeg_roundtrip(x, q) - x).abs().mean().item()
    assert err(10) > err(50) > err(95)


def test_compose_stages_draw_independently():
    b = _batch(2)
    s = torch.tensor([3, 4])
    base = Compose({"blur": GaussianBlur(7), "noise": GaussianNoise([5, 30])})(b, s)["input"]
    # changing the noise stage's settings leaves the blur's draws alone: with no noise, the blur is the same
    blur_only = Compose({"blur": GaussianBlur(7), "noise": None})(b, s)["input"]
    zero_noise = Compose({"blur": GaussianBlur(7), "noise": GaussianNoise(0)})(b, s)["input"]
    torch.testing.assert_close(blur_only, zero_noise)
    assert not torch.equal(base, blur_only)


def test_object_and_file_masks(tmp_path):
    ds = ShapesDataset(image_size=16, num_train=4, num_val=1, num_test=1, split="train")
    items = [ds[i] for i in range(2)]
    batch = {k: v for k, v in default_collate(items).items() if k in ("image", "mask", "index")}
    out = ObjectMask(dilate=0)(batch, [1, 2])
    assert torch.equal(out["hole"], (batch["mask"] > 0.5).float())
    grown = ObjectMask(dilate=0.1)(batch, [1, 2])["hole"]
    assert grown.sum() > out["hole"].sum() and torch.all(grown >= out["hole"])
    with pytest.raises(MissingBatchKeyError):
        ObjectMask()({"image": batch["image"], "index": batch["index"]}, [1, 2])

    masks = tmp_path / "masks"
    masks.mkdir()
    a = np.zeros((16, 16), np.uint8)
    a[2:6, 3:9] = 255
    Image.fromarray(a).save(masks / "000.png")
    Image.fromarray(255 - a).save(masks / "001.png")
    fm = FileMask(masks)
    holes = fm(batch, [0, 0])["hole"]
    assert torch.equal(holes[0, 0], torch.from_numpy(a > 0).float())
    assert torch.equal(holes[1, 0], torch.from_numpy(a == 0).float())
    inv = FileMask(masks, invert=True)(batch, [0, 0])["hole"]
    assert torch.equal(inv, 1 - holes)
    with pytest.raises(ConfigError, match="index 2 has no mask.*2 masks"):
        fm({**batch, "index": torch.tensor([2, 0])}, [0, 0])
    assert FileMask(masks, cycle=True)({**batch, "index": torch.tensor([2, 3])}, [0, 0])["hole"].equal(holes)
    named = FileMask(masks, match="name")({**batch, "name": ["001", "000"]}, [0, 0])["hole"]
    assert torch.equal(named, holes.flip(0))
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(masks / "002.png")
    with pytest.raises(ShapeMismatchError, match=r"002.png is 8x16.*image is 16x16"):
        FileMask(masks)({**batch, "index": torch.tensor([2, 0])}, [0, 0])
    (masks / "003.png").write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match="cannot read image file .*003.png"):
        FileMask(masks)({**batch, "index": torch.tensor([3, 0])}, [0, 0])
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        FileMask(tmp_path / "nowhere")


def test_bad_settings_name_the_values():
    with pytest.raises(ShapeMismatchError, match=r"divisible by 3, got 24x20"):
        Downsample(3)({"image": torch.zeros(1, 3, 24, 20), "index": torch.arange(1)}, [0])
    with pytest.raises(ConfigError, match="one seed per sample: got 1 seeds for a batch of 2"):
        BoxMask()(_batch(2), [0])
    with pytest.raises(ConfigError, match="scale must be an integer >= 1, got 2.5"):
        Downsample(2.5)
    with pytest.raises(ConfigError, match="quality"):
        JPEG([50, 200])
    with pytest.raises(ConfigError, match=r"probs.*\['cat'\]"):
        MixedMask({"box": BoxMask()}, {"cat": 1.0})
    with pytest.raises(ShapeMismatchError, match="before resizing"):
        Compose([Downsample(2), BoxMask()])(_batch(1), [0])


# -- the datamodule applies it -----------------------------------------------------------------
def _dm(degradation, **kw):
    ds = functools.partial(ShapesDataset, image_size=16, num_train=12, num_val=6, num_test=4)
    return ImageDataModule(ds, image_size=16, channels=3, batch_size=4, eval_batch_size=3, seed=5,
                           degradation=degradation, **kw)


def test_datamodule_seeds_per_split_index_epoch():
    dm = _dm(GaussianNoise([5, 50]))
    assert dm.provides[-2:] == ("input", "target")
    dm.setup("fit")
    batch = next(iter(dm.dataloader("train", batch_size=4)))
    e0, e0b, e1 = dm.degrade(batch, "train", 0), dm.degrade(batch, "train", 0), dm.degrade(batch, "train", 1)
    assert torch.equal(e0["input"], e0b["input"]) and not torch.equal(e0["input"], e1["input"])
    # val: the epoch is ignored, and the inputs differ from train's for the same index
    v0, v3 = dm.degrade(batch, "val", 0), dm.degrade(batch, "val", 3)
    assert torch.equal(v0["input"], v3["input"]) and not torch.equal(v0["input"], e0["input"])
    # a sample's input does not depend on the batch size (seeds come from the index)
    small = next(iter(dm.dataloader("train", batch_size=2)))
    torch.testing.assert_close(dm.degrade(small, "train", 0)["input"], e0["input"][:2], rtol=0, atol=0)
    # a degraded loader yields what degrade gives at epoch 0
    loader = dm.dataloader("val", degrade=True)
    first = next(iter(loader))
    assert len(loader) == 2 and torch.equal(first["input"], dm.degrade(next(iter(dm.dataloader("val"))), "val")["input"])
    with pytest.raises(ConfigError, match="degradation"):
        _dm(lambda b, s: b)
    # a degradation that needs a key the data lacks: named when the keys are first asked for
    digits = ImageDataModule(DigitsDataset, image_size=32, channels=1, batch_size=4, seed=0, degradation=ObjectMask())
    with pytest.raises(MissingBatchKeyError, match="mask"):
        digits.provides


def test_trainer_hook_uses_split_and_epoch(tmp_path):
    import lightning as L

    seen = {"train": [], "val": []}

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            seen["train"].append((self.current_epoch, batch["index"].clone(), batch["input"].clone()))
            return (self.w * batch["input"].mean()).sum()

        def validation_step(self, batch, i):
            seen["val"].append((self.current_epoch, batch["index"].clone(), batch["input"].clone()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = _dm(GaussianNoise([5, 50]))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(Probe(), datamodule=dm)
    for split in ("train", "val"):
        for epoch, index, inp in seen[split]:
            raw = {"image": torch.stack([dm.dataset(split)[int(i)]["image"] for i in index]), "index": index}
            torch.testing.assert_close(inp, dm.degrade(raw, split, epoch)["input"], rtol=0, atol=0)
    assert {e for e, _, _ in seen["train"]} == {0, 1}


# -- configs -----------------------------------------------------------------------------------
def test_every_degradation_config_composes_and_runs(tmp_path):
    from hydra.utils import instantiate

    masks = tmp_path / "m"
    masks.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32), 255 * (i % 2), np.uint8)).save(masks / f"{i}.png")
    assert {"none", "box", "freeform", "outpaint", "mixed", "object", "file", "bicubic_x2", "bicubic_x3",
            "bicubic_x4", "classic_x4", "second_order_x4", "gaussian_noise", "blind_noise", "jpeg"} <= set(DEGRADATIONS)
    ds = ShapesDataset(image_size=48, num_train=4, num_val=1, num_test=1, split="train")
    items = [ds[i] for i in range(2)]
    batch = {k: v for k, v in default_collate(items).items() if k in ("image", "mask", "index")}
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="mmexp.conf", version_base="1.3"):  # once: composing is the cost
        cfgs = {name: compose(config_name="train", overrides=[
            f"degradation={name}", "data.image_size=48", "data.dataset.num_train=8", "data.dataset.num_val=2", "data.dataset.num_test=2",
            "paths.cache_dir=" + str(tmp_path),
            *([f"degradation.root={masks}"] if name == "file" else [])]) for name in DEGRADATIONS}
    GlobalHydra.instance().clear()
    for name, cfg in cfgs.items():
        dm = instantiate(cfg.data)
        if name == "none":
            assert cfg.degradation is None and dm.degradation is None
            continue
        if name == "file":  # the 48 px images do not match the 32 px masks: a clear error, then the right size
            with pytest.raises(ShapeMismatchError, match="32x32"):
                dm.degrade(batch, "val")
            continue
        out = dm.degrade(batch, "val")
        assert set(dm.degradation.provides) <= set(out), name
        assert torch.isfinite(out["input"]).all(), name
        assert set(dm.degradation.provides) <= set(dm.provides), name


# -- Real-ESRGAN's kernels, Poisson noise, OneOf --------------------------------------------------
def test_real_esrgan_kernels():
    # beta 1 is the Gaussian; every kernel sums to 1 and peaks at its centre
    torch.testing.assert_close(generalized_gaussian_kernel(21, 2.0, 1.0, 0.3, beta=1.0),
                               gaussian_kernel(21, 2.0, 1.0, 0.3))
    flat, peaked = generalized_gaussian_kernel(21, 2.0, beta=4.0), generalized_gaussian_kernel(21, 2.0, beta=0.5)
    for k in (flat, peaked, plateau_kernel(21, 2.0, 1.0, 0.5, beta=1.5), sinc_kernel(21, 1.5)):
        assert k.sum().item() == pytest.approx(1.0) and k[10, 10] == k.max()
    # a larger beta: flatter top (centre and 1 px away closer), lighter tails
    assert flat[10, 11] / flat[10, 10] > peaked[10, 11] / peaked[10, 10] and flat[10, 20] < peaked[10, 20]
    # the sinc is a low-pass with the cutoff it is given: passes pi/8, stops 7 pi/8 (cutoff pi/2)
    h = torch.fft.fft2(torch.fft.ifftshift(sinc_kernel(63, math.pi / 2))).abs()
    n = 63
    assert h[0, 0].item() == pytest.approx(1.0)
    assert h[0, round(n / 16)].item() == pytest.approx(1.0, abs=0.15)  # pi/8
    assert h[0, round(7 * n / 16)].item() < 0.1  # 7 pi/8
    with pytest.raises(ConfigError, match="cutoff"):
        sinc_kernel(21, 4.0)
    with pytest.raises(ConfigError, match="kernel_probs"):
        KernelMixtureBlur(kernel_probs=(0.5, 0.5))


def test_poisson_noise_grows_with_the_signal():
    # 8-bit image (256 levels): half at 0.2, half at 0.8 of the [0, 1] range, one row of every level
    unit = torch.full((1, 1, 64, 128), 0.2)
    unit[..., 64:] = 0.8
    unit[0, 0, 0, :] = torch.arange(128) / 255
    unit[0, 0, 1, :] = (torch.arange(128) + 128) / 255
    x = (unit * 2 - 1).expand(1, 3, 64, 128).contiguous()
    out = PoissonNoise(scale=1.0, gray_prob=0.0, clip=False)({"image": x}, [3])["input"]
    noise = (out - x)[..., 2:, :] / 2  # back on the [0, 1] scale
    dark, bright = noise[..., :64].var().item(), noise[..., 64:].var().item()
    # Poisson(x v) / v has variance x / v (v = 256 levels)
    assert dark == pytest.approx(0.2 / 256, rel=0.1) and bright == pytest.approx(0.8 / 256, rel=0.1)
    gray = PoissonNoise(scale=1.0, gray_prob=1.0, clip=False)({"image": x}, [3])["input"] - x
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_one_of_draws_each_option_with_its_probability():
    deg = OneOf([GaussianNoise(0), Downsample(2)], probs=[0.25, 0.75])
    x = torch.zeros(1, 3, 8, 8)
    picks = [deg({"image": x}, [s])["input"].shape[-1] == 4 for s in range(400)]
    assert sum(picks) / 400 == pytest.approx(0.75, abs=0.06)
    with pytest.raises(ConfigError, match="summing to 1"):
        OneOf([GaussianNoise(0), Downsample(2)], probs=[0.5, 0.6])


def test_second_order_x4_config_is_real_esrgans_pipeline(tmp_path):
    from mmexp.config import build

    cfg = compose_cfg(tmp_path, "degradation=second_order_x4", "data=photos")
    deg = build(cfg.degradation)
    names = [type(s).__name__ for s in deg.stages]
    assert names == ["KernelMixtureBlur", "RandomResize", "OneOf", "JPEG", "KernelMixtureBlur", "RandomResize",
                     "OneOf", "OneOf"]
    assert [type(o).__name__ for o in deg.stages[2].options] == ["GaussianNoise", "PoissonNoise"]
    b = _batch(3, 32)
    out = deg(b, torch.tensor([5, 6, 7]))
    assert out["input"].shape == (3, 3, 8, 8) and out["input"].abs().max() <= 1
    assert torch.equal(out["input"], deg(b, torch.tensor([5, 6, 7]))["input"])
