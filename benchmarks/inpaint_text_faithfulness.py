"""Does text-guided inpainting paint what the caption says? (issue 9; ``experiment=inpaint_text_shapes_cpu``)

On the test split of one-object shapes with the object's mask as the hole (``degradation=object``: the object is
gone from the input, only the background around it is known), the model fills each hole three ways:

- ``own``: with the image's own caption ("a small red circle on a black background");
- ``null``: with no caption (the conditioner's learned null caption, which training taught by dropping 10% of
  the captions): what the same network paints unguided;
- ``swapped``: with the caption of another colour and shape ("a small blue square ..."): the object can only
  come from the text, since nothing of it is left in the input.

Each filled image is read by the shapes attribute reader (:mod:`mmexp.metrics.faithfulness`) and checked against
the caption it should show (``own`` and ``null`` against the true caption; ``swapped`` against the swapped one):
``caption_color`` (an object of the stated colour is there), ``caption_shape`` (that object has the stated shape),
``caption_all`` (every check, background and size included). The reader's own score on the real test images is the
ceiling (``real``).

    PYTHONPATH=. python benchmarks/inpaint_text_faithfulness.py RUN/checkpoints/last.ckpt [--n 256]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

import torch

import mmexp
from mmexp.config import build
from mmexp.data.shapes import COLORS, SHAPES, CaptionFacts, parse_caption
from mmexp.metrics.faithfulness import AttributeReader, caption_checks, summarize


def swap(caption: str, k: int) -> str:
    """The caption with its object's colour and shape moved ``k`` places along COLORS and SHAPES."""
    facts = parse_caption(caption)
    obj = facts.objects[0]
    colors, shapes = list(COLORS), list(SHAPES)
    color = colors[(colors.index(obj.color) + k) % len(colors)]
    shape = shapes[(shapes.index(obj.shape) + k) % len(shapes)]
    return CaptionFacts(facts.background, (replace(obj, color=color, shape=shape),), facts.relations).text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=256, help="test images (default 256)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    pipe = mmexp.load(args.checkpoint, device="cpu")
    model, cfg = pipe.model.eval(), pipe.config
    dm = build(cfg.data)
    dm.setup("test")
    reader = AttributeReader(cache_dir=os.path.join(os.path.expanduser("~"), ".cache", "mmexp"))
    results: dict[str, list] = {"own": [], "null": [], "swapped": [], "real": []}
    seen = 0
    for batch in dm.dataloader("test", batch_size=64, degrade=True):
        if seen >= args.n:
            break
        batch = {k: (v[: args.n - seen] if hasattr(v, "__getitem__") else v) for k, v in batch.items()}
        x, hole, target, captions = batch["input"], batch["hole"], batch["target"], list(batch["caption"])
        seen += len(captions)
        with torch.no_grad():
            own = model.restore(x, hole=hole, caption=captions)
            null = model.restore(x, hole=hole, caption=None)
            swapped_captions = [swap(c, 1 + i % 3) for i, c in enumerate(captions)]
            swapped = model.restore(x, hole=hole, caption=swapped_captions)
        for name, images, caps in (("own", own, captions), ("null", null, captions),
                                   ("swapped", swapped, swapped_captions), ("real", target, captions)):
            results[name].append(caption_checks(reader.read(images), caps))
    numbers = {}
    for name, parts in results.items():
        checks = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        numbers[name] = {k: round(v, 4) for k, v in summarize(checks).items()}
    numbers["images"] = seen
    numbers["checkpoint"] = os.path.abspath(args.checkpoint)
    print(json.dumps(numbers, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(numbers, f, indent=2)


if __name__ == "__main__":
    main()
