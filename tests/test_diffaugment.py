"""DiffAugment: what each policy does to a batch, that it is differentiable and seeded, and that a GAN shows D
augmented real and fake images in training (D's and G's steps) but never augments samples."""

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from mmexp.errors import ConfigError
from mmexp.networks.diffaugment import DiffAugment, color, cutout, translation
from tests.conftest import compose_cfg
from tests.test_models import loader, make_gan, trainer


def test_translation_shifts_whole_pixels_with_zero_fill():
    torch.manual_seed(0)
    x = torch.zeros(256, 1, 32, 32)
    x[:, :, 16, 16] = 1.0
    y = translation(x)  # ratio 1/8: shifts of -4..4 px on each axis
    assert y.shape == x.shape and set(y.unique().tolist()) <= {0.0, 1.0}
    pos = y.flatten(1).argmax(1)
    dy, dx = pos // 32 - 16, pos % 32 - 16
    assert (y.flatten(1).sum(1) == 1).all()  # the centre pixel is never shifted out
    assert dy.abs().max() == 4 and dx.abs().max() == 4 and len(set(zip(dy.tolist(), dx.tolist()))) > 40
    # content shifted out of the image is replaced by zeros, never wrapped around
    ones = translation(torch.ones(64, 3, 32, 32))
    zeros_per_image = (ones == 0).flatten(1).sum(1) // 3
    assert zeros_per_image.max() > 0
    assert ((ones == 0) | (ones == 1)).all()


def test_cutout_zeroes_one_half_size_square():
    torch.manual_seed(0)
    x = torch.ones(512, 2, 16, 16)
    y = cutout(x)
    holes = (y == 0).all(dim=1)  # both channels zeroed together
    assert ((y == 0) == holes.unsqueeze(1)).all()
    count = holes.flatten(1).sum(1)
    assert count.max() == 64 and count.min() >= 16  # 8x8 inside the image, clipped at its borders
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    assert (rows * cols == count).all()  # a rectangle (a clipped square), one per image


def test_color_is_per_image_and_differentiable():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 8, 8, requires_grad=True) * 2 - 1
    x.retain_grad()
    y = color(x)
    shift = (y - x).mean(dim=(1, 2, 3))
    assert shift.unique().numel() == 8  # each image draws its own jitter
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffaugment_is_seeded_and_checks_its_policy():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    aug = DiffAugment("color, translation,cutout")
    assert aug.policy == ("color", "translation", "cutout")
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    torch.testing.assert_close(aug(x), a)
    assert not torch.equal(a, x)
    assert torch.equal(DiffAugment([])(x), x)
    with pytest.raises(ConfigError, match=r"unknown policy \['colour'\].*'color', 'translation', 'cutout'"):
        DiffAugment(["colour", "translation"])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        aug(x[0])


class Recording(nn.Module):
    """An augmentation that records the batches it is given and marks its output."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.flip(-1)


def test_gan_shows_d_augmented_real_and_fake_but_samples_are_not_augmented():
    aug = Recording()
    model = make_gan(augment=aug)
    trainer(max_steps=2).fit(model, loader())  # one batch: a D step (real, fake) then a G step (fake)
    assert len(aug.seen) == 3
    first = next(iter(loader()))["image"]
    torch.testing.assert_close(aug.seen[0], first)  # the real batch, as loaded
    n = len(aug.seen)
    model.generate(4)
    model.generate_indexed(torch.arange(4))
    assert len(aug.seen) == n  # sampling and validation never augment
    assert "augment" not in model.hparams


@pytest.mark.parametrize("model", ["sngan", "cgan", "text_gan"])
def test_augment_config_group(tmp_path, model):
    cfg = compose_cfg(tmp_path, f"model={model}", "model/augment=diffaugment", "model.augment.policy=[translation]")
    net = instantiate(cfg.model)
    assert isinstance(net.augment, DiffAugment) and net.augment.policy == ("translation",)
    assert instantiate(compose_cfg(tmp_path, f"model={model}").model).augment is None
