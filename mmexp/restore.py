"""``task=restore``: restore real images of any size with a trained restorer or a classical one.

``python -m mmexp task=restore ckpt_path=CKPT input=IMG_OR_DIR out=DIR [mask=MASK_OR_DIR] [target=DIR]
[prompt=TEXT]`` (or ``model=bicubic``/``nlmeans``/``bm3d``/``telea`` without a checkpoint):

- ``input``: an image, a folder of images (searched recursively: frames of a clip are a folder of images),
  or a video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``: every frame restored). For super-resolution
  the input is the low-resolution image.
- ``out``: receives only the restored images, with the inputs' file names (and sub-folders); a video's frames
  go to ``out/<video name>/NNNNNN.png``. Nothing is written there unless every input was restored: outputs are
  written to a temporary folder beside ``out`` and moved in at the end.
- ``mask``: holes (non-zero = pixel to fill), one file for a single input or a folder with a file of the same
  relative name (any image extension) per input; each the size of its image.
- ``target``: ground truth with the inputs' names; then PSNR/SSIM/LPIPS per image and their mean, with the
  ``metrics`` protocol (its ``y_channel``/``crop_border``), go to the run directory (``restore_metrics.csv``,
  ``metrics.json``).
- The run directory also gets ``comparisons/``: input (nearest-upsampled for SR) | output [| target] per image.

Large images are restored in tiles (:func:`restore_tensor`): tiles of ``restore.tile`` input pixels, each run
with ``restore.tile_overlap`` pixels of context on every side that are cropped off its output, so a local
(convolutional) network gives the untiled result exactly when the overlap covers its receptive radius.
Sides are padded (reflected) to the model's ``size_multiple`` and the padding cropped off.

Multi-frame models (video SR: ``model=vsr_tcn``, ``model=basicvsr``) restore clips: a video file, or a folder of
frames (each folder of images is one clip, its frames in file-name order). A model that reads windows of ``T``
frames restores frame ``i`` from frames ``i - T//2 .. i + T//2``, mirrored at the ends of the clip as BasicSR's
``reflection`` padding (frame ``-1`` is frame ``1``), so every frame, the first and last included, is restored; a
recurrent model that outputs every frame runs on chunks of ``restore.clip_chunk`` frames with
``restore.chunk_overlap`` frames of context on each side, cropped off like a tile's (memory stays bounded on long
clips). Frames are decoded as the window moves, never the whole clip at once.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from mmexp.errors import ConfigError, InputImageError, ShapeMismatchError
from mmexp.grids import save_grid, to_unit

log = logging.getLogger("mmexp")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


# ------------------------------------------------------------------------------------------ reading
def image_to_tensor(img: Image.Image, channels: int, name: str = "image") -> torch.Tensor:
    """A PIL image -> ``[channels, H, W]`` float32 in [-1, 1].

    A grey image given to a colour model (or a colour one to a grey model) is an error naming both: silently
    converting would score and train on something else than what was asked."""
    grey = img.mode in _GREY_MODES
    if img.mode == "P":  # a palette may hold colours or greys: look at them
        img = img.convert("RGBA")
        rgb = np.asarray(img)[..., :3]
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    if channels == 3 and grey:
        raise ShapeMismatchError(
            f"{name} is a grey image (PIL mode {img.mode}) but the model restores 3-channel RGB images; convert "
            "it to RGB first (e.g. PIL's Image.open(f).convert('RGB')), or use a grey model")
    if channels == 1 and not grey:
        raise ShapeMismatchError(
            f"{name} is a colour image (PIL mode {img.mode}) but the model restores 1-channel grey images; convert "
            "it to grey first (PIL's .convert('L')), or use an RGB model")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float32)
        a = a / (65535.0 if img.mode.startswith("I") else 1.0)
        return torch.from_numpy(a)[None].clamp(0, 1) * 2 - 1
    a = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0
    t = torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)
    return (t * 2 - 1).contiguous()


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file; :class:`InputImageError` naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise InputImageError(f"cannot read image {path}: {type(err).__name__}: {err}") from None


def read_image(path: str | os.PathLike, channels: int) -> torch.Tensor:
    """``[channels, H, W]`` in [-1, 1] from an image file (see :func:`image_to_tensor`)."""
    return image_to_tensor(open_image(path), channels, str(path))


def read_mask(path: str | os.PathLike, size: tuple[int, int], image: str = "the image") -> torch.Tensor:
    """``[1, H, W]`` float in {0, 1} (1 = hole: any non-zero pixel, in any channel) of the image size ``size``."""
    img = open_image(path)
    a = np.asarray(img)
    if a.ndim == 3:
        a = a.max(axis=2)
    if tuple(a.shape) != tuple(size):
        raise ShapeMismatchError(f"mask {path} is {a.shape[0]}x{a.shape[1]} (HxW) but {image} is "
                                 f"{size[0]}x{size[1]}: a mask must be the size of its image")
    return torch.from_numpy((a != 0).astype(np.float32))[None]


def save_image(x: torch.Tensor, path: str | os.PathLike) -> None:
    """``[C, H, W]`` in [-1, 1] -> an 8-bit file (format from the extension; JPEG at quality 95)."""
    a = (to_unit(x) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    img.save(path, **kwargs)


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Item:
    """One image to restore: ``name`` is its output path relative to ``out``; ``source`` the file it comes from
    (a video for a frame: then ``frame`` is its position)."""

    name: str
    source: Path
    frame: int | None = None


def _images_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def list_items(input: str | os.PathLike) -> list[Item]:
    """The images of ``input`` (a file, a folder, a video), in a fixed order."""
    root = Path(os.path.expanduser(str(input)))
    if root.is_dir():
        files = _images_in(root)
        if not files:
            raise InputImageError(f"input={root} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        return [Item(p.relative_to(root).as_posix(), p) for p in files]
    if not root.exists():
        raise InputImageError(f"input={root}: no such file or folder")
    if root.suffix.lower() in VIDEO_EXTENSIONS:
        n = _video_frame_count(root)
        return [Item(f"{root.stem}/{i:06d}.png", root, i) for i in range(n)]
    return [Item(root.name, root)]


def _video_frame_count(path: Path) -> int:
    """Frames of ``path``, counted by decoding them (container headers can be wrong)."""
    n = sum(1 for _ in iter_video(path))
    if n == 0:
        raise InputImageError(f"cannot read video {path}: no frame could be decoded")
    return n


def iter_video(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames ``[H, W, 3]`` of a video file (OpenCV)."""
    from mmexp.models.baselines import _cv2

    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputImageError(f"cannot open video {path} (OpenCV could not decode it)")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def _companion(root: Path | None, item: Item, single: bool, what: str) -> Path | None:
    """The mask/target file of ``item`` under ``root`` (a file for a single input; else the same relative
    name with any image extension), or None without ``root``."""
    if root is None:
        return None
    if root.is_file():
        if not single:
            raise ConfigError(f"{what}={root} is one file but input holds several images: give a folder")
        return root
    if not root.is_dir():
        raise InputImageError(f"{what}={root}: no such file or folder")
    rel = Path(item.name)
    for candidate in [root / rel] + [root / rel.with_suffix(ext) for ext in IMAGE_EXTENSIONS]:
        if candidate.is_file():
            return candidate
    raise InputImageError(f"no {what} for {item.name} in {root} (expected {root / rel} or the same name with "
                          "another image extension)")


# ------------------------------------------------------------------------------------------ tiling
def _pad_run(restorer: Any, x: torch.Tensor, hole: torch.Tensor | None, caption: list[str] | None) -> torch.Tensor:
    """One pass on ``x [B, C, h, w]`` (or a clip ``[B, T, C, h, w]``), padded (reflected) to the restorer's ``size_multiple`` and cropped back."""
    m, s = int(getattr(restorer, "size_multiple", 1)), int(getattr(restorer, "scale", 1))
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        # clips [B, T, C, h, w] pad as a batch of frames (torch pads the last 3 dims of 5-D inputs)
        x = F.pad(x.flatten(0, -4), (0, pw, 0, ph), mode=mode).unflatten(0, x.shape[:-3])
        if hole is not None:
            hole = F.pad(hole, (0, pw, 0, ph), mode="constant", value=0.0)
    y = restorer.restore(x, hole=hole, caption=caption)
    expected = ((h + ph) * s, (w + pw) * s)
    if tuple(y.shape[-2:]) != expected:
        raise ShapeMismatchError(f"{type(restorer).__name__} (x{s}) returned {tuple(y.shape[-2:])} for an input of "
                                 f"{(h + ph, w + pw)}; expected {expected}")
    return y[..., : h * s, : w * s]


def restore_tensor(restorer: Any, x: torch.Tensor, hole: torch.Tensor | None = None,
                   caption: list[str] | None = None, tile: int | None = 512, overlap: int = 32) -> torch.Tensor:
    """Restore ``x [B, C, h, w]`` in [-1, 1] of any size: ``[B, C, h * scale, w * scale]`` (clips ``[B, T, C, h, w]``
    for multi-frame restorers: their output, the centre frame or every frame, tiled alike).

    With ``tile``, an input larger than ``tile`` on a side is cut into ``tile``-sized tiles; each runs with
    ``overlap`` input pixels of context on every side (less at the image border), which are cropped off its
    output. Equal to one pass for a network whose receptive radius is at most ``overlap``.
    """
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return _pad_run(restorer, x, hole, caption)
    tile, overlap = int(tile), int(overlap)
    if tile < 1 or overlap < 0:
        raise ConfigError(f"restore.tile must be >= 1 and restore.tile_overlap >= 0, got {tile}, {overlap}")
    s = int(getattr(restorer, "scale", 1))
    out: torch.Tensor | None = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ey0, ex0, ey1, ex1 = max(0, y0 - overlap), max(0, x0 - overlap), min(h, y1 + overlap), min(w, x1 + overlap)
            part = _pad_run(restorer, x[..., ey0:ey1, ex0:ex1],
                            None if hole is None else hole[..., ey0:ey1, ex0:ex1], caption)
            if out is None:
                out = part.new_empty(*part.shape[:-2], h * s, w * s)
            out[..., y0 * s : y1 * s, x0 * s : x1 * s] = \
                part[..., (y0 - ey0) * s : (y1 - ey0) * s, (x0 - ex0) * s : (x1 - ex0) * s]
    return out


# ------------------------------------------------------------------------------------------ clips
def window_indices(i: int, n: int, size: int) -> list[int]:
    """The ``size`` frame indices of the window centred on frame ``i`` (at position ``size // 2``) of a clip of
    ``n`` frames, mirrored at its ends as BasicSR's ``reflection`` padding: ``-1 -> 1``, ``n -> n - 2``
    (a one-frame clip repeats its frame)."""
    if not 0 <= i < n:
        raise IndexError(f"frame {i} of a clip of {n} frames")
    out = []
    for k in range(i - size // 2, i - size // 2 + size):
        if n == 1:
            out.append(0)
            continue
        k %= 2 * (n - 1)
        out.append(k if k < n else 2 * (n - 1) - k)
    return out


def clips_of(items: list[Item]) -> list[list[Item]]:
    """``items`` grouped into clips, in order: the frames of one video file, or the images of one folder."""
    clips: dict[Any, list[Item]] = {}
    for item in items:
        key = ("video", item.source) if item.frame is not None else ("folder", Path(item.name).parent)
        clips.setdefault(key, []).append(item)
    return list(clips.values())


class FrameReader:
    """Frames of one clip as ``[C, H, W]`` tensors in [-1, 1], decoded in order and kept only while asked for:
    ``get(k)`` decodes up to frame ``k``; ``forget(k)`` drops the frames before ``k``."""

    def __init__(self, clip: list[Item], channels: int) -> None:
        self.clip, self.channels = clip, channels
        self.frames: dict[int, torch.Tensor] = {}
        self.video = iter_video(clip[0].source) if clip[0].frame is not None else None
        self.decoded = 0

    def get(self, k: int) -> torch.Tensor:
        while self.decoded <= k:
            if self.video is not None:
                try:
                    a = next(self.video)
                except StopIteration:
                    raise InputImageError(f"{self.clip[0].source}: frame {self.decoded} could not be decoded "
                                          f"(counted {len(self.clip)} frames before)") from None
                frame = torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
            else:
                frame = read_image(self.clip[self.decoded].source, self.channels)
            if self.frames and frame.shape != next(iter(self.frames.values())).shape:
                raise ShapeMismatchError(f"{self.clip[self.decoded].source} is {tuple(frame.shape)} but the clip's "
                                         f"earlier frames are {tuple(next(iter(self.frames.values())).shape)}: "
                                         "the frames of a clip must have one size")
            self.frames[self.decoded] = frame
            self.decoded += 1
        return self.frames[k]

    def forget(self, k: int) -> None:
        for old in [j for j in self.frames if j < k]:
            del self.frames[old]

    def close(self) -> None:
        if self.video is not None:
            self.video.close()


def restore_clip(restorer: Any, clip: list[Item], channels: int, device: torch.device | str,
                 run: Callable[[torch.Tensor], torch.Tensor], chunk: int = 16,
                 chunk_overlap: int = 4) -> Iterator[tuple[Item, torch.Tensor, torch.Tensor]]:
    """``(item, input frame [C, h, w], restored frame [C, H, W])`` for every frame of ``clip``, in order, by a
    multi-frame ``restorer`` (``num_frames`` T: a mirrored window per frame; None with ``all_frames``: chunks of
    ``chunk`` frames, each run with ``chunk_overlap`` frames of context on both sides). ``run`` maps a clip
    ``[1, T, C, h, w]`` (on ``device``) to the restored centre frame or every frame (spatial tiling is its)."""
    n, t = len(clip), restorer.num_frames
    reader = FrameReader(clip, channels)
    try:
        if t is not None:
            for i, item in enumerate(clip):
                idx = window_indices(i, n, int(t))
                reader.get(max(idx))
                x = torch.stack([reader.frames[k] for k in idx])[None].to(device)
                with torch.no_grad():
                    y = run(x)
                if y.dim() == 5:  # a windowed method that outputs every frame: keep the centre one
                    y = y[:, y.shape[1] // 2]
                yield item, reader.frames[i], y[0].cpu()
                reader.forget(min(window_indices(min(i + 1, n - 1), n, int(t))))
            return
        if not getattr(restorer, "all_frames", False):
            raise ConfigError(f"{type(restorer).__name__} reads clips of any length but outputs one frame: "
                              "task=restore cannot say which frames to give it")
        chunk, chunk_overlap = int(chunk), int(chunk_overlap)
        if chunk < 1 or chunk_overlap < 0:
            raise ConfigError(f"restore.clip_chunk must be >= 1 and restore.chunk_overlap >= 0, got {chunk}, "
                              f"{chunk_overlap}")
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            lo, hi = max(0, a - chunk_overlap), min(n, b + chunk_overlap)
            reader.get(hi - 1)
            x = torch.stack([reader.frames[k] for k in range(lo, hi)])[None].to(device)
            with torch.no_grad():
                y = run(x)
            for i in range(a, b):
                yield clip[i], reader.frames[i], y[0, i - lo].cpu()
            reader.forget(max(0, b - chunk_overlap))
    finally:
        reader.close()


# ------------------------------------------------------------------------------------------ the task
def _restorer(cfg: DictConfig) -> tuple[Any, str]:
    """The pipeline of ``ckpt_path``, or the configured model when it has no trained weights."""
    from mmexp.config import build
    from mmexp.pipeline import Pipeline, load

    device = "cuda" if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu" else "cpu"
    if cfg.get("ckpt_path"):
        return load(cfg.ckpt_path, device=device), os.path.abspath(cfg.ckpt_path)
    from mmexp.evaluate import needs_checkpoint

    if needs_checkpoint(cfg.model):
        raise ConfigError(f"task=restore needs ckpt_path=PATH: {cfg.model._target_} gets its weights from training "
                          "(classical models, model=bicubic, nlmeans, bm3d, telea, and ported ones, "
                          "model=dncnn_pretrained, run without a checkpoint)")
    model = build(cfg.model)
    return Pipeline(model.to(device).eval(), cfg, ""), f"model {cfg.model._target_} (no checkpoint)"


def _paired_suite(cfg: DictConfig) -> Any:
    """The ``metrics`` protocol reduced to its paired metrics (PSNR/SSIM/LPIPS); the restoration defaults when it
    has none (e.g. the default ``metrics=val``'s FID)."""
    from mmexp.config import build
    from mmexp.metrics.protocol import PAIRED_METRICS

    node = cfg.get("metrics")
    names = [m for m in (node.get("metrics") or []) if m in PAIRED_METRICS] if node is not None else []
    if not names:
        names = ["psnr", "ssim", "lpips"]
    if node is None:
        node = OmegaConf.create({"_target_": "mmexp.metrics.MetricSuite", "name": "restoration"})
    return build(node, metrics=names)


def restore(cfg: DictConfig) -> dict[str, float]:
    """Run ``task=restore`` (see the module docstring); returns the mean metrics when ``target`` is given."""
    if not cfg.get("input") or not cfg.get("out"):
        raise ConfigError("task=restore needs input=IMAGE_FOLDER_OR_VIDEO and out=FOLDER")
    pipe, source = _restorer(cfg)
    restorer = pipe.model
    channels = int(restorer.channels)
    scale = int(getattr(restorer, "scale", 1))
    opts = cfg.get("restore") or {}
    tile, overlap = opts.get("tile", 512), int(opts.get("tile_overlap", 32))
    items = list_items(cfg.input)
    single = len(items) == 1 and items[0].frame is None
    mask_root = Path(os.path.expanduser(str(cfg.mask))) if cfg.get("mask") else None
    target_root = Path(os.path.expanduser(str(cfg.target))) if cfg.get("target") else None
    if getattr(restorer, "inpainting", False) and mask_root is None:
        raise ConfigError(f"{type(restorer).__name__} fills holes: give mask=MASK_OR_FOLDER (non-zero = hole)")
    if mask_root is not None and not getattr(restorer, "inpainting", False):
        raise ConfigError(f"mask={mask_root} given, but {type(restorer).__name__} is not an inpainting model")
    if any(i.frame is not None for i in items) and (mask_root or target_root):
        raise ConfigError("mask= and target= are for images and frame folders, not video files: extract the "
                          "frames to a folder first")

    # 1. every input, mask and target is checked before anything is restored or written
    companions = []
    for item in items:
        if item.frame is None:
            img = read_image(item.source, channels)
            size = tuple(img.shape[-2:])
            mask = _companion(mask_root, item, single, "mask")
            if mask is not None:
                read_mask(mask, size, str(item.source))
            target = _companion(target_root, item, single, "target")
            if target is not None:
                t = read_image(target, channels)
                if tuple(t.shape[-2:]) != (size[0] * scale, size[1] * scale):
                    raise ShapeMismatchError(
                        f"target {target} is {t.shape[-2]}x{t.shape[-1]} but {item.source} ({size[0]}x{size[1]}) "
                        f"restored x{scale} is {size[0] * scale}x{size[1] * scale}")
            companions.append((mask, target))
        else:
            if channels == 1:
                raise ShapeMismatchError(f"{item.source} has RGB frames but the model restores 1-channel grey images")
            companions.append((None, None))

    # 2. restore into a temporary folder beside out; 3. move the results in once all succeeded
    out = Path(os.path.expanduser(str(cfg.out))).resolve()
    run_dir = Path(cfg.paths.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.restore-", dir=out.parent))
    suite = _paired_suite(cfg) if target_root is not None else None
    rows: list[dict[str, Any]] = []
    caption = [str(cfg.prompt)] if cfg.get("prompt") else None
    multi_frame = getattr(restorer, "num_frames", 1) != 1

    def produced() -> Iterator[tuple[Item, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """``(item, input, hole, restored)`` for every input, in order."""
        if multi_frame:
            for clip in clips_of(items):
                for item, x, y in restore_clip(
                        restorer, clip, channels, pipe.device,
                        lambda c: restore_tensor(restorer, c, None, caption, tile, overlap),
                        int(opts.get("clip_chunk", 16)), int(opts.get("chunk_overlap", 4))):
                    yield item, x, None, y
            return
        frames: dict[Path, Iterator[np.ndarray]] = {}
        for item, (mask, _) in zip(items, companions):
            if item.frame is None:
                x = read_image(item.source, channels)
            else:
                if item.source not in frames:
                    frames[item.source] = iter_video(item.source)
                a = next(frames[item.source])
                x = torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
            hole = read_mask(mask, tuple(x.shape[-2:]), str(item.source))[None].to(pipe.device) if mask else None
            with torch.no_grad():
                y = restore_tensor(restorer, x[None].to(pipe.device), hole, caption, tile, overlap)[0].cpu()
            yield item, x, hole, y

    target_of = {item.name: target for item, (_, target) in zip(items, companions)}
    try:
        for item, x, hole, y in produced():
            target = target_of[item.name]
            save_image(y, tmp / "out" / item.name)
            shown = F.interpolate(x[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else x
            if hole is not None:
                shown = torch.where(hole[0].cpu() > 0.5, torch.ones_like(shown), shown)
            panels = [shown, y]
            row: dict[str, Any] = {"name": item.name}
            if target is not None:
                t = read_image(target, channels)
                panels.append(t)
                suite.reset()
                suite.update_pair(y[None], t[None])
                row.update(suite.compute())
            rows.append(row)
            if opts.get("comparisons", True):
                comparison = tmp / "comparisons" / Path(item.name).with_suffix(".png")
                comparison.parent.mkdir(parents=True, exist_ok=True)
                from torchvision.utils import make_grid

                save_grid(make_grid(to_unit(torch.stack(panels)).expand(-1, 3, -1, -1), nrow=len(panels),
                                    padding=4, pad_value=1.0), comparison)
        for produced in sorted((tmp / "out").rglob("*")):
            if produced.is_file():
                dest = out / produced.relative_to(tmp / "out")
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(produced, dest)
        if (tmp / "comparisons").exists():
            dest = run_dir / "comparisons"
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp / "comparisons"), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    record: dict[str, Any] = {"source": source, "input": str(cfg.input), "out": str(out), "scale": scale,
                              "tile": tile, "tile_overlap": overlap, "images": len(items), "prompt": cfg.get("prompt")}
    if multi_frame:
        record["frames"] = {"num_frames": restorer.num_frames, "padding": "reflection", "clips": len(clips_of(items))}
        if restorer.num_frames is None:
            record["frames"].update(clip_chunk=int(opts.get("clip_chunk", 16)),
                                    chunk_overlap=int(opts.get("chunk_overlap", 4)))
    means: dict[str, float] = {}
    if suite is not None:
        keys = [k for k in rows[0] if k != "name"]
        means = {f"restore/{k}": float(np.mean([r[k] for r in rows])) for k in keys}
        with open(run_dir / "restore_metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["name", *keys])
            writer.writeheader()
            writer.writerows(rows)
        from mmexp.io import write_metrics_json

        write_metrics_json(str(run_dir / "metrics.json"), means, suite.protocol, {"restore": record})
        record["per_image"] = rows
        record["mean"] = means
        record["protocol"] = suite.protocol
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "restore.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log.info("restored %d image(s) into %s (comparisons in %s)%s", len(items), out, run_dir / "comparisons",
             "; " + ", ".join(f"{k} = {v:.4f}" for k, v in means.items()) if means else "")
    return means
