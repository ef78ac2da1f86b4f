"""task=restore and mmexp.load(CKPT).restore (issue 9, "Inference on real images"): real photos of odd sizes,
tiling, only the restored images in out=, comparisons and per-image metrics in the run directory, bad inputs
refused before anything is written, and the classical peers without a checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import skimage.data as skd
import torch
import torch.nn.functional as F
from PIL import Image

import mmexp
from mmexp.config import build
from mmexp.errors import ConfigError, InputImageError, ShapeMismatchError
from mmexp.metrics.restoration import prepare, psnr_per_image
from mmexp.restore import read_image, restore, restore_tensor
from mmexp.train import train
from tests.conftest import compose_cfg
from tests.test_restoration import restoration_cfg, tiny_checkpoint


def photo_u8(name: str, h: int, w: int, y: int = 0, x: int = 0) -> np.ndarray:
    """A real photo crop ``[h, w, 3]`` uint8 from skimage.data."""
    return np.ascontiguousarray(getattr(skd, name)()[y: y + h, x: x + w, :3])


def to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1


def to_u8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] -> uint8 as mmexp.restore.save_image writes it."""
    return ((x.clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).numpy()


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def sr_checkpoint(tmp_path_factory) -> Path:
    """A tiny x2 MSRResNet trained for a few L1 steps on real photo crops."""
    return tiny_checkpoint(tmp_path_factory.mktemp("msrresnet"), "msrresnet")


def restore_cfg(tmp_path: Path, *overrides: str):
    return compose_cfg(tmp_path, "task=restore", "trainer=cpu", *overrides)


# ------------------------------------------------------------------------------------------ tiling
def test_tiled_restore_equals_one_pass_on_an_odd_size_photo(tmp_path):
    """333x251 (odd, not a multiple of the tile): tiles with enough context give the one-pass result; without
    context the tile borders show (so this test can fail)."""
    model = build(compose_cfg(tmp_path, "model=msrresnet", "model.network.num_feat=8", "model.network.num_block=1",
                              "model.network.upscale=2").model).eval()
    x = to_tensor(photo_u8("astronaut", 251, 333, 100, 90))[None]
    whole = restore_tensor(model, x, tile=None)
    assert whole.shape == (1, 3, 502, 666)
    # receptive radius: 4 LR convs + 2 HR convs (1 LR px) + the bilinear skip (1 px) = 6 < 8
    tiled = restore_tensor(model, x, tile=100, overlap=8)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    seams = restore_tensor(model, x, tile=100, overlap=0)
    assert (seams - whole).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ task=restore
def test_task_restore_writes_only_the_restored_images_with_the_input_names(tmp_path, sr_checkpoint):
    hr = {"odd.png": photo_u8("astronaut", 250, 332, 40, 60), "sub/cat.png": photo_u8("chelsea", 64, 96, 100, 150)}
    lr_dir, hr_dir, out = tmp_path / "lr", tmp_path / "hr", tmp_path / "out"
    for name, a in hr.items():
        (lr_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (hr_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(hr_dir / name)
        Image.fromarray(a).resize((a.shape[1] // 2, a.shape[0] // 2), Image.BICUBIC).save(lr_dir / name)
    (lr_dir / "notes.txt").write_text("not an image: ignored")
    cfg = restore_cfg(tmp_path, f"ckpt_path={sr_checkpoint}", f"input={lr_dir}", f"out={out}", f"target={hr_dir}",
                      "metrics=restoration", "metrics.metrics=[psnr,ssim]", "restore.tile=64",
                      "restore.tile_overlap=16")
    means = restore(cfg)

    assert listing(out) == ["odd.png", "sub/cat.png"]  # only the restored images, named as the inputs
    pipe = mmexp.load(sr_checkpoint, device="cpu")
    run = Path(cfg.paths.output_dir)
    with open(run / "restore_metrics.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    psnrs = []
    for name, a in hr.items():
        written = np.asarray(Image.open(out / name))
        assert written.shape == a.shape  # x2 of the (odd-sized) input
        # the same weights from Python, on the file, with the same tiling
        expected = pipe.restore(lr_dir / name, tile=64, tile_overlap=16)
        np.testing.assert_array_equal(written, to_u8(expected))
        p = psnr_per_image(prepare(expected[None]), prepare(to_tensor(a)[None])).item()
        assert float(rows[name]["psnr"]) == pytest.approx(p, abs=1e-4)
        psnrs.append(p)
        assert (run / "comparisons" / name).is_file()
    assert means["restore/psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    # input (125x166, odd, shown nearest-upsampled) | output | target, each 250x332, with 4 px padding
    assert Image.open(run / "comparisons" / "odd.png").size == (3 * 332 + 4 * 4, 250 + 2 * 4)


def test_pipeline_restore_takes_tensors_pil_images_and_paths(tmp_path, sr_checkpoint):
    a = photo_u8("coffee", 37, 45, 120, 200)
    Image.fromarray(a).save(tmp_path / "x.png")
    pipe = mmexp.load(sr_checkpoint, device="cpu")
    from_path = pipe.restore(tmp_path / "x.png")
    assert from_path.shape == (3, 74, 90)
    torch.testing.assert_close(pipe.restore(Image.fromarray(a)), from_path)
    torch.testing.assert_close(pipe.restore(to_tensor(a)[None])[0], from_path)
    with pytest.raises(ShapeMismatchError, match="grey image"):
        pipe.restore(Image.fromarray(a[..., 0]))


def test_bad_inputs_are_refused_and_nothing_is_written(tmp_path, sr_checkpoint):
    good = photo_u8("astronaut", 40, 48, 200, 200)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.png").write_bytes(b"already here")

    def folder(name: str, files: dict[str, np.ndarray | bytes]) -> Path:
        root = tmp_path / name
        root.mkdir()
        for fname, content in files.items():
            if isinstance(content, bytes):
                (root / fname).write_bytes(content)
            else:
                Image.fromarray(content).save(root / fname)
        return root

    sr = [f"ckpt_path={sr_checkpoint}", f"out={out}"]
    # an unreadable file among good ones (sorted after them, so the good ones would be restored first)
    broken = folder("broken", {"a.png": good, "z.png": b"\x89PNG but not really"})
    with pytest.raises(InputImageError, match=r"z\.png"):
        restore(restore_cfg(tmp_path, *sr, f"input={broken}"))
    # a grey photo to an RGB model
    grey = folder("grey", {"a.png": good, "b.png": good[..., 0]})
    with pytest.raises(ShapeMismatchError, match=r"b\.png is a grey image"):
        restore(restore_cfg(tmp_path, *sr, f"input={grey}"))
    # a mask of the wrong size (Telea fills holes; no checkpoint needed)
    images = folder("images", {"a.png": good})
    masks = folder("masks", {"a.png": np.full((40, 47), 255, np.uint8)})
    with pytest.raises(ShapeMismatchError, match=r"mask .*a\.png is 40x47 .* is 40x48"):
        restore(restore_cfg(tmp_path, "model=telea", f"input={images}", f"out={out}", f"mask={masks}"))
    # a target of the wrong size
    targets = folder("targets", {"a.png": good})  # not x2
    with pytest.raises(ShapeMismatchError, match=r"target .* is 40x48 .* restored x2 is 80x96"):
        restore(restore_cfg(tmp_path, *sr, f"input={images}", f"target={targets}"))
    assert listing(out) == ["keep.png"] and (out / "keep.png").read_bytes() == b"already here"
    assert not list(tmp_path.glob(".out.restore-*"))  # no temporary folder left behind


def test_classical_peers_restore_without_a_checkpoint(tmp_path):
    clean = photo_u8("coffee", 96, 128, 100, 150)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(noisy).save(tmp_path / "in" / "coffee.png")
    cfg = restore_cfg(tmp_path, "model=nlmeans", f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}",
                      "restore.comparisons=false")
    restore(cfg)
    out = read_image(tmp_path / "out" / "coffee.png", 3)[None]
    before = psnr_per_image(prepare(to_tensor(noisy)[None]), prepare(to_tensor(clean)[None])).item()
    after = psnr_per_image(prepare(out), prepare(to_tensor(clean)[None])).item()
    assert after > before + 4, (before, after)
    assert not (Path(cfg.paths.output_dir) / "comparisons").exists()
    # a trained model's config without its checkpoint has no weights to run
    with pytest.raises(ConfigError, match="ckpt_path"):
        restore(restore_cfg(tmp_path, "model=msrresnet", f"input={tmp_path / 'in'}", f"out={tmp_path / 'o2'}"))


def test_peers_are_scored_in_the_training_run(tmp_path):
    """train test=true peers={bicubic: ...}: the peer is scored on the same test pairs with the same protocol."""
    cfg = restoration_cfg(tmp_path, "msrresnet", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                          "logger=none", "test=true", "metrics.metrics=[psnr]", "metrics.y_channel=true",
                          "metrics.crop_border=2",
                          "+peers.bicubic={_target_: mmexp.models.baselines.Bicubic, scale: 2, kernel: torch}")
    metrics = train(cfg)
    from tests.restoration_data import PairedCrops

    ds = PairedCrops("test", 32, 2)
    x = torch.stack([ds[i]["input"] for i in range(len(ds))])
    y = torch.stack([ds[i]["target"] for i in range(len(ds))])
    up = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)
    expected = psnr_per_image(prepare(up, True, 2), prepare(y, True, 2)).mean().item()
    assert metrics["peer/bicubic/psnr"] == pytest.approx(expected, abs=1e-4)
    assert metrics["margin/bicubic/psnr"] == pytest.approx(metrics["test/psnr"] - expected, abs=1e-4)


def test_task_restore_on_a_video_writes_every_frame(tmp_path):
    cv2 = pytest.importorskip("cv2")
    frames = [photo_u8("astronaut", 24, 40, 100 + 4 * t, 120) for t in range(3)]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (40, 24))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG .avi files")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    restore(restore_cfg(tmp_path, "model=bicubic", "model.kernel=torch", "model.scale=2", f"input={video}",
                        f"out={out}"))
    assert listing(out) == ["clip/000000.png", "clip/000001.png", "clip/000002.png"]
    cap = cv2.VideoCapture(str(video))
    for t in range(3):
        ok, bgr = cap.read()
        assert ok
        decoded = to_tensor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))[None]
        expected = F.interpolate(decoded, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)[0]
        np.testing.assert_array_equal(np.asarray(Image.open(out / "clip" / f"{t:06d}.png")), to_u8(expected))
    cap.release()
