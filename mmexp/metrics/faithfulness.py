"""Faithfulness of conditional generation on shapes: does an image show what its caption (or label) says?

Realism metrics (FID, KID) cannot tell a red circle from a blue one drawn equally well. Following GenEval
(Ghosh et al. 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment"), which reads
generated images with a detector and checks each stated object, colour, count and position, mmexp reads a shapes
image with :class:`AttributeReader` (a small classifier trained once on real shapes images) and compares what it
reads with what the caption states (:func:`mmexp.data.shapes.parse_caption`).

Per image and caption, :func:`caption_checks` counts:

- ``background``: the background colour is the stated one;
- ``color``: each stated object's colour is present (colours are distinct within a shapes image, so the reader
  has one slot per colour);
- ``shape`` / ``size``: the object of that colour has the stated shape / size (attribute binding: "a red circle"
  needs the *red* object to be a circle);
- ``count``: exactly the stated number of objects is present;
- ``relation``: each stated relation ("above", "left of"...) holds between the read centres of the two objects;
- ``all``: every check of the image passed (GenEval's "fraction of images with everything right").

Attribute accuracies are micro-averages (correct / stated, over all images); ``all`` is a fraction of images.
For labels (class-conditional shapes models: the label is the first object's shape), ``label`` is right when an
object of the labelled shape is read (with the caption too, the first object's colour slot must hold it).

The reader's own accuracy on real images bounds these numbers from above; it is measured by
``tests/test_faithfulness.py`` and recorded in the protocol (``reader``) beside every result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmexp.data.shapes import BACKGROUNDS, COLORS, SHAPES, SIZES, Scene, ShapesDataset, parse_caption
from mmexp.errors import ShapeMismatchError
from mmexp.io import atomic_torch_save
from mmexp.networks.attribute_reader import AttributeReaderNet

log = logging.getLogger(__name__)

#: bump when the reader's training or targets change, so a cached reader of an older version is not reused
READER_VERSION = 1

#: per-image counters :func:`caption_checks` returns: ``<attr>`` correct and ``<attr>_n`` stated
CAPTION_CHECKS: tuple[str, ...] = ("background", "color", "shape", "size", "count", "relation")

_BACKGROUNDS, _COLORS = tuple(BACKGROUNDS), tuple(COLORS)
_SIZES = tuple(SIZES)


@dataclass
class Reading:
    """What :class:`AttributeReader` reads from a batch of images: ``background`` ``[B]`` (index into
    :data:`~mmexp.data.shapes.BACKGROUNDS`), ``present`` bool ``[B, colours]``, ``shape`` / ``size`` ``[B, colours]``
    (indices into :data:`~mmexp.data.shapes.SHAPES` / :data:`~mmexp.data.shapes.SIZES`; meaningless where absent),
    ``center`` ``[B, colours, 2]`` (fractions of the side, x right, y down)."""

    background: torch.Tensor
    present: torch.Tensor
    shape: torch.Tensor
    size: torch.Tensor
    center: torch.Tensor


def scene_targets(scenes: Sequence[Scene], masks: np.ndarray) -> dict[str, torch.Tensor]:
    """Training targets of :class:`~mmexp.networks.attribute_reader.AttributeReaderNet` for ``scenes`` and their
    object masks ``masks`` (bool ``[B, H, W]``, as ``ShapesDataset.rendered()``): ``pixels`` ``[B, H, W]`` (the
    background's index, or ``len(BACKGROUNDS) +`` the colour index of the object a masked pixel belongs to: the one
    whose box, in units of its own half-side, is nearest), ``shape``, ``size`` ``[B, colours]`` (-100 where
    absent: ignored by cross-entropy) and ``present`` ``[B, colours]``."""
    b, c = len(scenes), len(_COLORS)
    h, w = masks.shape[1:]
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    pixels = np.empty((b, h, w), dtype=np.int64)
    shape, size = torch.full((b, c), -100), torch.full((b, c), -100)
    for i, scene in enumerate(scenes):
        pixels[i] = _BACKGROUNDS.index(scene.background)
        dist = np.stack([np.maximum(np.abs(xs[None, :] - o.center[0]), np.abs(ys[:, None] - o.center[1]))
                         / (o.extent / 2) for o in scene.objects])
        owner = np.array([len(_BACKGROUNDS) + _COLORS.index(o.color) for o in scene.objects])[dist.argmin(0)]
        pixels[i][masks[i]] = owner[masks[i]]
        for o in scene.objects:
            k = _COLORS.index(o.color)
            shape[i, k], size[i, k] = SHAPES.index(o.shape), _SIZES.index(o.size)
    return {"pixels": torch.from_numpy(pixels), "shape": shape, "size": size, "present": shape >= 0}


class AttributeReader:
    """The attribute reader of shapes images, trained on first use and cached.

    A :class:`~mmexp.networks.attribute_reader.AttributeReaderNet` trained on ``num_train`` real shapes images
    (``ShapesDataset(split="train", seed=seed, min_shapes=1, max_shapes=4, image_size=image_size)``, rendered
    once, every colour-shape pair included, so that held-out pairs can be read) in two stages: the per-pixel
    colour classifier for ``pixel_steps`` steps on sampled pixels, then the shape/size MLP on the moments of the
    masks that classifier draws. The weights are cached in ``<cache_dir>/attribute_reader/reader-<key>.pt`` (written
    atomically; ``key`` hashes every argument below except ``cache_dir`` and ``device``, plus
    :data:`READER_VERSION`), so later runs load them in a moment. Construction is free: nothing is trained or
    loaded before :meth:`net` (or :meth:`read`) is first called.

    Args:
        cache_dir (str | None): where the trained weights are kept; None trains in memory every time. Default: None.
        image_size (int): side the reader is trained at (and reads; other sizes are resized). Default: 32.
        width (int): hidden width of the network. Default: 16.
        num_train (int): real images it is trained on. Default: 2048.
        pixel_steps (int): steps of the per-pixel colour classifier. Default: 400.
        batch_size (int): pixels per step of the pixel classifier (sampled from all training images). Default: 4096.
        head_steps (int): full-batch steps of the shape/size MLP on the training objects' mask moments.
            Default: 1500.
        lr (float): peak AdamW learning rate (one-cycle schedule) of both stages. Default: 1e-2.
        seed (int): seed of the training images, the initialisation and the batch order. Default: 1234.
        device (str | None): where to train (None: CUDA when available, else CPU). Default: None.
    """

    def __init__(self, cache_dir: str | None = None, image_size: int = 32, width: int = 16, num_train: int = 2048,
                 pixel_steps: int = 400, batch_size: int = 4096, head_steps: int = 1500, lr: float = 1e-2, seed: int = 1234,
                 device: str | None = None) -> None:
        self.cache_dir = None if cache_dir is None else os.path.expanduser(str(cache_dir))
        self.config = {"version": READER_VERSION, "image_size": int(image_size), "width": int(width),
                       "num_train": int(num_train), "pixel_steps": int(pixel_steps), "batch_size": int(batch_size),
                       "head_steps": int(head_steps),
                       "lr": float(lr), "seed": int(seed)}
        self.device = device
        self._net: AttributeReaderNet | None = None

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def path(self) -> Path | None:
        return None if self.cache_dir is None else Path(self.cache_dir) / "attribute_reader" / f"reader-{self.key}.pt"

    def identity(self) -> dict:
        """What the protocol records of the reader: its training config and cache key."""
        return {**self.config, "key": self.key}

    def _build(self) -> AttributeReaderNet:
        c = self.config
        # initialised from the reader's own seed, whatever the caller's RNG state: one config, one reader
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c["seed"])
            return AttributeReaderNet(len(_BACKGROUNDS), len(_COLORS), len(SHAPES), len(_SIZES), width=c["width"],
                                      image_size=c["image_size"])

    def net(self, device: torch.device | str | None = None) -> AttributeReaderNet:
        """The trained network (loaded from the cache, else trained and cached), in eval mode on ``device``."""
        if self._net is None:
            net = self._build()
            path = self.path
            state = None
            if path is not None and path.is_file():
                try:
                    payload = torch.load(path, map_location="cpu", weights_only=True)
                    if payload.get("config") == self.config:
                        state = payload["state_dict"]
                except Exception as err:  # noqa: BLE001 - a damaged cache file is retrained, never trusted
                    log.warning("ignoring unreadable attribute reader %s (%s): training again", path, err)
            if state is None:
                state = self._train(net)
                if path is not None:
                    atomic_torch_save({"config": self.config, "state_dict": state}, path)
                    log.info("attribute reader cached in %s", path)
            net.load_state_dict(state)
            self._net = net.eval().requires_grad_(False)
        if device is not None:
            self._net = self._net.to(device)
        return self._net

    def _train(self, net: AttributeReaderNet) -> dict[str, torch.Tensor]:
        c = self.config
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        start = time.perf_counter()
        ds = ShapesDataset("train", image_size=c["image_size"], num_train=c["num_train"], min_shapes=1,
                           max_shapes=4, seed=c["seed"])
        store = ds.rendered()
        images = torch.from_numpy(store["images"]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        targets = scene_targets([ds.scene(i) for i in range(len(ds))], store["masks"])
        targets = {k: v.to(device) for k, v in targets.items()}
        generator = torch.Generator().manual_seed(c["seed"])
        net.to(device).train()
        with torch.enable_grad():
            # 1) the per-pixel colour classifier, on random pixels (with their 3x3 neighbourhoods) of all images:
            # far cheaper than whole images on a CPU, and every step sees many scenes
            patches = F.unfold(images, 3, padding=1).transpose(1, 2).flatten(0, 1)  # [N*H*W, 27]
            labels = targets["pixels"].flatten()
            steps, bs = c["pixel_steps"], c["batch_size"]
            opt = torch.optim.AdamW(net.pixel.parameters(), lr=c["lr"], weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=steps, pct_start=0.1)
            for _ in range(steps):
                idx = torch.randint(len(labels), (bs,), generator=generator).to(device)
                pixel_loss = F.cross_entropy(net.classify_patches(patches[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                pixel_loss.backward()
                opt.step()
                sched.step()
            # 2) the shape/size MLP on the moments of the masks the trained classifier draws (the masks it will
            # see when reading), full batch: a few thousand 10-d vectors
            net.eval()
            with torch.no_grad():
                feats = torch.cat([net.read_pixels(x)["features"] for x in images.split(256)])
            keep = targets["present"]
            x, shape, size = feats[keep], targets["shape"][keep], targets["size"][keep]
            net.feature_mean.copy_(x.mean(0))
            net.feature_std.copy_(x.std(0).clamp_min(1e-3))
            x = (x - net.feature_mean) / net.feature_std
            opt = torch.optim.AdamW(net.head.parameters(), lr=c["lr"], weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c["lr"], total_steps=c["head_steps"],
                                                        pct_start=0.1)
            for _ in range(c["head_steps"]):
                out = net.head(x)
                head_loss = F.cross_entropy(out[:, :net.num_shapes], shape) + F.cross_entropy(
                    out[:, net.num_shapes:], size)
                opt.zero_grad(set_to_none=True)
                head_loss.backward()
                opt.step()
                sched.step()
        log.info("attribute reader trained on %d shapes images in %.1f s (pixel loss %.4f, shape+size loss %.4f)",
                 len(ds), time.perf_counter() - start, float(pixel_loss.detach()), float(head_loss.detach()))
        return {k: v.detach().cpu() for k, v in net.state_dict().items()}

    @torch.inference_mode()
    def read(self, images: torch.Tensor, batch_size: int = 256) -> Reading:
        """Read RGB images ``[B, 3, H, W]`` in [-1, 1] (on any device)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ShapeMismatchError(f"the attribute reader reads RGB shapes images [B, 3, H, W], got "
                                     f"{tuple(images.shape)} (grayscale shapes carry no colour to check)")
        net = self.net(images.device)
        outs = [net(chunk.float()) for chunk in images.split(batch_size)]
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return Reading(out["background"].argmax(-1), out["present"] > 0, out["shape"].argmax(-1),
                       out["size"].argmax(-1), out["center"])


def _relation(a: torch.Tensor, b: torch.Tensor) -> str:
    """:func:`mmexp.data.shapes.relation` on read centres."""
    dx, dy = float(a[0] - b[0]), float(a[1] - b[1])
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def caption_checks(reading: Reading, captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per image: for each check of :data:`CAPTION_CHECKS`, how many stated facts were read right (``<check>``)
    and how many were stated (``<check>_n``), and ``all`` (1.0 when every check passed); float64 ``[B]`` each.
    A caption that is not a shapes caption raises :class:`~mmexp.errors.CaptionParseError`."""
    if len(captions) != reading.background.shape[0]:
        raise ShapeMismatchError(f"{reading.background.shape[0]} images but {len(captions)} captions")
    cpu = Reading(*(t.cpu() for t in (reading.background, reading.present, reading.shape, reading.size,
                                       reading.center)))
    rows = []
    for i, caption in enumerate(captions):
        facts = parse_caption(caption)
        row = dict.fromkeys([k for c in CAPTION_CHECKS for k in (c, f"{c}_n")], 0.0)
        row["background"], row["background_n"] = float(_BACKGROUNDS[int(cpu.background[i])] == facts.background), 1.0
        slots = [_COLORS.index(o.color) for o in facts.objects]
        for o, k in zip(facts.objects, slots):
            there = bool(cpu.present[i, k])
            row["color"] += there
            row["shape"] += there and SHAPES[int(cpu.shape[i, k])] == o.shape
            row["size"] += there and _SIZES[int(cpu.size[i, k])] == o.size
        row["color_n"] = row["shape_n"] = row["size_n"] = float(len(slots))
        row["count"], row["count_n"] = float(int(cpu.present[i].sum()) == len(slots)), 1.0
        for a, rel, b in facts.relations:
            ka, kb = slots[a], slots[b]
            ok = bool(cpu.present[i, ka] and cpu.present[i, kb]) and _relation(cpu.center[i, ka], cpu.center[i, kb]) == rel
            row["relation"] += ok
        row["relation_n"] = float(len(facts.relations))
        row["all"] = float(all(row[c] == row[f"{c}_n"] for c in CAPTION_CHECKS))
        rows.append(row)
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in rows[0]} if rows else {}


def label_checks(reading: Reading, labels: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
    """Per image, 1.0 when the labelled shape (index into :data:`~mmexp.data.shapes.SHAPES`, the first object's
    shape) is read: on the first stated object's colour slot when ``captions`` are given, else on any object."""
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    present, shape = reading.present.cpu(), reading.shape.cpu()
    if labels.numel() != present.shape[0]:
        raise ShapeMismatchError(f"{present.shape[0]} images but {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(SHAPES)):
        raise ShapeMismatchError(f"shapes labels are 0..{len(SHAPES) - 1} ({', '.join(SHAPES)}), got "
                                 f"{sorted(set(labels.tolist()))}")
    if captions is not None:
        first = torch.tensor([_COLORS.index(parse_caption(c).objects[0].color) for c in captions])
        rows = torch.arange(labels.numel())
        hit = present[rows, first] & (shape[rows, first] == labels)
    else:
        hit = (present & (shape == labels[:, None])).any(-1)
    return hit.to(torch.float64)


def summarize(checks: dict[str, torch.Tensor]) -> dict[str, float]:
    """``caption_<check>`` accuracies (correct / stated over all images; checks nothing stated are left out) and
    ``caption_all`` (fraction of images with everything right) from the stacked rows of :func:`caption_checks`."""
    out = {}
    for c in CAPTION_CHECKS:
        stated = float(checks[f"{c}_n"].sum())
        if stated:
            out[f"caption_{c}"] = float(checks[c].sum()) / stated
    if "all" in checks and checks["all"].numel():
        out["caption_all"] = float(checks["all"].mean())
    return out


__all__ = ["AttributeReader", "CAPTION_CHECKS", "READER_VERSION", "Reading", "caption_checks", "label_checks",
           "scene_targets", "summarize"]
