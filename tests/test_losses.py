"""Loss terms and the loss config group: old vs new numbers, penalties against references and
theory, reconstruction and perceptual terms, config overrides, and short runs of each loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import mmexp
from mmexp.config import build as build_object
from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.losses import LossSet, LossTerm
from mmexp.losses.adversarial import (
    GradientPenalty, HingeLoss, NonSaturatingLoss, R1Penalty, RelativisticPairingLoss, WassersteinLoss,
)
from mmexp.losses.kl import GaussianKL
from mmexp.losses.perceptual import PerceptualLoss
from mmexp.losses.reconstruction import CharbonnierLoss, L1Loss, MSELoss
from mmexp.train import train
from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg

LOSS_OPTIONS = sorted(p.stem for p in (Path(mmexp.__file__).parent / "conf" / "loss").glob("*.yaml"))
B, C, S = 4, 3, 32


def build(tmp_path, *overrides):
    """The model and composed config that ``python -m mmexp OVERRIDES`` would train."""
    cfg = compose_cfg(tmp_path, *overrides)
    torch.manual_seed(0)  # the same weights in every run: the comparisons below are exact
    return build_object(cfg.model), cfg


def images(seed=0, n=B, c=C, s=S):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------- old vs new numbers
@pytest.mark.parametrize("option", ["gan_bce", "gan_hinge"])
def test_gan_losses_equal_the_old_formulas(tmp_path, option):
    model, _ = build(tmp_path, "model=dcgan", f"loss={option}", *TINY["dcgan"])
    real = images()
    with torch.no_grad():
        fake = model.generator(torch.randn(B, 16, generator=torch.Generator().manual_seed(1)))
    r, f = model.discriminator(real), model.discriminator(fake)
    if option == "gan_bce":  # the former GANLoss("bce")
        old_d, old_g = F.softplus(-r).mean() + F.softplus(f).mean(), F.softplus(-f).mean()
    else:  # the former GANLoss("hinge")
        old_d, old_g = F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean(), -f.mean()
    d = model.loss.d_loss(real_logits=r, fake_logits=f, discriminator=model.discriminator,
                          real=real, fake=fake, step=0)
    g = model.loss(fake_logits=f, fake=fake)
    assert torch.equal(d.total, old_d) and torch.equal(g.total, old_g)
    assert torch.equal(d.parts["adversarial"], old_d.detach())


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_vae_loss_equals_the_old_elbo(tmp_path, likelihood):
    """``loss.terms.kl.weight=4`` gives the numbers of the former ``model.beta=4``."""
    loss = "vae" if likelihood == "gaussian" else "vae_bernoulli"
    model, _ = build(tmp_path, "model=vae", f"loss={loss}", "loss.terms.kl.weight=4",
                     "model.sigma=0.3", *TINY["vae"])
    assert model.learn_sigma == (likelihood == "gaussian")
    if model.learn_sigma:
        with torch.no_grad():
            model.log_sigma.fill_(-0.7)  # away from its initial value, so a wrong sigma shows
    x = images()
    torch.manual_seed(5)
    new = model.training_step({"image": x}, 0)
    new.backward()
    grads_new = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # the former VAE.elbo_terms and training_step, written out
    torch.manual_seed(5)
    mu, logvar = model.encoder(x)
    out = model.decoder(mu + torch.exp(0.5 * logvar) * torch.randn(*mu.shape))
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none")
    else:
        nll = (0.5 * ((x - out) * torch.exp(-model.log_sigma)) ** 2 + model.log_sigma
               + 0.5 * math.log(2 * math.pi))
    recon = nll.flatten(1).sum(1).mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
    old = recon + 4.0 * kl
    old.backward()
    assert torch.equal(new, old)
    for p, g in zip(model.parameters(), grads_new):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    # the decoder's output means the same image as before
    expected = torch.sigmoid(out) * 2 - 1 if likelihood == "bernoulli" else out.clamp(-1, 1)
    torch.testing.assert_close(model.to_image(out), expected)


@pytest.mark.parametrize("ema", [True, False])
def test_vqvae_loss_equals_the_old_quantizer_loss(tmp_path, ema):
    model, _ = build(tmp_path, "model=vqvae", f"model.quantizer.ema={ema}", *TINY["vqvae"])
    model.eval()  # no codebook updates or restarts between the two computations
    x = images()
    new = model.training_step({"image": x}, 0)
    new.backward()
    grads_new = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    # the former VectorQuantizer loss (beta = 0.25) + MSE, written out
    z = model.encoder(x)
    q = model.quantizer(z)
    e = F.embedding(q.indices.flatten(), model.quantizer.embedding).view(
        z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    commitment = F.mse_loss(z, e.detach())
    vq_loss = 0.25 * commitment if ema else F.mse_loss(e, z.detach()) + 0.25 * commitment
    old = F.mse_loss(model.decoder(z + (e - z).detach()), x) + vq_loss
    old.backward()
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)  # summed in another order
    grads_old = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads_old) == set(grads_new)
    assert ("quantizer.embedding" in grads_new) == (not ema)
    for n, g in grads_new.items():
        torch.testing.assert_close(g, grads_old[n], rtol=1e-5, atol=1e-7)


def test_vqvae_l1_loss_is_l1_plus_commitment(tmp_path):
    """loss=vqvae_l1 (t2i_shapes_cpu's stage 1) swaps MSE for L1 and keeps beta * commitment."""
    model, _ = build(tmp_path, "model=vqvae", "loss=vqvae_l1", *TINY["vqvae"])
    model.eval()
    x = images()
    new = model.training_step({"image": x}, 0)
    z = model.encoder(x)
    q = model.quantizer(z)
    expected = F.l1_loss(model.decoder(q.quantized), x) + 0.25 * q.commitment
    torch.testing.assert_close(new, expected, rtol=1e-6, atol=0)
    # not the MSE of loss=vqvae
    assert abs(float(new) - float(F.mse_loss(model.decoder(q.quantized), x) + 0.25 * q.commitment)) > 1e-4


def test_losses_add_no_state_to_checkpoints(tmp_path):
    """Models' state dicts keep their keys: checkpoints written before losses moved still load."""
    for name in ("dcgan", "vae", "vqvae"):
        model, _ = build(tmp_path, f"model={name}", *TINY[name])
        assert not [k for k in model.state_dict() if k.startswith("loss.")], name


# ----------------------------------------------------------------------------- adversarial terms
class Linear(nn.Module):
    """D(x) = <w, x> + b per sample: its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1) + 0.5


def small_critic(seed=0):
    """A nonlinear D without batch interactions (no BatchNorm), so per-sample gradients are
    well defined."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 4, 2, 1),
                         nn.Softplus(), nn.Flatten(), nn.Linear(8 * 8 * 8, 1), nn.Flatten(0))


def per_sample_grads(d, x):
    """Reference: one autograd call per sample (no batching)."""
    out = []
    for xi in x:
        xi = xi[None].clone().requires_grad_(True)
        out.append(torch.autograd.grad(d(xi).sum(), xi, create_graph=True)[0][0])
    return torch.stack(out)


def test_adversarial_values():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = F.softplus
    ns, hinge, w = NonSaturatingLoss(), HingeLoss(), WassersteinLoss()
    torch.testing.assert_close(ns.d_loss(real, fake), sp(-real).mean() + sp(fake).mean())
    torch.testing.assert_close(ns(fake), sp(-fake).mean())
    torch.testing.assert_close(hinge.d_loss(real, fake), torch.tensor((0 + 2) / 2 + (1.5 + 0) / 2))
    torch.testing.assert_close(hinge(fake), torch.tensor(1.25))
    torch.testing.assert_close(w.d_loss(real, fake), torch.tensor(-1.25 - 0.5))
    torch.testing.assert_close(w(fake), torch.tensor(1.25))
    assert ns.sides() == hinge.sides() == ("model", "discriminator")
    assert GradientPenalty().sides() == R1Penalty().sides() == ("discriminator",)


def test_gradient_penalty_matches_reference_and_theory():
    real, fake = images(1), images(2)
    d = small_critic()
    torch.manual_seed(3)
    gp = GradientPenalty().d_loss(d, real, fake)
    torch.manual_seed(3)
    u = torch.rand(B, 1, 1, 1)
    x_hat = u * real + (1 - u) * fake
    ref = (per_sample_grads(d, x_hat).flatten(1).norm(dim=1) - 1).pow(2).mean()
    torch.testing.assert_close(gp, ref)
    assert gp > 0

    # linear D: the gradient is w at every x_hat, so GP = (|w| - 1)^2, whatever the images
    w = torch.randn(C, S, S, generator=torch.Generator().manual_seed(4))
    unit = Linear(w / w.norm())
    assert GradientPenalty().d_loss(unit, real, fake).abs() < 1e-10  # the 1-Lipschitz optimum
    lin = Linear(3 * w / w.norm())
    penalty = GradientPenalty().d_loss(lin, real, fake)
    torch.testing.assert_close(penalty, torch.tensor(4.0))
    penalty.backward()  # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|: it trains D
    torch.testing.assert_close(lin.w.grad, 2 * 2 * (w / w.norm()))


def test_r1_matches_reference_and_theory():
    real = images(1)
    d = small_critic()
    r1 = R1Penalty(weight=10).d_loss(d, real, step=0)
    ref = 0.5 * per_sample_grads(d, real).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1, ref)
    assert r1 > 0
    r1.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters()
               if p.dim() > 1)  # reaches D's weights through the double backward

    # D(x) = <w, x>: R1 = 0.5 |w|^2; a D constant in x has no input gradient: R1 = 0
    w = torch.randn(C, S, S, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(R1Penalty().d_loss(Linear(w), real, step=0), 0.5 * w.pow(2).sum())
    constant = Linear(torch.zeros(C, S, S))
    assert R1Penalty().d_loss(constant, real, step=0) == 0


def test_r1_lazy_regularisation_in_a_loss_set():
    real, fake = images(1), images(2)
    d = small_critic()
    loss = LossSet({"adversarial": NonSaturatingLoss(), "r1": R1Penalty(weight=2.0, every=4)})
    r, f = d(real), d(fake)
    full = 0.5 * per_sample_grads(d, real).pow(2).flatten(1).sum(1).mean()
    for step in range(6):
        out = loss.d_loss(real_logits=r, fake_logits=f, discriminator=d, real=real, fake=fake,
                          step=step)
        adv = NonSaturatingLoss().d_loss(r, f)
        if step % 4 == 0:  # computed, scaled by the interval
            torch.testing.assert_close(out.parts["r1"], 4 * full)
            torch.testing.assert_close(out.total, adv + 2.0 * 4 * full)
        else:  # sits out: not in the total, not logged
            assert set(out.parts) == {"adversarial"}
            torch.testing.assert_close(out.total, adv)
    with pytest.raises(ConfigError, match="every"):
        R1Penalty(every=0)


# ----------------------------------------------------------------------------- reconstruction
def test_reconstruction_terms():
    pred, target = images(1), images(2)
    d = pred - target
    torch.testing.assert_close(L1Loss()(pred, target), d.abs().mean())
    torch.testing.assert_close(MSELoss()(pred, target), d.pow(2).mean())
    # per-pixel weight: a {0, 1} mask averages over the masked pixels only
    mask = torch.zeros(B, 1, S, S)
    mask[:, :, 8:20, 4:30] = 1
    inside = d.abs()[:, :, 8:20, 4:30]
    torch.testing.assert_close(L1Loss()(pred, target, mask), inside.mean())
    torch.testing.assert_close(MSELoss()(pred, target, mask), d.pow(2)[:, :, 8:20, 4:30].mean())
    assert L1Loss()(pred, target, torch.zeros(B, 1, S, S)) == 0
    # complement: the known pixels around an inpainting hole (Liu et al.'s "valid" term)
    outside = torch.ones_like(d, dtype=torch.bool)
    outside[:, :, 8:20, 4:30] = False
    torch.testing.assert_close(L1Loss(complement=True)(pred, target, mask), d.abs()[outside].mean())
    with pytest.raises(ValueError, match=r"\(4, 2, 32, 32\)"):
        L1Loss()(pred, target, torch.ones(B, 2, S, S))
    with pytest.raises(ValueError, match=r"\(4, 3, 16, 16\)"):
        MSELoss()(pred, target[..., :16, :16])


@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-6])
def test_charbonnier_tends_to_l1(eps):
    pred, target = images(1), images(2)
    l1, charb = L1Loss()(pred, target), CharbonnierLoss(eps=eps)(pred, target)
    assert l1 <= charb <= l1 + eps  # sqrt(d^2 + eps^2) is within eps of |d|
    if eps <= 1e-3:
        torch.testing.assert_close(charb, l1, rtol=0, atol=2 * eps)
        pred = pred.clone().requires_grad_(True)
        CharbonnierLoss(eps=eps)(pred, target).backward()
        big = (pred - target).abs() > 100 * eps  # away from 0 its gradient is L1's sign / N
        torch.testing.assert_close(pred.grad[big], (pred - target).sign()[big] / pred.numel(),
                                   rtol=1e-3, atol=0)


# ----------------------------------------------------------------------------- perceptual
def test_perceptual_loss_is_a_frozen_offline_distance():
    loss = PerceptualLoss()
    assert loss.distance.name == "st_lpips"
    assert not any(p.requires_grad for p in loss.parameters())
    x, y = images(1), images(2)
    assert loss(x, x) == 0
    pred = y.clone().requires_grad_(True)
    value = loss(pred, x)
    value.backward()
    assert value > 0 and pred.grad.abs().sum() > 0  # a loss: the gradient reaches the prediction
    loss.train()  # a model in training mode must not switch on the LPIPS heads' dropout
    assert not loss.distance.training
    assert torch.equal(loss(y, x), loss(y, x))
    # grey images are repeated to RGB
    assert loss(x[:, :1], y[:, :1]) > 0
    # its weights stay out of checkpoints and a state dict without them loads
    holder = nn.ModuleDict({"loss": LossSet({"l1": L1Loss(), "perceptual": loss})})
    assert not any("distance" in k for k in holder.state_dict())
    holder.load_state_dict(holder.state_dict(), strict=True)
    with pytest.raises(ConfigError, match="st_lpips"):
        PerceptualLoss(kind="auto")


# ----------------------------------------------------------------------------- the loss set
class Spy(LossTerm):
    """A discriminator-side term that records the step it was given (value 0)."""

    def __init__(self):
        super().__init__(weight=1.0)
        self.steps = []

    def d_loss(self, real_logits, step):
        self.steps.append(int(step))
        return real_logits.sum() * 0


def test_loss_set_inputs_and_errors():
    loss = LossSet({"l1": L1Loss(2.0), "kl": GaussianKL(0.5), "off": None})
    assert list(loss.terms) == ["l1", "kl"] and loss.names("discriminator") == []
    pred, target = images(1), images(2)
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(B, 8, generator=g), torch.randn(B, 8, generator=g)
    out = loss(pred=pred, target=target, mu=mu, logvar=logvar, unused=1)
    l1, kl = L1Loss()(pred, target), GaussianKL()(mu, logvar)
    torch.testing.assert_close(out.total, 2.0 * l1 + 0.5 * kl)
    assert out.parts.keys() == {"l1", "kl"} and torch.equal(out.parts["l1"], l1)  # unweighted
    assert out.named("train/loss") == {"train/loss/l1": out.parts["l1"],
                                       "train/loss/kl": out.parts["kl"]}
    assert loss.input_names() == {"pred", "target", "pixel_weight", "mu", "logvar"}
    with pytest.raises(ConfigError, match=r"'kl'.*\['mu', 'logvar'\].*\['pred', 'target'\]"):
        loss(pred=pred, target=target)
    with pytest.raises(ConfigError, match="no term acts on the discriminator"):
        loss.d_loss(pred=pred)
    with pytest.raises(ConfigError, match="'bad'.*Linear"):
        LossSet({"bad": nn.Linear(2, 2)})


def test_models_reject_losses_they_cannot_use(tmp_path):
    with pytest.raises(ConfigError, match="gan_hinge"):
        build(tmp_path, "model=dcgan", "loss=l1")
    with pytest.raises(ConfigError, match="likelihood"):
        build(tmp_path, "model=vae", "loss=gan_bce")
    with pytest.raises(ConfigError, match="codebook"):
        build(tmp_path, "model=vqvae", "model.quantizer.ema=false", "~loss.terms.codebook",
              *TINY["vqvae"])


def test_relativistic_pairing_ranks_each_real_above_its_fake():
    """RpGAN: D pays softplus(C(fake_i) - C(real_i)) per pair, G the reverse; a ranking, so adding a constant to
    every logit changes nothing (the non-saturating loss does change)."""
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, -3.0, 1.5])
    rp, sp = RelativisticPairingLoss(), F.softplus
    torch.testing.assert_close(rp.d_loss(real, fake), torch.stack([sp(torch.tensor(-1.5)), sp(torch.tensor(-2.0)),
                                                                  sp(torch.tensor(1.0))]).mean())
    torch.testing.assert_close(rp(fake, real), sp(real - fake).mean())
    torch.testing.assert_close(rp.d_loss(real + 7, fake + 7), rp.d_loss(real, fake))
    assert not torch.allclose(NonSaturatingLoss().d_loss(real + 7, fake + 7), NonSaturatingLoss().d_loss(real, fake))
    assert rp.sides() == ("model", "discriminator")
    with pytest.raises(ShapeMismatchError, match=r"real \(3,\) and fake \(2,\)"):
        rp.d_loss(real, fake[:2])


def test_a_gan_with_a_relativistic_loss_gives_g_the_real_logits_of_the_updated_d(tmp_path):
    """A generator term that takes ``real_logits`` (RpGAN, RaGAN) gets D's logits on the batch's real images
    under the D its step just updated, without gradient (G's update must not reach D); ``loss=gan_rp_r1`` trains."""
    import lightning as L

    from tests.test_models import loader, make_gan

    seen = []

    class Recording(RelativisticPairingLoss):
        def forward(self, fake_logits, real_logits):
            model.discriminator.requires_grad_(True)
            with torch.no_grad():
                expect = critic(batch_real[-2], None)  # [-1]: the fakes, scored for this call's fake_logits
            model.discriminator.requires_grad_(False)
            seen.append((real_logits.requires_grad, torch.allclose(real_logits, expect)))
            return super().forward(fake_logits, real_logits)

    batch_real = []
    model = make_gan(loss=LossSet({"adversarial": Recording()}))
    critic = model.critic
    model.critic = lambda images, condition: (batch_real.append(images), critic(images, condition))[1]
    model.discriminator.eval()  # BatchNorm with running statistics: the same logits for the same images
    model.discriminator.train = lambda mode=True: model.discriminator  # stays in eval mode
    L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model, loader())
    assert seen == [(False, True), (False, True)]
    metrics = train(compose_cfg(tmp_path, *FAST, *TINY["dcgan"], *SMALL_SHAPES, "loss=gan_rp_r1", "metrics=none",
                                "trainer.max_steps=8"))
    assert math.isfinite(metrics["train/g_loss"]) and math.isfinite(metrics["train/loss/d/r1"])


def test_gan_passes_the_discriminator_step_index():
    """Lazy regularisers count D steps; with n_disc=2 a cycle is D, D, G (3 global steps)."""
    import lightning as L

    from tests.test_models import loader, make_gan

    spy = Spy()
    model = make_gan(loss=LossSet({"adversarial": HingeLoss(), "spy": spy}), n_disc=2)
    L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model, loader())
    assert spy.steps == [0, 1, 2, 3]  # D D G | D D G: 4 D steps and 2 G steps in 6 global steps


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("option", LOSS_OPTIONS)
def test_every_loss_option_composes_and_builds(tmp_path, option):
    cfg = compose_cfg(tmp_path, f"loss={option}")
    OmegaConf.to_container(cfg, resolve=True)
    loss = instantiate(cfg.loss)
    assert isinstance(loss, LossSet) and len(loss.terms) >= 1
    assert OmegaConf.to_container(cfg.model.loss, resolve=True) == OmegaConf.to_container(cfg.loss)


def test_model_brings_its_loss_and_the_command_line_wins(tmp_path):
    choices = lambda *o: compose_cfg(tmp_path, *o).hydra.runtime.choices.loss  # noqa: E731
    assert choices() == "gan_bce_r1" and choices("model=dcgan") == "gan_bce"  # the default model is dcgan_r1
    assert choices("model=sngan") == "gan_hinge"
    assert choices("model=vae") == "vae" and choices("model=vqvae") == "vqvae"
    assert choices("model=vae", "loss=vae_bernoulli") == "vae_bernoulli"
    assert choices("loss=vae_bernoulli", "model=vae") == "vae_bernoulli"
    assert choices("experiment=dcgan_hinge_digits") == "gan_hinge"
    assert choices("experiment=dcgan_hinge_digits", "loss=wgan_gp") == "wgan_gp"


def test_term_weight_override_changes_the_total(tmp_path):
    x = images()
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(B, 8, generator=g), torch.randn(B, 8, generator=g)
    inputs = {"pred": x * 0.5, "target": x, "mu": mu, "logvar": logvar,
              "log_sigma": torch.tensor(-1.0)}
    base = instantiate(compose_cfg(tmp_path, "model=vae").loss)(**inputs)
    beta = instantiate(compose_cfg(tmp_path, "model=vae", "loss.terms.kl.weight=4").loss)(**inputs)
    # float32 sums of ~1e4 nats: compare to their rounding
    torch.testing.assert_close(beta.total - base.total, 3 * base.parts["kl"], rtol=0,
                               atol=1e-6 * float(beta.total.abs()))
    torch.testing.assert_close(beta.parts["kl"], base.parts["kl"])  # parts are unweighted
    dropped = instantiate(compose_cfg(tmp_path, "model=vae", "~loss.terms.kl").loss)(**inputs)
    torch.testing.assert_close(dropped.total, base.parts["recon"])


def test_a_term_added_from_the_command_line(tmp_path):
    model, cfg = build(tmp_path, "loss=gan_hinge", *TINY["dcgan"],
                       "+loss.terms.r1={_target_:mmexp.losses.adversarial.R1Penalty,weight:5,every:16}")
    r1 = model.loss.terms["r1"]
    assert isinstance(r1, R1Penalty) and (r1.weight, r1.every) == (5.0, 16)
    assert model.loss.names("discriminator") == ["adversarial", "r1"]
    assert model.loss.names("model") == ["adversarial"]


def test_unknown_loss_lists_the_choices(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(tmp_path, "loss=nope")
    message = str(err.value)
    assert "nope" in message
    for choice in LOSS_OPTIONS:
        assert choice in message, message


# ----------------------------------------------------------------------------- short runs
@pytest.mark.parametrize("overrides,parts", [
    (["model=dcgan", "loss=wgan_gp"],
     {"train/loss/d/adversarial", "train/loss/d/gradient_penalty", "train/loss/g/adversarial"}),
    (["model=dcgan", "loss=gan_hinge"], {"train/loss/d/adversarial", "train/loss/g/adversarial"}),
    (["model=dcgan", "+loss.terms.r1={_target_:mmexp.losses.adversarial.R1Penalty,weight:1}"],
     {"train/loss/d/adversarial", "train/loss/d/r1", "train/loss/g/adversarial"}),
    (["model=vae"], {"train/loss/recon", "train/loss/kl", "val/loss/recon", "val/loss/kl"}),
    (["model=vqvae"], {"train/loss/recon", "train/loss/commitment", "val/loss/recon"}),
    (["model=vqvae", "model.quantizer.ema=false"], {"train/loss/codebook", "val/loss/codebook"}),
], ids=["wgan_gp", "gan_hinge", "r1", "vae", "vqvae", "vqvae_codebook"])
def test_fast_dev_run(tmp_path, overrides, parts):
    model = overrides[0].split("=")[1]
    cfg = compose_cfg(tmp_path, *overrides, "debug=fdr", "metrics=none", *FAST, *TINY[model],
                      *SMALL_SHAPES, "data.batch_size=4", "data.eval_batch_size=4")
    metrics = train(cfg)
    assert parts <= set(metrics), sorted(metrics)
    totals = {"train/d_loss", "train/g_loss"} if model == "dcgan" else {"train/loss", "val/loss"}
    assert totals <= set(metrics), sorted(metrics)
    assert all(math.isfinite(metrics[k]) for k in parts | totals)
