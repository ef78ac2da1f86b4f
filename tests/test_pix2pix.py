"""pix2pix (Isola et al. 2017): the U-Net generator, the A|B data format, the edges / object-mask inputs and
``model=pix2pix`` training end to end (the PatchGAN and the adversarial plumbing: test_patchgan.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data as skd
import torch
from PIL import Image

from mmexp.data import AlignedImageDataset, ShapesDataset
from mmexp.degradations import EdgeMap, ObjectMaskMap
from mmexp.errors import ConfigError, DatasetFormatError, ShapeMismatchError
from mmexp.networks.unet import UNetGenerator
from mmexp.train import train
from tests.conftest import FAST, compose_cfg

#: a tiny pix2pix for 32 px images: these tests check plumbing, not image quality
TINY = ("model=pix2pix", "model.network.base_channels=4", "model.discriminator.base_channels=4",
        "data.batch_size=4", "data.eval_batch_size=4")
SMALL_SHAPES = ("data.dataset.num_train=16", "data.dataset.num_val=8", "data.dataset.num_test=8",
                "data.dataset.render_once=false")


def _u8(t: torch.Tensor) -> np.ndarray:
    return ((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def write_aligned(folder: Path, n: int, size: int = 48, ext: str = ".png", seed: int = 0) -> list[tuple]:
    """Files in the pix2pix datasets' format: the Canny edges of a real photo crop (A, black on white, RGB as
    edges2shoes) beside the crop (B). Returns the (A, B) uint8 arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photo = skd.astronaut()
    pairs = []
    for i in range(n):
        y, x = rng.integers(0, photo.shape[0] - size, 2)
        b = np.ascontiguousarray(photo[y: y + size, x: x + size])
        edges = cv2.Canny(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), 100, 200) > 0
        a = np.repeat(np.where(edges, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        Image.fromarray(np.concatenate([a, b], axis=1)).save(folder / f"{i}{ext}")
        pairs.append((a, b))
    return pairs


# ------------------------------------------------------------------------------------------ U-Net
@pytest.mark.parametrize("num_downs,size", [(5, 32), (6, 64), (8, 256)])
def test_unet_keeps_the_size_for_its_depth(num_downs, size):
    g = UNetGenerator(base_channels=2, num_downs=num_downs).eval()
    y = g(torch.zeros(1, 3, size, size))
    assert y.shape == (1, 3, size, size) and y.abs().max() <= 1
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 3
    with pytest.raises(ShapeMismatchError, match=f"multiples of {2 ** num_downs}"):
        g(torch.zeros(1, 3, size + 8, size))


def test_unet_256_is_pix2pix_size_and_has_its_skips():
    """The paper's unet_256 (pix2pix's code prints 54.414 M parameters); the bottleneck of a 256 px input is 1x1,
    yet the output still follows the input's fine detail through the skip connections."""
    g = UNetGenerator(num_downs=8)
    assert sum(p.numel() for p in g.parameters()) == 54_414_531
    small = UNetGenerator(base_channels=2, num_downs=5, norm="none", dropout=0).double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    small(x)[0, :, 5, 7].sum().backward()
    # the outermost skip: the output pixel depends on its 2x2 input neighbourhood through a 4x4 conv and back
    assert x.grad[0, :, 4:7, 6:9].abs().sum() > 0
    with pytest.raises(ConfigError, match="norm"):
        UNetGenerator(norm="layer")


# ------------------------------------------------------------------------------------------ A|B data
def test_aligned_reader_splits_a_real_file_exactly(tmp_path):
    pairs = write_aligned(tmp_path / "val", 3)
    write_aligned(tmp_path / "train", 2)
    ds = AlignedImageDataset(tmp_path, "val", image_size=48, eval_crops="full")
    assert len(ds) == 3
    for i, (a, b) in enumerate(pairs):
        item = ds[i]
        np.testing.assert_array_equal(_u8(item["input"]), a)
        np.testing.assert_array_equal(_u8(item["target"]), b)
    swapped = AlignedImageDataset(tmp_path, "val", image_size=48, eval_crops="full", direction="BtoA")[0]
    np.testing.assert_array_equal(_u8(swapped["input"]), pairs[0][1])
    # no test folder: the pix2pix datasets that ship train/val only test on val
    assert [p for _, p, _ in AlignedImageDataset(tmp_path, "test", image_size=48).pairs][0].parent.name == "val"
    # training crops stay aligned: A's edges are the edges of B's crop
    item = AlignedImageDataset(tmp_path, "train", image_size=32)[0]
    edges = cv2.Canny(cv2.cvtColor(_u8(item["target"]), cv2.COLOR_RGB2GRAY), 100, 200) > 0
    inner = np.s_[2:-2, 2:-2]  # Canny's border pixels depend on what lay outside the crop
    np.testing.assert_array_equal(_u8(item["input"])[..., 0][inner] == 0, edges[inner])


def test_aligned_reader_refuses_an_odd_width_file_naming_it(tmp_path):
    (tmp_path / "train").mkdir()
    Image.fromarray(np.zeros((32, 65, 3), np.uint8)).save(tmp_path / "train" / "odd.png")
    with pytest.raises(DatasetFormatError, match=r"odd\.png is 65 px wide.*even"):
        AlignedImageDataset(tmp_path, "train", image_size=32)
    with pytest.raises(ConfigError, match="direction"):
        AlignedImageDataset(tmp_path, "train", image_size=32, direction="AB")


# ------------------------------------------------------------------------------------------ shapes inputs
def shapes_batch(n: int = 4) -> dict:
    ds = ShapesDataset(split="val", image_size=32, channels=3, num_train=8, num_val=8, num_test=8, render_once=False)
    return {k: torch.stack([ds[i][k] for i in range(n)]) for k in ("image", "mask")}


def test_edges_and_mask_inputs():
    batch = shapes_batch()
    edges = EdgeMap()(batch, torch.arange(4))
    assert torch.equal(edges["target"], batch["image"])
    for img, inp in zip(batch["image"], edges["input"]):
        ref = cv2.Canny(cv2.cvtColor(_u8(img), cv2.COLOR_RGB2GRAY), 50, 150) > 0
        assert ref.any() and torch.equal(inp, torch.from_numpy(np.where(ref, -1.0, 1.0)).float().expand(3, -1, -1))
    # deterministic: the seed plays no part
    assert torch.equal(EdgeMap()(batch, torch.arange(4) + 7)["input"], edges["input"])
    masks = ObjectMaskMap()(batch, torch.arange(4))
    assert torch.equal(masks["input"], torch.where(batch["mask"] > 0.5, -1.0, 1.0).expand(-1, 3, -1, -1))
    with pytest.raises(ConfigError, match="low <= high"):
        EdgeMap(low=200, high=100)


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("degradation", ["edges", "mask_to_image"])
def test_pix2pix_trains_on_shapes_and_writes_the_grid(tmp_path, degradation):
    cfg = compose_cfg(tmp_path, *TINY, "data=shapes", *SMALL_SHAPES, f"degradation={degradation}", *FAST,
                      "debug=fdr")
    metrics = train(cfg)
    for key in ("train/loss/l1", "train/loss/adversarial", "train/d_loss", "val/psnr"):
        assert np.isfinite(metrics[key]), key
    grids = list((Path(cfg.paths.output_dir) / "samples").glob("*.png"))
    assert len(grids) == 1 and Image.open(grids[0]).size[1] == 3 * 32 + 4 * 2  # input | output | target rows


def test_pix2pix_trains_on_aligned_files(tmp_path):
    for split in ("train", "val"):
        write_aligned(tmp_path / "ab" / split, 4, size=40, seed=len(split))
    cfg = compose_cfg(tmp_path, *TINY, "data=aligned", f"data.root={tmp_path / 'ab'}", "data.image_size=32",
                      *FAST, "debug=fdr")
    metrics = train(cfg)
    assert np.isfinite(metrics["train/d_loss"]) and metrics["val/psnr"] > 0
