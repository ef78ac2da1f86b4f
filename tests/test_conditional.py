"""The conditional-model base: per-sample randomness, guidance plumbing, validation conditions, prompt grids."""

from __future__ import annotations

import torch
from torch import nn

from mmexp.conditioning import Conditioner
from mmexp.conditioning.learned import LearnedTextEncoder
from mmexp.grids import grid
from mmexp.models.conditional import ConditionalModule

CAPTIONS = ["a small red circle on a black background", "a large blue square on a white background",
            "a small green triangle on a gray background"]


class Toy(ConditionalModule):
    """Image = a constant colour from the pooled condition + noise: enough to test the plumbing."""

    def __init__(self, **kw):
        enc = LearnedTextEncoder(dim=16, depth=1, heads=2)
        super().__init__(Conditioner(enc, num_classes=4, dim=8), **kw)
        self.head = nn.Linear(8, 3)
        self.calls = []

    @property
    def image_shape(self):
        return (3, 4, 4)

    def sample(self, condition, generators, guidance, **sampler):
        self.calls.append({"guidance": guidance, **sampler})
        colour = self.head(condition.pooled)[:, :, None, None]
        return torch.tanh(colour + 0.1 * self.randn_per_sample(generators, 3, 4, 4))


def toy() -> Toy:
    model = Toy(sampler={"steps": 5}, guidance=2.0)
    model.conditioner.prepare(CAPTIONS)
    return model


def test_an_image_depends_on_its_condition_and_index_not_on_its_batch():
    model = toy()
    a = model.generate_conditional(CAPTIONS, torch.tensor([0, 1, 2]), indices=[10, 11, 12])
    b = model.generate_conditional(CAPTIONS[1:], torch.tensor([1, 2]), indices=[11, 12], batch_size=1)
    # equal up to float rounding: the text encoder pads captions to the longest one of its batch
    torch.testing.assert_close(a[1:], b, rtol=0, atol=1e-5)
    c = model.generate_conditional(CAPTIONS, torch.tensor([0, 1, 2]), indices=[10, 11, 12], seed=7)
    assert not torch.equal(a, c)


def test_sampler_settings_and_guidance_are_defaults_a_call_overrides():
    model = toy()
    model.generate_conditional(CAPTIONS[:1], torch.tensor([0]))
    model.generate_conditional(CAPTIONS[:1], torch.tensor([0]), guidance=1.0, steps=9, top_k=3)
    assert model.calls == [{"guidance": 2.0, "steps": 5}, {"guidance": 1.0, "steps": 9, "top_k": 3}]


def test_validation_conditions_on_the_batch_and_returns_its_conditions():
    model = toy()
    batch = {"image": torch.zeros(3, 3, 4, 4), "index": torch.arange(3), "caption": CAPTIONS,
             "label": torch.tensor([0, 1, 2])}
    out = model.validation_step(batch, 0)
    assert out["caption"] == CAPTIONS and torch.equal(out["label"], batch["label"])
    torch.testing.assert_close(out["fake"], model.generate_conditional(CAPTIONS, batch["label"], indices=batch["index"]))


def test_preview_rows_share_seeds_and_carry_their_prompts():
    model = toy()
    model.num_per_prompt = 4
    images, nrow, captions = model.preview({"caption": CAPTIONS * 2, "label": torch.tensor([0, 1, 2] * 2)})
    assert images.shape == (12, 3, 4, 4) and nrow == 4 and len(captions) == 3
    assert captions[0].startswith(CAPTIONS[0])
    picture = grid(images, nrow, captions)
    assert picture.shape[0] == 3 and picture.shape[-1] > 260 and 0 <= picture.min() and picture.max() <= 1
