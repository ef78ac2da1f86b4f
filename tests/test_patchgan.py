"""PatchGAN discriminator, feature matching, LSGAN and the conditional / standard adversarial training of
RestorationModel (the adversarial infrastructure shared by pix2pix and inpainting)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmexp.config import build
from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.losses.adversarial import FeatureMatchingLoss, LSGANLoss
from mmexp.networks.discriminators import MultiScaleDiscriminator, PatchGANDiscriminator, patch_receptive_field
from mmexp.train import train
from tests.test_restoration import photo, restoration_cfg


def input_support(d: torch.nn.Module, size: int, at: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Boolean ``[size, size]``: the input pixels the logit at ``at`` depends on (non-zero gradient)."""
    x = torch.randn(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    out = d(x)
    out[0, 0, at[0], at[1]].backward()
    return x.grad[0].abs().sum(0) > 0


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_patchgan_n3_sees_exactly_a_70x70_patch(norm):
    """pix2pix's 70x70 PatchGAN: the logit at (i, j) depends on the input window starting at (8i - 23, 8j - 23)
    (stride 8; 1 px of padding per conv, at jumps 1, 2, 4, 8, 8) of side 70, and on nothing else. (BatchNorm in
    eval mode; instance statistics, like batch statistics in training, mix the whole image.)"""
    torch.manual_seed(0)
    d = PatchGANDiscriminator(base_channels=4, n_layers=3, norm=norm).double().eval()
    support = input_support(d, 128, (8, 9))
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    assert (int(rows[0]), int(rows[-1]) + 1 - int(rows[0])) == (8 * 8 - 23, 70)
    assert (int(cols[0]), int(cols[-1]) + 1 - int(cols[0])) == (8 * 9 - 23, 70)
    assert int(support.sum()) == 70 * 70  # every pixel of the window counts
    assert d.receptive_field == 70 == patch_receptive_field(3)
    # a 256 px image gives pix2pix's 30x30 logit map
    assert PatchGANDiscriminator(base_channels=2)(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_patchgan_receptive_field_formula_matches_the_network():
    for n in (1, 2):
        d = PatchGANDiscriminator(base_channels=2, n_layers=n, norm="none").double()
        support = input_support(d, 96, (6, 6))
        assert int(support.any(1).sum()) == patch_receptive_field(n) == {1: 16, 2: 34}[n]


def test_patchgan_features_and_settings():
    d = PatchGANDiscriminator(in_channels=3, cond_channels=1, base_channels=4, n_layers=3, spectral_norm=True)
    x = photo(64)
    logits, feats = d(torch.cat([x[:, :1], x], 1), return_features=True)
    assert len(feats) == 4 and [f.shape[1] for f in feats] == [4, 8, 16, 32]
    torch.testing.assert_close(d(torch.cat([x[:, :1], x], 1)), logits)  # the same map either way
    with pytest.raises(ShapeMismatchError, match="1 condition \\+ 3 image channels, got 3"):
        d(x)
    with pytest.raises(ConfigError, match="norm"):
        PatchGANDiscriminator(norm="group")
    with pytest.raises(ConfigError, match="n_layers"):
        PatchGANDiscriminator(n_layers=0)


def test_multiscale_discriminator_judges_the_pooled_image_at_each_scale():
    torch.manual_seed(0)
    m = MultiScaleDiscriminator(num_scales=2, base_channels=4, n_layers=2, norm="none")
    x = photo(64)
    logits, feats = m(x, return_features=True)
    first = m.scales[0](x)
    second = m.scales[1](F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    torch.testing.assert_close(logits, torch.cat([first.flatten(1), second.flatten(1)], 1))
    assert len(feats) == 6


def test_feature_matching_is_zero_for_identical_features_and_positive_otherwise():
    d = PatchGANDiscriminator(base_channels=4, norm="none")
    x, y = photo(64), photo(64, at=(100, 100))
    _, fx = d(x, return_features=True)
    _, fy = d(y, return_features=True)
    fm = FeatureMatchingLoss()
    assert float(fm(fake_features=fx, real_features=[f.clone() for f in fx]).detach()) == 0.0
    value = fm(fake_features=fx, real_features=fy)
    ref = np.mean([float((a - b).abs().mean()) for a, b in zip(fx, fy)])
    assert float(value.detach()) > 0 and abs(float(value.detach()) - ref) < 1e-6
    # the real features are a target: no gradient flows into them
    fy = [f.detach().requires_grad_(True) for f in fy]
    fm(fake_features=fx, real_features=fy).backward()
    assert all(f.grad is None for f in fy)
    with pytest.raises(ValueError, match="as many"):
        fm(fake_features=fx, real_features=fy[:2])


def test_lsgan_is_pix2pix_mse_against_one_and_zero():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(2, 1, 5, 5, generator=g), torch.randn(2, 1, 5, 5, generator=g)
    term = LSGANLoss()
    torch.testing.assert_close(term.d_loss(real_logits=real, fake_logits=fake),
                               F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
    torch.testing.assert_close(term(fake_logits=fake), F.mse_loss(fake, torch.ones_like(fake)))


# ------------------------------------------------------------------------------------------ RestorationModel
PATCH_D = ["model.discriminator._target_=mmexp.networks.discriminators.PatchGANDiscriminator",
           "~model.discriminator.input_size", "model.discriminator.base_channels=4",
           "+model.discriminator.norm=instance"]


def adversarial_cfg(tmp_path, loss: str, *extra: str, conditional: bool = True):
    """A tiny ESRGAN config turned into a (conditional) PatchGAN one, with an L1 + ``loss`` + feature matching
    loss set."""
    return restoration_cfg(
        tmp_path, "esrgan", *PATCH_D, f"+model.discriminator.cond_channels={3 if conditional else 0}",
        f"model.conditional_discriminator={str(conditional).lower()}", "~loss.terms.perceptual",
        f"loss.terms.adversarial._target_=mmexp.losses.adversarial.{loss}",
        "+loss.terms.feature_matching={_target_:mmexp.losses.adversarial.FeatureMatchingLoss,weight:10}", *extra)


def test_conditional_discriminator_sees_the_input(tmp_path):
    model = build(adversarial_cfg(tmp_path, "LSGANLoss").model).eval()
    x, y = photo(16), photo(32, at=(100, 120))
    cond = model._condition(x, y)
    assert cond.shape == y.shape  # the x2 input, upscaled to the output's size
    other = model._condition(-x, y)
    assert not torch.allclose(model.judge(y, cond), model.judge(y, other))


def test_discriminator_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="cond_channels"):
        build(adversarial_cfg(tmp_path, "LSGANLoss", "model.discriminator.cond_channels=1").model)
    with pytest.raises(ConfigError, match="conditional_discriminator is false"):
        build(adversarial_cfg(tmp_path, "LSGANLoss", "model.conditional_discriminator=false").model)
    # ESRGAN's D has no features to match
    cfg = restoration_cfg(tmp_path, "esrgan",
                          "+loss.terms.feature_matching={_target_:mmexp.losses.adversarial.FeatureMatchingLoss}")
    with pytest.raises(ConfigError, match="return_features"):
        build(cfg.model)


@pytest.mark.parametrize("loss,conditional", [("LSGANLoss", True), ("HingeLoss", False)])
def test_standard_adversarial_training_with_feature_matching(tmp_path, loss, conditional):
    cfg = adversarial_cfg(tmp_path, loss, "debug=fdr", conditional=conditional)
    metrics = train(cfg)
    for key in ("train/loss/feature_matching", "train/loss/adversarial", "train/d_loss",
                "train/loss/d/adversarial"):
        assert np.isfinite(metrics[key]), key
    assert metrics["train/loss/feature_matching"] > 0


def test_training_steps_move_both_networks(tmp_path):
    """One batch by hand (non-saturating loss, feature matching and R1 through the conditional D): the network's
    weights change, and so do D's first-conv weights on the condition channels."""
    cfg = adversarial_cfg(tmp_path, "NonSaturatingLoss", "+loss.terms.r1={_target_:mmexp.losses.adversarial.R1Penalty}")
    model = build(cfg.model)
    g0 = [p.detach().clone() for p in model.network.parameters()]
    d_first = model.discriminator.blocks[0][0].weight
    w0 = d_first.detach().clone()
    opt_g = torch.optim.Adam(model.network.parameters(), 1e-3)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), 1e-3)
    x, y = photo(16), photo(32, at=(100, 120))
    model.optimizers = lambda: [opt_g, opt_d]
    model.manual_backward = lambda loss: loss.backward()
    model.log_train = lambda values: None
    model.training_step({"input": x.repeat(2, 1, 1, 1), "target": y.repeat(2, 1, 1, 1)}, 0)
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.network.parameters()))
    assert not torch.equal(w0[:, :3], d_first.detach()[:, :3])
