"""Inpainting (issue 9): the gated-convolution U-Net (gates, hole blanking, Fourier blocks' global reach, text
FiLM), model=inpaint trained through the package's hole degradation, and task=restore on a real photo of odd
size with a hole file: known pixels bit-exact, a wrong-size mask refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmexp
from mmexp.conditioning import Conditioner
from mmexp.conditioning.learned import LearnedTextEncoder
from mmexp.errors import ShapeMismatchError
from mmexp.models.baselines import PullPush, Telea
from mmexp.networks.inpainting import FFCResBlock, GatedConv2d, InpaintingUNet, pull_push_fill
from mmexp.restore import restore
from mmexp.train import train
from tests.conftest import FAST, compose_cfg
from tests.restoration_data import use_paired_crops
from tests.test_restore_task import listing, photo_u8, restore_cfg

#: a two-level U-Net of 4 and 8 channels with one Fourier block: checks plumbing, not image quality
TINY_INPAINT = ["model.network.channels=[4,8]", "model.network.num_blocks=1"]


# ------------------------------------------------------------------------------------------ network
def test_gated_conv_gates_every_output_channel_and_pixel():
    torch.manual_seed(0)
    conv = GatedConv2d(4, 6, 3, stride=2)
    x = torch.randn(2, 4, 17, 16)
    y, gate = conv(x), conv.gate(x)
    assert y.shape == gate.shape == (2, 6, 9, 8)
    assert 0 < gate.min() and gate.max() < 1
    # DeepFill v2's definition from the layer's own weights: ELU(feature) * sigmoid(gate)
    both = F.conv2d(x, conv.conv.weight, conv.conv.bias, stride=2, padding=1)
    torch.testing.assert_close(y, F.elu(both[:, :6]) * torch.sigmoid(both[:, 6:]))
    assert GatedConv2d(4, 6, 3, dilation=4)(x).shape == (2, 6, 17, 16)  # dilation keeps the size
    # the gate is a function of the input: a different hole channel opens it elsewhere
    x2 = x.clone()
    x2[:, 3] = -x2[:, 3]
    assert (conv.gate(x2) - gate).abs().max() > 1e-3


@pytest.mark.parametrize("bottleneck,prefill", [("ffc", "none"), ("dilated", "none"), ("ffc", "pull_push")])
def test_unet_never_sees_the_hole_pixels(bottleneck, prefill):
    torch.manual_seed(0)
    net = InpaintingUNet(channels=(4, 8, 8), num_blocks=2, bottleneck=bottleneck, prefill=prefill).eval()
    x = torch.rand(2, 3, 24, 32) * 2 - 1
    hole = torch.zeros(2, 1, 24, 32)
    hole[:, :, 5:15, 8:20] = 1
    if prefill == "pull_push":  # a learned residual: make it non-zero, as after training
        torch.nn.init.normal_(net.last.weight, std=0.1)
    y = net(x, hole)
    assert y.shape == x.shape and (prefill != "none" or y.abs().max() <= 1)
    other = torch.where(hole > 0, torch.rand_like(x), x)  # anything inside the hole
    torch.testing.assert_close(net(other, hole), y)
    assert (net(x, torch.zeros_like(hole)) - y).abs().max() > 1e-4  # ...but the hole itself is seen
    with pytest.raises(ShapeMismatchError, match="multiples of 4"):
        net(x[..., :30], hole[..., :30])
    with pytest.raises(ShapeMismatchError, match=r"hole \(2, 1, 24, 24\) for images \(2, 3, 24, 28\)"):
        net(x[..., :28], hole[..., :24])


def _photo_with_hole(h: int = 45, w: int = 61) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(photo_u8("astronaut", h, w, 150, 180)).permute(2, 0, 1)[None].float() / 127.5 - 1
    hole = torch.zeros(1, 1, h, w)
    hole[..., 10:30, 20:34] = 1
    hole[..., 40:, :5] = 1  # at the border, odd sides
    return x, hole


def test_pull_push_fills_smooth_images_exactly_and_keeps_known_pixels():
    x, hole = _photo_with_hole()
    filled = pull_push_fill(torch.where(hole > 0, torch.rand_like(x), x), 1 - hole)
    assert filled.shape == x.shape
    torch.testing.assert_close(filled * (1 - hole), x * (1 - hole), rtol=0, atol=0)  # known pixels bit-exact
    # a constant image is filled with its constant; a plane is interpolated closely (coarse levels are means)
    const = torch.full_like(x, 0.3)
    torch.testing.assert_close(pull_push_fill(const, 1 - hole), const)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 45), torch.linspace(-1, 1, 61), indexing="ij")
    plane = (0.4 * yy + 0.3 * xx).expand(1, 3, 45, 61)
    assert (pull_push_fill(plane, 1 - hole) - plane).abs().max() < 0.08
    # nothing known: zeros; gradients reach the known pixels
    assert pull_push_fill(x, torch.zeros_like(hole)).abs().max() == 0
    xg = x.clone().requires_grad_(True)
    (pull_push_fill(xg, 1 - hole) * hole).sum().backward()
    assert xg.grad.abs().sum() > 0 and (xg.grad * hole).abs().sum() == 0
    with pytest.raises(ShapeMismatchError, match="one size"):
        pull_push_fill(x, (1 - hole)[..., :-1])


def test_prefilled_unet_starts_as_the_pull_push_fill_and_the_peer_scores_it():
    """prefill=pull_push: the untrained network *is* the fill (its residual layer starts at zero), which on this
    photo's holes is within 1.5x Telea's error and a third of the blank hole's; the PullPush peer restores the
    same pixels."""
    x, hole = _photo_with_hole(48, 64)
    net = InpaintingUNet(channels=(4, 8, 8), num_blocks=1, prefill="pull_push").eval()
    with torch.no_grad():
        y = net(x, hole)
    torch.testing.assert_close(y, pull_push_fill(x, 1 - hole))
    peer = PullPush().restore(x, hole=hole)
    torch.testing.assert_close(peer, torch.where(hole > 0, y, x))
    in_hole = hole.expand_as(x) > 0
    err = {name: float((out - x)[in_hole].abs().mean()) for name, out in
           [("pull_push", peer), ("telea", Telea().restore(x, hole=hole)), ("blank", x * (1 - hole))]}
    assert err["pull_push"] < err["blank"] / 3 and err["pull_push"] < 1.5 * err["telea"], err


def test_fourier_block_sees_the_whole_image_in_one_layer():
    """One FFC block: a change in one corner reaches the opposite corner (a 3x3 conv block reaches 2 px)."""
    torch.manual_seed(0)
    block = FFCResBlock(8).eval()
    x = torch.randn(1, 8, 32, 32)
    x2 = x.clone()
    x2[..., 0, 0] += 1
    assert (block(x2) - block(x))[..., 24:, 24:].abs().max() > 1e-6


def test_text_film_starts_as_the_identity_and_then_follows_the_caption():
    torch.manual_seed(0)
    captions = ["a small red circle on a black background", "a big blue square on a white background"]
    encoder = LearnedTextEncoder(dim=16, depth=1, heads=2)
    conditioner = Conditioner(encoder, dim=16, p_drop_text=0.0)
    conditioner.prepare(captions)
    net = InpaintingUNet(channels=(4, 8), num_blocks=1, conditioner=conditioner).eval()
    assert net.required_keys == ("caption",)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    hole = torch.zeros(2, 1, 16, 16)
    hole[:, :, 4:12, 4:12] = 1
    # FiLM layers start at gamma = 1, beta = 0 (DF-GAN's init): the caption changes nothing yet
    torch.testing.assert_close(net(x, hole, captions), net(x, hole, captions[::-1]))
    for film in net.film:
        torch.nn.init.normal_(film.beta.weight, std=0.5)
    a, b = net(x, hole, captions), net(x, hole, captions[::-1])
    assert (a - b).abs().max() > 1e-3
    assert (net(x, hole, None) - a).abs().max() > 1e-3  # no caption: the learned null caption


# ------------------------------------------------------------------------------------------ model and task
def inpaint_cfg(tmp_path: Path, *extra: str, model: str = "inpaint"):
    cfg = compose_cfg(tmp_path, f"model={model}", "degradation=box", *FAST, "data.batch_size=4",
                      "data.eval_batch_size=4", *TINY_INPAINT, *extra)
    return use_paired_crops(cfg, 32)


@pytest.fixture(scope="module")
def inpaint_checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("inpaint")
    cfg = inpaint_cfg(tmp, "trainer.max_steps=3", "trainer.limit_val_batches=1", "logger=none",
                      "metrics=restoration", "metrics.metrics=[psnr]")
    metrics = train(cfg)
    # the hole and valid L1 terms and the perceptual term all trained; psnr inside the holes is reported
    assert {"train/loss/hole", "train/loss/valid", "train/loss/perceptual"} <= set(metrics)
    assert metrics["val/psnr_hole"] < metrics["val/psnr"]
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_task_restore_keeps_known_pixels_bit_exact_on_an_odd_size_photo(tmp_path, inpaint_checkpoint):
    a = photo_u8("astronaut", 251, 333, 100, 90)  # H x W = 251 x 333: odd, not a multiple of the U-Net's 2
    hole = np.zeros(a.shape[:2], np.uint8)
    hole[60:140, 100:180] = 255
    hole[200:230, 7:300] = 1  # any non-zero value is a hole
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(a).save(tmp_path / "in" / "odd.png")
    Image.fromarray(hole).save(tmp_path / "masks" / "odd.png")
    out = tmp_path / "out"
    restore(restore_cfg(tmp_path, f"ckpt_path={inpaint_checkpoint}", f"input={tmp_path / 'in'}", f"out={out}",
                        f"mask={tmp_path / 'masks'}"))
    written = np.asarray(Image.open(out / "odd.png"))
    assert written.shape == a.shape
    known = hole == 0
    np.testing.assert_array_equal(written[known], a[known])
    assert (written[~known] != a[~known]).any()  # the hole was filled, not copied
    # the same from Python
    pipe = mmexp.load(inpaint_checkpoint, device="cpu")
    y = pipe.restore(tmp_path / "in" / "odd.png", hole=tmp_path / "masks" / "odd.png")
    np.testing.assert_array_equal(((y.clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).numpy(), written)


def test_a_mask_of_the_wrong_size_is_refused_and_nothing_is_written(tmp_path, inpaint_checkpoint):
    a = photo_u8("coffee", 41, 57, 100, 100)
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(a).save(tmp_path / "in" / "a.png")
    Image.fromarray(a).save(tmp_path / "in" / "b.png")
    Image.fromarray(np.full((41, 57), 255, np.uint8)).save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.full((57, 41), 255, np.uint8)).save(tmp_path / "masks" / "b.png")  # transposed
    out = tmp_path / "out"
    with pytest.raises(ShapeMismatchError, match=r"mask .*b\.png is 57x41 \(HxW\) but .*b\.png is 41x57"):
        restore(restore_cfg(tmp_path, f"ckpt_path={inpaint_checkpoint}", f"input={tmp_path / 'in'}", f"out={out}",
                            f"mask={tmp_path / 'masks'}"))
    assert not out.exists() or listing(out) == []  # a.png (checked first, fine) was not written either
    assert not list(tmp_path.glob(".out.restore-*"))
    pipe = mmexp.load(inpaint_checkpoint, device="cpu")
    with pytest.raises(ShapeMismatchError, match=r"hole mask of size \(57, 41\) for an image of size \(41, 57\)"):
        pipe.restore(tmp_path / "in" / "a.png", hole=torch.ones(57, 41))


def test_inpaint_gan_trains_against_a_conditional_patchgan(tmp_path):
    """model=inpaint_gan: the PatchGAN of the pix2pix branch judges cat(masked input, image); every LaMa term
    (hole/valid L1, perceptual, adversarial, feature matching) and the discriminator's loss are logged."""
    cfg = inpaint_cfg(tmp_path, "model.discriminator.base_channels=4", "model.discriminator.n_layers=1",
                      "trainer.max_steps=4", "trainer.limit_val_batches=0", "logger=none", "metrics=none",
                      model="inpaint_gan")
    metrics = train(cfg)
    assert {"train/loss/hole", "train/loss/valid", "train/loss/perceptual", "train/loss/adversarial",
            "train/loss/feature_matching", "train/d_loss"} <= set(metrics), sorted(metrics)
