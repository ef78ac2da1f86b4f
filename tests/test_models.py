"""LightningModules: training on dict batches, guards, sampling semantics, configs."""

import functools
import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from mmexp.errors import MissingBatchKeyError, NonFiniteLossError, ShapeMismatchError
from mmexp.losses import LossSet
from mmexp.losses.adversarial import NonSaturatingLoss
from mmexp.losses.kl import GaussianKL
from mmexp.losses.likelihood import BernoulliNLL, GaussianNLL
from mmexp.losses.reconstruction import MSELoss
from mmexp.losses.vq import CodebookLoss, CommitmentLoss
from mmexp.models import GAN, VAE, VQVAE
from mmexp.networks import (
    DCGANDiscriminator, DCGANGenerator, Decoder, Encoder, GaussianDecoder, GaussianEncoder,
    VectorQuantizer,
)
from tests.conftest import CountKernels, compose_cfg

C, S, B = 3, 32, 4
adam = functools.partial(torch.optim.Adam, lr=1e-3)


class RandomImages(Dataset):
    """Dict samples; ``nan_at`` puts NaN images in the batches with these (0-based) indices."""

    def __init__(self, n=32, nan_batches=(), fixed=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, C, S, S, generator=g) * 2 - 1
        if fixed:
            self.x[:] = self.x[:B].repeat(n // B, 1, 1, 1)
        self.nan_batches = set(nan_batches)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i].clone()
        if i // B in self.nan_batches:
            x[0, 0, 0] = float("nan")
        return {"image": x, "index": i}


def loader(**kw):
    return DataLoader(RandomImages(**kw), batch_size=B)


def trainer(max_steps=3, callbacks=()):
    return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=list(callbacks))


def make_gan(loss=None, **kw):
    loss = loss or LossSet({"adversarial": NonSaturatingLoss()})
    return GAN(DCGANGenerator(16, C, S, 8), DCGANDiscriminator(C, S, 8), loss, adam, adam, **kw)


def vae_loss(likelihood="gaussian", beta=1.0):
    nll = {"gaussian": GaussianNLL, "bernoulli": BernoulliNLL}[likelihood]()
    return LossSet({"recon": nll, "kl": GaussianKL(beta)})


def make_vae(loss=None, **kw):
    net = {"channels": C, "image_size": S, "latent_dim": 8, "base_channels": 8,
           "channel_mults": (1, 2)}
    return VAE(GaussianEncoder(**net), GaussianDecoder(**net), adam, loss or vae_loss(), **kw)


def vqvae_loss(beta=0.25):
    return LossSet({"recon": MSELoss(), "commitment": CommitmentLoss(beta),
                    "codebook": CodebookLoss()})


def make_vqvae(ema=True, loss=None, **kw):
    enc = Encoder(C, S, 8, 8, (1, 2, 2), 1)
    return VQVAE(enc, VectorQuantizer(32, 8, ema=ema), Decoder(C, 8, 8, (1, 2, 2), 1), adam,
                 loss or vqvae_loss(), **kw)


MAKERS = {"gan": make_gan, "vae": make_vae, "vqvae": make_vqvae}


class Recorder(L.Callback):
    """Keeps the logged metrics and a copy of the state_dict after every training batch."""

    def __init__(self):
        self.metrics, self.state = [], None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", list(MAKERS))
def test_trains_and_logs_finite(name):
    model, rec = MAKERS[name](), Recorder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = trainer(callbacks=[rec])
    t.fit(model, loader())
    keys = {"gan": {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake",
                    "train/loss/d/adversarial", "train/loss/g/adversarial"},
            "vae": {"train/loss", "train/loss/recon", "train/loss/kl", "train/sigma"},
            "vqvae": {"train/loss", "train/loss/recon", "train/loss/commitment",
                      "train/perplexity", "train/codebook_usage", "train/psnr"}}[name]
    # 3 steps, fewer than log_every_n_steps: what was summed on the device is logged at the epoch's end
    logged = {k: float(v) for k, v in t.callback_metrics.items()}
    assert keys <= set(logged)
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in [*rec.metrics, logged])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


@pytest.mark.parametrize("name", ["vae", "vqvae"])
def test_loss_decreases_on_a_fixed_batch(name):
    model, rec = MAKERS[name](log_every_n_steps=1), Recorder()
    trainer(max_steps=15, callbacks=[rec]).fit(model, loader(n=64, fixed=True))
    losses = [m["train/loss"] for m in rec.metrics]
    assert sum(losses[-3:]) < sum(losses[:3])


# ----------------------------------------------------------------------------- guards
@pytest.mark.parametrize("name", list(MAKERS))
def test_nan_raises_before_step_and_keeps_parameters(name):
    model, rec = MAKERS[name](), Recorder()
    with pytest.raises(NonFiniteLossError) as e:
        trainer(max_steps=20, callbacks=[rec]).fit(model, loader(nan_batches=(2,)))
    assert "train/" in str(e.value) and "step" in str(e.value)
    assert len(rec.metrics) == 2  # batches 0 and 1 finished, batch 2 raised
    params = dict(model.named_parameters())
    for k, v in rec.state.items():
        if k in params:
            assert torch.equal(params[k].detach(), v), k


def test_nan_with_sparse_checks_raises_later_and_assert_finite():
    model, rec = make_vae(finite_check_every_n_steps=3), Recorder()
    with pytest.raises(NonFiniteLossError, match=r"at step 1\b.*every 3 steps") as e:
        trainer(max_steps=20, callbacks=[rec]).fit(model, loader(nan_batches=(1,)))
    assert len(rec.metrics) == 2  # the check on batch 3 (index 2) raised
    with pytest.raises(NonFiniteLossError):
        model.assert_finite()
    assert "train/loss" in str(e.value)


def test_shape_mismatch_names_both_shapes():
    model = make_gan()
    model.check_data((3, 32, 32))
    with pytest.raises(ShapeMismatchError) as e:
        model.check_data((1, 28, 28))
    assert "(1, 28, 28)" in str(e.value) and "(3, 32, 32)" in str(e.value)

    class DM(L.LightningDataModule):
        image_shape, provides = (1, 28, 28), ("image", "index")

        def train_dataloader(self):
            return loader()

    with pytest.raises(ShapeMismatchError, match=r"\(1, 28, 28\)"):
        trainer().fit(make_vae(), datamodule=DM())


@pytest.mark.parametrize("name", list(MAKERS))
def test_missing_batch_key_names_it(name):
    model = MAKERS[name]()
    with pytest.raises(MissingBatchKeyError) as e:
        model.training_step({"label": torch.zeros(B), "index": torch.arange(B)}, 0)
    msg = str(e.value)
    assert "'image'" in msg and "label" in msg and "index" in msg


# ----------------------------------------------------------------------------- GAN specifics
@pytest.mark.parametrize("n_disc,max_steps,d_steps,g_steps", [(1, 4, 2, 2), (2, 6, 4, 2),
                                                               (3, 8, 6, 2), (3, 9, 7, 2)])
def test_gan_n_disc(n_disc, max_steps, d_steps, g_steps):
    model, rec = make_gan(n_disc=n_disc), Recorder()
    tr = trainer(max_steps=max_steps, callbacks=[rec])
    tr.fit(model, loader())
    opt_d, opt_g = tr.optimizers
    step = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert (step(opt_d), step(opt_g)) == (d_steps, g_steps)
    assert tr.global_step == max_steps == d_steps + g_steps  # global_step counts both
    assert len(rec.metrics) == d_steps  # one D step per batch


@pytest.mark.parametrize("name,kw", [("gan", {"ema_decay": 0.9, "n_disc": 2}),
                                     ("vqvae", {})])
def test_checkpoint_is_weights_only_and_resumes_in_phase(tmp_path, name, kw):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ck = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    L.Trainer(max_steps=3, accelerator="cpu", logger=False, callbacks=[ck],
              enable_progress_bar=False, enable_model_summary=False).fit(MAKERS[name](**kw),
                                                                         loader())
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain tensors and primitives
    assert all(isinstance(v, (int, float, str, bool, type(None)))
               for v in ckpt["hyper_parameters"].values())
    tr = trainer(max_steps=6)
    tr.fit(MAKERS[name](**kw), loader(), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    steps = [int(next(iter(o.state.values()))["step"]) for o in tr.optimizers]
    assert steps == ([4, 2] if name == "gan" else [6])  # D, D, G | D, D, G


@pytest.mark.parametrize("ema", [False, True])
def test_gan_ema_decides_which_generator_samples(ema):
    model = make_gan(ema_decay=0.5 if ema else None)
    trainer().fit(model, loader())
    assert ("ema.module.net.0.weight" in model.state_dict()) == ema
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    samples = model.generate(5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.generator.eval()
        from_g = model.generator(z)
        from_ema = model.ema.module.eval()(z) if ema else None
    model.train()
    if ema:
        torch.testing.assert_close(samples, from_ema)
        assert not torch.allclose(samples, from_g)
    else:
        torch.testing.assert_close(samples, from_g)


def test_gan_validation_and_preview_are_reproducible():
    model = make_gan(num_preview=16)
    batch = next(iter(loader()))
    model.on_validation_epoch_start()
    out1 = model.validation_step(batch, 0)
    model.on_validation_epoch_start()
    out2 = model.validation_step(batch, 0)
    assert set(out1) == {"real", "fake"} and out1["fake"].shape == batch["image"].shape
    torch.testing.assert_close(out1["fake"], out2["fake"])
    state = torch.get_rng_state()
    (p1, nrow), (p2, _) = model.preview(batch), model.preview(batch)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert p1.shape == (16, C, S, S) and nrow == 4 and torch.equal(p1, p2)
    assert p1.min() >= -1 and p1.max() <= 1


@pytest.mark.parametrize("name", ["gan", "vae"])
def test_validation_fakes_depend_only_on_sample_index(name):
    """Under DDP each rank sees other batches of the split: fake i must be the same image whatever
    batch (size, order, process) index i comes in, and the metric top-up draws the same ones."""
    model = MAKERS[name]()
    x = torch.rand(8, C, S, S) * 2 - 1
    whole = model.validation_step({"image": x, "index": torch.arange(8)}, 0)["fake"]
    order = torch.tensor([5, 1, 7])
    part = model.validation_step({"image": x[order], "index": order}, 3)["fake"]
    torch.testing.assert_close(part, whole[order], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.generate_indexed(torch.tensor([6, 2])), whole[[6, 2]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(whole[0], whole[1])  # distinct noise per index
    other_seed = model.generate_indexed(torch.arange(2), seed=model.sample_seed + 1)
    assert not torch.allclose(other_seed, whole[:2])
    with pytest.raises(MissingBatchKeyError, match="index"):
        model.validation_step({"image": x}, 0)


# ----------------------------------------------------------------------------- VAE / VQ-VAE
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_vae_outputs(likelihood):
    model = make_vae(vae_loss(likelihood), num_preview=3)
    batch = next(iter(loader()))
    model.on_validation_epoch_start()
    out = model.validation_step(batch, 0)
    assert set(out) == {"real", "fake", "pred", "target"}
    for v in out.values():
        assert v.shape == batch["image"].shape and v.min() >= -1 and v.max() <= 1
    images, nrow = model.preview(batch)
    assert images.shape == (9, C, S, S) and nrow == 3
    assert model.generate(2).shape == (2, C, S, S)
    (total, parts), _ = model.elbo_terms(batch["image"])
    assert set(parts) == {"recon", "kl"} and torch.isfinite(total) and parts["kl"] >= 0
    assert model.learn_sigma == (likelihood == "gaussian")  # Bernoulli has no sigma to learn


def test_vqvae_codes_and_outputs():
    model = make_vqvae(num_preview=2)
    batch = next(iter(loader()))
    idx = model.encode(batch["image"])
    assert idx.shape == (B, 8, 8) and idx.dtype == torch.long
    rec = model.decode_indices(idx)
    torch.testing.assert_close(rec, model.reconstruct(batch["image"]))
    out = model.validation_step(batch, 0)
    # reconstructions are not samples: reported as "recon" (scored as rFID), never as "fake"
    assert set(out) == {"real", "recon", "pred", "target"} and torch.equal(out["recon"], out["pred"])
    images, nrow = model.preview(batch)
    assert images.shape == (4, C, S, S) and nrow == 2
    with pytest.raises(NotImplementedError, match="reconstruct"):
        model.generate(4)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name,channels,size", [("dcgan", 3, 32), ("dcgan", 1, 28),
                                                ("dcgan", 3, 64), ("vae", 1, 28),
                                                ("vae", 3, 32), ("vqvae", 3, 32),
                                                ("vqvae", 1, 28)])
def test_configs_build(tmp_path, name, channels, size):
    cfg = compose_cfg(tmp_path, f"model={name}", f"data.channels={channels}",
                      f"data.image_size={size}")
    model = instantiate(cfg.model)
    model.check_data((channels, size, size))
    opts = model.configure_optimizers()
    opts = opts if isinstance(opts, list) else [opts]
    assert all(isinstance(o.param_groups[0]["lr"], float) for o in opts)


def test_config_overrides_swap_parts(tmp_path):
    from mmexp.losses.adversarial import HingeLoss

    cfg = compose_cfg(tmp_path, "model=dcgan", "loss=gan_hinge", "model.ema_decay=0.999",
                      "model.discriminator.spectral_norm=true", "model.generator.base_channels=8")
    model = instantiate(cfg.model)
    assert isinstance(model.loss.terms["adversarial"], HingeLoss) and model.ema is not None
    assert model.hparams.ema_decay == 0.999


def test_training_scalars_are_logged_as_means_every_n_steps_without_a_sync_in_between():
    """log_every_n_steps=4: the logger receives the loss at batches 4 and 8 only, each the mean of the four
    batches' losses (kept on the device until then)."""
    from lightning.pytorch.loggers import Logger

    class Capture(Logger):
        name, version, experiment = "capture", "0", None
        calls: list = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((step, dict(metrics)))

        def log_hyperparams(self, *args, **kwargs):
            pass

    seen = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(outputs["loss"]))

    model = MAKERS["vae"](log_every_n_steps=4)
    L.Trainer(max_steps=8, accelerator="cpu", logger=Capture(), log_every_n_steps=4, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[Losses()]).fit(model, loader())
    logged = [(step, m["train/loss"]) for step, m in Capture.calls if "train/loss" in m]
    assert [step for step, _ in logged][:2] == [3, 7], logged
    assert logged[0][1] == pytest.approx(sum(seen[:4]) / 4, rel=1e-5)
    assert logged[1][1] == pytest.approx(sum(seen[4:8]) / 4, rel=1e-5)


fused_adam = functools.partial(torch.optim.Adam, lr=1e-3, fused=True)


@pytest.mark.parametrize("name", list(MAKERS))
def test_a_nan_step_leaves_weights_buffers_and_ema_as_they_were_without_a_sync_per_step(name):
    """Fused optimizers skip a non-finite update on the device; the buffers of that forward pass (BatchNorm
    running statistics, spectral-norm vectors, an EMA codebook) and the EMA generator are restored. The host
    check runs only every 4 batches, so batch 2 goes through the whole step and the error comes in batch 3."""
    kw = {"finite_check_every_n_steps": 4}
    if name == "gan":
        model = make_gan(ema_decay=0.5, **kw)
        model.optimizer_g = model.optimizer_d = fused_adam
    else:
        model = MAKERS[name](**kw)
        model.optimizer_fn = fused_adam
    rec = Recorder()

    class Snap(L.Callback):
        states = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    with pytest.raises(NonFiniteLossError, match="restored") as e:
        trainer(max_steps=40, callbacks=[Snap(), rec]).fit(model, loader(nan_batches=(2,)))
    assert "at step" in str(e.value)
    good, after_bad = Snap.states[1], Snap.states[2]  # after batch 1 (good) and batch 2 (NaN)
    assert len(Snap.states) == 3  # batches 0-2 finished; the host check in batch 4 (index 3) raised
    for key, value in good.items():
        assert torch.equal(after_bad[key], value), f"{key} changed in the NaN step"
        assert torch.isfinite(after_bad[key].float()).all(), key
    for key, value in model.state_dict().items():
        assert torch.isfinite(value.float()).all(), f"{key} is not finite in memory"


def test_nan_forward_restores_discriminator_batchnorm_with_a_check_every_step():
    """The sync-per-step mode (non-fused optimizers): the check raises before backward, and the running
    statistics the NaN forward pass wrote into D's BatchNorm are put back."""
    model = make_gan()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.discriminator.modules())
    rec = Recorder()
    with pytest.raises(NonFiniteLossError):
        trainer(max_steps=20, callbacks=[rec]).fit(model, loader(nan_batches=(2,)))
    for key, value in model.discriminator.state_dict().items():
        assert torch.isfinite(value.float()).all(), f"discriminator {key} holds NaN after the NaN step"
        assert torch.equal(value, rec.state[f"discriminator.{key}"]), key


def test_buffer_snapshot_restores_in_a_fixed_number_of_kernels():
    """Snapshot and conditional restore of 36 buffers (12 BatchNorms: float statistics and an int64 counter each)
    take a handful of kernel launches, not ~3 per buffer (each launch is host time a small GPU step cannot spare),
    and put back exactly the old values when the step was not finite, nothing when it was."""
    net = torch.nn.Sequential(*[torch.nn.BatchNorm1d(5) for _ in range(12)])
    model = make_gan()
    model.extra = net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    objects = [id(b) for b in net.buffers()]
    model.snapshot_buffers(net)  # the first one moves the buffers into one flat tensor per dtype (once)
    assert [id(b) for b in net.buffers()] == objects  # the same tensor objects: modules and DDP keep theirs
    with CountKernels() as taking:
        snap = model.snapshot_buffers(net)
    assert len(snap) == 36
    net.train()(torch.randn(8, 5))  # changes every running stat and counter
    changed = {k: v.clone() for k, v in net.state_dict().items()}
    assert not all(torch.equal(before[k], changed[k]) for k in before)
    with CountKernels() as keeping:
        snap.restore_unless(torch.tensor(True))
    assert all(torch.equal(v, changed[k]) for k, v in net.state_dict().items())
    with CountKernels() as restoring:
        snap.restore_unless(torch.tensor(False))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # two dtype groups: a clone each to take, a where (in place) each to restore
    assert taking.count <= 2 and keeping.count <= 2 and restoring.count <= 2, \
        (taking.count, keeping.count, restoring.count)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")])
def test_the_guard_and_its_skip_flag_take_four_kernels_and_a_fused_step_reads_the_flag(bad):
    """guard_finite records the losses and yields both ``ok`` and the float ``found_inf`` flag a fused optimizer's
    step reads in four kernel launches (stack into the record, the flag's zero, GradScaler's non-finite check, ok);
    skip_unless hands that flag over without another. Then one fused Adam step moves the weights and counts the step
    exactly when the losses were finite."""
    model = make_gan(finite_check_every_n_steps=100)
    d_loss = torch.tensor(0.7)
    g_loss = torch.tensor(1.2 if bad is None else bad)
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([weight], lr=0.1, fused=True)
    weight.grad = torch.ones(3)
    model.on_train_batch_start(None, 0)  # batch 1 of 100 between host checks
    model.guard_finite(**{"train/d_loss": d_loss, "train/g_loss": d_loss})  # the first call makes the record
    with CountKernels() as guarding:
        ok = model.guard_finite(**{"train/d_loss": d_loss, "train/g_loss": g_loss})
        model.skip_unless(opt, ok)
    assert guarding.count <= 4, guarding.count  # was 6: x * 0 == 0, all(), and a float copy of not-ok
    assert bool(ok) is (bad is None)
    assert opt.found_inf.dtype == torch.float32 and float(opt.found_inf) == (0.0 if bad is None else 1.0)
    opt.step()
    assert torch.equal(weight.detach(), torch.ones(3)) is (bad is not None)
    assert float(opt.state[weight]["step"]) == (1.0 if bad is None else 0.0)
    # the record holds the values as they were (the check's unit scale leaves them alone)
    row = model._loss_records[("train/d_loss", "train/g_loss")].values[1]
    assert row[0].item() == pytest.approx(0.7) and (row[1].item() == pytest.approx(1.2) if bad is None
                                                      else not math.isfinite(row[1].item()))


def test_training_scalars_of_any_shape_and_dtype_sum_on_the_device():
    """log_train stacks 0-dim float32 scalars as they are; a [1]-shaped, a float64 or a half value beside them takes
    the general path, and every value is summed exactly, in the order of its key."""
    model = make_gan()
    for values in ({"a": torch.tensor(1.5), "b": torch.tensor(-2.0, requires_grad=True) * 1},
                   {"a": torch.tensor([0.5]), "b": torch.tensor(1.0, dtype=torch.float64)},
                   {"a": torch.tensor(2.0, dtype=torch.float16), "b": torch.tensor(0.25)}):
        model.log_train(values)
    vec, count = model._running[("a", "b")]
    assert count == 3 and vec.dtype == torch.float32 and not vec.requires_grad
    assert vec.tolist() == [4.0, -0.75]


def test_step_logs_reach_the_logger_and_callback_metrics_without_lightnings_result_collection(tmp_path):
    """Every log_every_n_steps batches the means since the last log go straight to the loggers, at the step and with
    the epoch Lightning gives on-step logs, and into the trainer's callback metrics (monitors, metrics.json); not
    through self.log, whose result collection costs ~11,000 Python calls a flush (benchmarks/README.md)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    model = make_gan()
    seen: list[float] = []  # every batch's d_loss as guarded, to compute the expected means
    guard = model.guard_finite

    def recording_guard(snapshot=None, **losses):
        if "train/g_loss" not in losses:
            seen.append(float(losses["train/d_loss"]))
        return guard(snapshot, **losses)

    model.guard_finite = recording_guard
    on_step_logs = []
    log = model.log
    model.log = lambda name, value, *a, **k: (on_step_logs.append(name) if k.get("on_step") else None,
                                               log(name, value, *a, **k))[1]
    t = L.Trainer(max_steps=16, accelerator="cpu", logger=CSVLogger(tmp_path, name="", version=""),
                  log_every_n_steps=2, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    t.fit(model, loader(n=64))
    assert on_step_logs == []
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/d_loss")]
    # 8 batches (a D and a G step each), a log every 2 batches, at Lightning's steps 1, 3, 5, 7
    assert [int(r["step"]) for r in rows[:4]] == [1, 3, 5, 7] and all(r["epoch"] == "0" for r in rows)
    for i, r in enumerate(rows[:4]):
        assert float(r["train/d_loss"]) == pytest.approx(sum(seen[2 * i:2 * i + 2]) / 2, rel=1e-5)
    # what monitors and metrics.json see: the last mean logged (the epoch ended on a log step, nothing was left)
    assert len(rows) == 4 and len(seen) == 8
    assert t.callback_metrics["train/d_loss"].item() == pytest.approx(sum(seen[6:]) / 2, rel=1e-5)


class HookCounter(L.Callback):
    """Listens to the hooks Lightning calls on the way through backward and the optimizer step."""

    def __init__(self):
        self.calls = {"on_before_backward": 0, "on_after_backward": 0, "on_before_optimizer_step": 0}

    def on_before_backward(self, trainer, module, loss):
        self.calls["on_before_backward"] += 1

    def on_after_backward(self, trainer, module):
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.calls["on_before_optimizer_step"] += 1


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_manual_steps_skip_lightnings_strategy_only_when_nothing_listens_and_update_the_same(precision):
    """With nothing to call on the way (one device, no GradScaler, no callback or module hook on backward and the
    optimizer step), the GAN's backward and optimizer steps go straight to torch (~400 Python calls a batch fewer,
    benchmarks/README.md); a callback that listens gets every hook, through Lightning, and the weights, the
    optimizer states and Lightning's step count come out the same either way."""
    runs = {}
    for listen in (False, True):
        torch.manual_seed(0)
        model, hooks = make_gan(), HookCounter()
        t = L.Trainer(max_steps=8, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[hooks] if listen else [])
        through_lightning = []
        backward = t.strategy.backward
        t.strategy.backward = lambda *a, **k: (through_lightning.append(1), backward(*a, **k))[1]
        t.fit(model, loader())
        assert model.direct_steps() is (not listen)
        # 4 batches, a D and a G step each
        assert t.global_step == 8
        assert len(through_lightning) == (8 if listen else 0)
        assert hooks.calls == (dict.fromkeys(hooks.calls, 8) if listen else dict.fromkeys(hooks.calls, 0))
        runs[listen] = (model.state_dict(), [o.state_dict() for o in t.optimizers])
    (w0, o0), (w1, o1) = runs[False], runs[True]
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    for a, b in zip(o0, o1):
        for p, state in a["state"].items():
            assert all(torch.equal(v, b["state"][p][k]) for k, v in state.items())


def test_manual_steps_go_through_lightning_with_a_grad_scaler_a_hooked_module_or_another_strategy():
    """Whatever would act on the way keeps Lightning's path: a GradScaler (16-bit mixed precision scales the loss
    and unscales before the step), a module that overrides a hook or ``backward``, a multi-device strategy."""
    model = make_gan()
    t = L.Trainer(max_steps=2, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
    t.fit(model, loader())
    assert model.direct_steps()
    t.strategy.precision_plugin.scaler = torch.amp.GradScaler("cpu")  # as 16-mixed on a GPU has
    model._direct = None
    assert not model.direct_steps()

    class Hooked(GAN):
        def on_after_backward(self):
            pass

    hooked = Hooked(*[getattr(model, k) for k in ("generator", "discriminator", "loss")], adam, adam)
    t = trainer()
    t.fit(hooked, loader())
    assert not hooked.direct_steps()
    from lightning.pytorch.strategies import DDPStrategy
    model._direct = None
    model._trainer = type("T", (), {"strategy": DDPStrategy(), "callbacks": []})()
    assert not model.direct_steps()


def test_buffer_list_follows_the_module_to_a_new_dtype():
    """snapshot_buffers caches each module set's buffer list; ``.double()`` replaces the buffers and must not
    leave the cache restoring into the old float32 tensors."""
    model = make_gan()
    model.snapshot_buffers(model.discriminator)
    model.double()
    bn = next(m for m in model.discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    old = bn.running_mean.clone()
    snap = model.snapshot_buffers(model.discriminator)
    bn.running_mean.fill_(float("nan"))
    snap.restore_unless(torch.tensor(False))
    assert bn.running_mean.dtype == torch.float64 and torch.equal(bn.running_mean, old)


def test_training_scalars_with_different_keys_per_batch_average_per_key():
    """With n_disc=2 a D-only batch logs the D scalars and a D+G batch also the G ones: each key is the mean over
    the batches that logged it."""
    model = make_gan()
    logged = {}
    model.log_dict = lambda values, **kw: logged.update(values)
    for values in ({"d": 1.0}, {"d": 2.0, "g": 10.0}, {"d": 6.0}, {"d": 3.0, "g": 20.0}):
        model.log_train({k: torch.tensor(v) for k, v in values.items()})
    model._flush_train_logs(on_step=True)
    assert logged == {"d": pytest.approx(3.0), "g": pytest.approx(15.0)}
    assert not model._running
    # CPU tensors: Lightning reads every progress-bar value with .item() after every batch, which for a value on the
    # GPU (where it would put a float) is a device sync per training step
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in logged.values()), logged


def test_guarding_the_same_losses_twice_a_batch_keeps_every_value():
    """The loss record holds one row per call between host checks; a model that guards the same losses more often
    than once a batch fills it sooner, and a full record is checked then rather than overwritten (a NaN in its
    oldest row would otherwise be lost)."""
    model = make_vae(finite_check_every_n_steps=3)
    model._batches_seen = 1  # not a check batch
    assert not bool(model.guard_finite(loss=torch.tensor(float("nan"))))
    assert bool(model.guard_finite(loss=torch.tensor(1.0)))
    with pytest.raises(NonFiniteLossError, match=r"'loss' became non-finite \(nan\) at step 0"):
        model.guard_finite(loss=torch.tensor(2.0))  # the third row fills the record: checked
    with pytest.raises(NonFiniteLossError):  # and it stays raised: no checkpoint of this state
        model.assert_finite()


def test_flat_buffers_survive_checkpoints_copies_and_replaced_storage(tmp_path):
    """Snapshotting moves the buffers into one flat tensor per dtype; a state_dict saved from them loads (weights
    only) into a fresh model, a deep copy is independent, and a module that gives a buffer new storage is
    flattened again rather than silently left out of the snapshot."""
    import copy

    model = make_gan()
    model.snapshot_buffers(*model.adversarial_modules())
    model.discriminator.train()(torch.randn(4, C, S, S))  # running statistics move, in the flat tensor
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = make_gan()
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    twin = copy.deepcopy(model)
    bn = next(m for m in model.discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn_twin = next(m for m in twin.discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.add_(1.0)
    assert not torch.equal(bn.running_mean, bn_twin.running_mean)
    bn.running_var.data = torch.full_like(bn.running_var, 3.0)  # new storage, outside the flat tensor
    snap = model.snapshot_buffers(*model.adversarial_modules())
    bn.running_var.fill_(float("nan"))
    snap.restore_unless(torch.tensor(False))
    assert torch.equal(bn.running_var, torch.full_like(bn.running_var, 3.0))


def test_a_gan_step_reads_nothing_back_between_logs_and_the_bar_shows_the_losses():
    """On a GPU every read of a tensor's value into Python (.item(), .tolist(), bool(t)) waits for the device. The
    GAN's training iterations read nothing except where training scalars are logged (every log_every_n_steps) or
    the non-finite record is checked; the progress bar still shows the losses (numbers read at the log)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from mmexp.callbacks import ProgressBar

    class Reads(TorchDispatchMode, L.Callback):
        def __init__(self):
            super().__init__()
            self.per_batch, self.batch = {}, None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.batch is not None and str(func).startswith("aten._local_scalar_dense"):
                self.per_batch[self.batch] = self.per_batch.get(self.batch, 0) + 1
            return func(*args, **(kwargs or {}))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.batch = batch_idx

    fused = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999), fused=True)  # the configs' kind
    model = GAN(DCGANGenerator(16, C, S, 8), DCGANDiscriminator(C, S, 8),
                LossSet({"adversarial": NonSaturatingLoss()}), fused, fused, log_every_n_steps=10)
    reads, bar = Reads(), ProgressBar(refresh_rate=5)
    trainer = L.Trainer(max_steps=2 * 25, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=[reads, bar])
    with reads:
        trainer.fit(model, loader(n=25 * B))
    # batches 9 and 19 log (the 10th and 20th); the last batch ends the epoch (its scalars and a check)
    assert set(reads.per_batch) <= {9, 19, 24}, reads.per_batch
    shown = bar.get_metrics(trainer, model)
    assert {"train/d_loss", "train/g_loss"} <= set(shown) and all(
        isinstance(shown[k], float) for k in ("train/d_loss", "train/g_loss")), shown


# ----------------------------------------------------------------------------- channels-last weights
def make_sn_gan(**kw):
    torch.manual_seed(0)
    g, d = DCGANGenerator(16, C, S, 8, upsample="nearest"), DCGANDiscriminator(C, S, 8, spectral_norm=True)
    return GAN(g, d, LossSet({"adversarial": NonSaturatingLoss()}), fused_adam, fused_adam, ema_decay=0.9, **kw)


def is_channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_channels_last_gan_keeps_its_conv_weights_grads_moments_and_ema_channels_last_and_its_numbers():
    torch.manual_seed(1)
    plain = make_sn_gan()
    trainer(max_steps=6).fit(plain, loader())
    torch.manual_seed(1)
    fast = make_sn_gan(channels_last=True)
    trainer(max_steps=6).fit(fast, loader())
    convs = [(n, p) for n, p in fast.named_parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(is_channels_last(p) for _, p in convs), [n for n, p in convs if not is_channels_last(p)]
    assert all(is_channels_last(p.grad) for _, p in convs if p.grad is not None)
    moments = [s["exp_avg"] for o in fast.trainer.optimizers for p, s in o.state.items() if p.dim() == 4]
    assert moments and all(is_channels_last(m) for m in moments if m.shape[-1] > 1)
    assert all(is_channels_last(p) for p in fast.ema.module.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    # the same arithmetic in another memory order: equal up to float rounding
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), name


class PairedCaptioned(Dataset):
    """Images of ``size`` px with ``input`` (2x average-pooled), ``target`` and one of ``prompts`` as ``caption``."""

    def __init__(self, size, prompts=(), n=8):
        self.x, self.prompts = RandomImages(n).x[:, :, :size, :size], list(prompts) or [""]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return {"image": x, "target": x, "input": torch.nn.functional.avg_pool2d(x, 2), "index": i,
                "caption": self.prompts[i % len(self.prompts)]}


def channels_last_family(family, tmp_path, channels_last):
    """A tiny model of ``family`` and a loader of the batches it trains on."""
    if family in ("vae", "vqvae"):
        return MAKERS[family](channels_last=channels_last), loader()
    if family == "restoration":  # SR x2 with a discriminator, as ESRGAN trains
        from mmexp.losses.adversarial import RelativisticAverageLoss
        from mmexp.losses.reconstruction import L1Loss
        from mmexp.models.restoration import RestorationModel
        from mmexp.networks.srresnet import MSRResNet
        model = RestorationModel(MSRResNet(C, C, 8, 1, upscale=2),
                                 LossSet({"l1": L1Loss(), "adversarial": RelativisticAverageLoss(0.1)}), adam,
                                 discriminator=DCGANDiscriminator(C, S, 8), optimizer_d=adam,
                                 channels_last=channels_last)
        return model, DataLoader(PairedCaptioned(S), batch_size=B)
    from tests.test_diffusion import PROMPTS, tiny_model
    # SGD: Adam turns the rounding noise of near-zero gradients into lr-sized steps that differ between layouts
    model, cfg = tiny_model(tmp_path, f"model.channels_last={channels_last}", "model.optimizer._target_=torch.optim.SGD")
    return model, DataLoader(PairedCaptioned(cfg.data.image_size, PROMPTS), batch_size=B)


@pytest.mark.parametrize("family", ["vae", "vqvae", "restoration", "diffusion"])
def test_channels_last_reaches_every_trained_family_with_the_same_numbers(tmp_path, family):
    runs = {}
    for cl in (False, True):
        torch.manual_seed(1)
        model, data = channels_last_family(family, tmp_path, cl)
        torch.manual_seed(2)
        trainer(max_steps=4).fit(model, data)
        runs[cl] = model
    fast = runs[True]
    assert fast.channels_last and not runs[False].channels_last
    # weights whose two layouts differ in memory (not 1x1 kernels, not one input channel)
    convs = [(n, p) for n, p in fast.named_parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convs and all(is_channels_last(p) for _, p in convs), [n for n, p in convs if not is_channels_last(p)]
    if family != "diffusion":  # (trained with SGD, no moments)
        moments = [s["exp_avg"] for o in fast.trainer.optimizers for p, s in o.state.items()
                   if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
        assert moments and all(is_channels_last(m) for m in moments)
    plain = runs[False].state_dict()
    tensors = {name: a for name, a in plain.items() if torch.is_tensor(a)}  # the diffusion's state has extra_state
    assert tensors.keys() == {n for n, b in fast.state_dict().items() if torch.is_tensor(b)}
    for name, a in tensors.items():
        assert torch.allclose(a.float(), fast.state_dict()[name].float(), atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("saved_cl, resumed_cl", [(False, True), (True, False)])
def test_a_checkpoint_resumes_into_the_other_memory_layout_as_into_its_own(tmp_path, saved_cl, resumed_cl):
    """Fused Adam walks a parameter and its moments as flat memory: moments loaded in the layout they were saved in
    would be paired with other elements of a parameter in the other layout (0.16 off after one lr-0.1 step)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(1)
    ck = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    L.Trainer(max_steps=4, accelerator="cpu", logger=False, callbacks=[ck], enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0).fit(make_sn_gan(channels_last=saved_cl), loader())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    assert any(is_channels_last(s["exp_avg"]) == saved_cl for s in saved.values() if s["exp_avg"].dim() == 4)
    runs = {}
    for cl in (saved_cl, resumed_cl):
        torch.manual_seed(5)  # the bare Trainer does not restore the RNG: the same noise after the resume
        runs[cl] = make_sn_gan(channels_last=cl)
        trainer(max_steps=8).fit(runs[cl], loader(), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    for o in runs[resumed_cl].trainer.optimizers:
        for p, s in o.state.items():
            assert s["exp_avg"].stride() == p.stride() and s["exp_avg_sq"].stride() == p.stride()
    for (name, a), b in zip(runs[saved_cl].state_dict().items(), runs[resumed_cl].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_fakes_runs_the_generator_once_per_iteration_and_scores_the_fakes_d_just_saw(reuse):
    torch.manual_seed(0)
    model = make_gan(reuse_fakes=reuse)
    g_calls, d_inputs = [], []
    model.generator.register_forward_hook(lambda m, i, o: g_calls.append(torch.is_grad_enabled()))
    model.discriminator.register_forward_hook(lambda m, i, o: d_inputs.append(i[0].detach().clone()))
    before = [p.detach().clone() for p in model.generator.parameters()]
    trainer(max_steps=6).fit(model, loader())  # 3 iterations: a D and a G step each
    # D sees real, fake (D step), fake (G step) per iteration
    assert len(d_inputs) == 9
    if reuse:
        assert g_calls == [True] * 3  # one G forward per iteration, with the graph its step needs
    else:
        assert g_calls == [False, True] * 3  # the D step's fakes without a graph, then fresh ones
    for it in range(3):
        real, fake_d, fake_g = d_inputs[3 * it: 3 * it + 3]
        assert not torch.equal(real, fake_d)
        assert torch.equal(fake_d, fake_g) == reuse
    after = list(model.generator.parameters())
    assert all(torch.isfinite(p).all() for p in after) and any(not torch.equal(a, b) for a, b in zip(before, after))
