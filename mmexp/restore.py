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
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
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
    """One pass on ``x [B, C, h, w]``, padded (reflected) to the restorer's ``size_multiple`` and cropped back."""
    m, s = int(getattr(restorer, "size_multiple", 1)), int(getattr(restorer, "scale", 1))
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
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
    """Restore ``x [B, C, h, w]`` in [-1, 1] of any size: ``[B, C, h * scale, w * scale]``.

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
    frames = {}
    try:
        for item, (mask, target) in zip(items, companions):
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
