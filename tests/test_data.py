"""Tests of the data layer (mmexp/data, mmexp/conf/data). Runs in well under a minute on 2 cores."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mmexp.data import (
    CelebADataset,
    CIFAR10Dataset,
    DatasetFormatError,
    DigitsDataset,
    EpochSampler,
    FashionMNISTDataset,
    ImageDataModule,
    ImageFolderDataset,
    MNISTDataset,
    ResumableDataLoader,
    ShapesDataset,
)
from tests import fixtures
from mmexp.data.celeba import CELEBA_ATTRIBUTES, celeba_caption
from mmexp.data.idx import read_idx, write_idx
from mmexp.data.shapes import BACKGROUNDS, COLORS, SHAPES
from mmexp.errors import ConfigError, DatasetNotFoundError, ShapeMismatchError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
CONF_DIR = Path(__file__).resolve().parents[1] / "mmexp" / "conf"


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def data_celeba_root(tmp_path_factory):
    return fixtures.write_celeba_fixture(tmp_path_factory.mktemp("celeba"), n=12)


@pytest.fixture(scope="session")
def data_mnist_root(tmp_path_factory):
    return fixtures.write_mnist_fixture(tmp_path_factory.mktemp("mnist"), n_train=30, n_test=10)


@pytest.fixture(scope="session")
def data_cifar_root(tmp_path_factory):
    return fixtures.write_cifar10_fixture(tmp_path_factory.mktemp("cifar"), n_per_batch=6, n_test=10)


@pytest.fixture(scope="session")
def data_folder_root(tmp_path_factory):
    return fixtures.write_image_folder_fixture(tmp_path_factory.mktemp("folder"), n=12, labels=True)


def _check_item(item, shape, keys):
    assert set(keys) <= set(item), (keys, item.keys())
    img = item["image"]
    assert img.dtype == torch.float32 and tuple(img.shape) == shape
    assert img.min() >= -1 and img.max() <= 1
    assert isinstance(item["index"], int)
    if "label" in keys:
        assert isinstance(item["label"], int)
    if "caption" in keys:
        assert isinstance(item["caption"], str) and item["caption"]


def _check_batch(batch, n, shape, keys):
    assert set(keys) <= set(batch)
    assert batch["image"].dtype == torch.float32 and tuple(batch["image"].shape) == (n, *shape)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["index"].dtype == torch.int64 and tuple(batch["index"].shape) == (n,)
    if "label" in keys:
        assert batch["label"].dtype == torch.int64 and tuple(batch["label"].shape) == (n,)
    if "caption" in keys:
        assert isinstance(batch["caption"], list) and len(batch["caption"]) == n
        assert all(isinstance(c, str) for c in batch["caption"])
    if "mask" in keys:
        m = batch["mask"]
        assert m.dtype == torch.float32 and tuple(m.shape) == (n, 1, *shape[1:])
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    if "attributes" in keys:
        a = batch["attributes"]
        assert a.dtype == torch.int64 and tuple(a.shape) == (n, 40)
        assert set(a.unique().tolist()) <= {0, 1}


# -- shapes ------------------------------------------------------------------------------------
def test_shapes_deterministic_and_splits_differ():
    a, b = ShapesDataset("train", seed=1), ShapesDataset("train", seed=1)
    for i in (0, 7, 4095):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert x["caption"] == y["caption"] and x["label"] == y["label"] and x["index"] == i
    assert torch.equal(a[-1]["image"], a[4095]["image"])
    train = torch.stack([a[i]["image"] for i in range(64)])
    for other in (ShapesDataset("val", seed=1), ShapesDataset("test", seed=1), ShapesDataset("train", seed=2)):
        imgs = torch.stack([other[i]["image"] for i in range(64)])
        # no image of the first 64 of another split/seed equals any of the first 64 train images
        same = (imgs[:, None] == train[None]).flatten(2).all(-1)
        assert not same.any()
    assert len(ShapesDataset("val")) == 512 and len(ShapesDataset("test", num_test=7)) == 7
    with pytest.raises(IndexError):
        a[4096]
    with pytest.raises(ConfigError, match="split"):
        ShapesDataset("validation")


def _relation(a, b):
    (ax, ay), (bx, by) = a["center"], b["center"]
    dx, dy = ax - bx, ay - by
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def test_shapes_captions_match_describe():
    ds = ShapesDataset("train", image_size=32, seed=0)
    counts = set()
    for i in range(200):
        objs, item = ds.describe(i), ds[i]
        cap = item["caption"]
        counts.add(len(objs))
        assert 1 <= len(objs) <= 3
        assert item["label"] == SHAPES.index(objs[0]["shape"])
        pos = [cap.index(f"{o['size']} {o['color']} {o['shape']}") for o in objs]
        assert pos == sorted(pos), "objects are named in describe() order"
        assert len({o["color"] for o in objs}) == len(objs)
        if len(objs) >= 2:
            assert f"{objs[0]['shape']} {_relation(objs[0], objs[1])} a {objs[1]['size']}" in cap
        for o in objs[2:]:
            assert f"{o['shape']} {_relation(o, objs[0])} the {objs[0]['color']} {objs[0]['shape']}" in cap
        bg = ds.scene(i).background
        assert cap.endswith(f"on a {bg} background") and bg not in COLORS
        for o in objs:  # bboxes are inside the image, in pixels
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            assert o["rgb"] == COLORS[o["color"]]
    assert counts == {1, 2, 3}
    assert ds.describe(3)[0]["size"] in ("small", "large")


def _erode(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, constant_values=False)
    out = np.ones_like(m)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out &= p[dy : dy + m.shape[0], dx : dx + m.shape[1]]
    return out


@pytest.mark.parametrize("channels", [3, 1])
def test_shapes_mask_matches_pixels(channels):
    ds = ShapesDataset("val", image_size=32, channels=channels, seed=0)

    def value(rgb):
        v = np.asarray(rgb, np.float64)
        if channels == 1:
            v = np.array([0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2]])
        return v / 127.5 - 1

    checked = 0
    for i in range(40):
        item, scene = ds[i], ds.scene(i)
        img = item["image"].numpy().transpose(1, 2, 0).astype(np.float64)
        mask = item["mask"][0].numpy() > 0.5
        assert mask.any() and (~mask).any()
        inside, outside = _erode(mask), _erode(~mask)
        bg = value(BACKGROUNDS[scene.background])
        assert np.abs(img[outside] - bg).max() <= 1.5 / 127.5, "non-mask pixels are background"
        colours = np.stack([value(COLORS[o.color]) for o in scene.objects])  # [K, C]
        dist = np.abs(img[inside][:, None, :] - colours[None]).max(-1).min(-1)
        assert dist.max() <= 1.5 / 127.5, "mask pixels have an object's colour"
        checked += inside.sum()
    assert checked > 1000


# -- datamodule ----------------------------------------------------------------------------------
def _shapes_dm(**kw):
    ds = functools.partial(ShapesDataset, image_size=16, num_train=40, num_val=10, num_test=6)
    args = dict(image_size=16, channels=3, batch_size=8, eval_batch_size=4, seed=3)
    args.update(kw)
    return ImageDataModule(ds, **args)


def test_datamodule_batches_follow_contract():
    dm = _shapes_dm()
    assert dm.image_shape == (3, 16, 16) and dm.name == "shapes"
    assert dm.num_classes == len(SHAPES)
    assert dm.provides == ("image", "label", "caption", "mask", "index")
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 5
    for b in batches:
        _check_batch(b, 8, (3, 16, 16), dm.provides)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(40))
    val = list(dm.val_dataloader())
    assert [len(b["index"]) for b in val] == [4, 4, 2]  # eval loaders keep the last batch
    assert torch.cat([b["index"] for b in val]).tolist() == list(range(10))  # and never shuffle
    test = dm.dataloader("test", batch_size=6)
    _check_batch(next(iter(test)), 6, (3, 16, 16), dm.provides)
    shuffled = [b["index"].tolist() for b in dm.dataloader("val", shuffle=True)]
    assert shuffled == [b["index"].tolist() for b in dm.dataloader("val", shuffle=True)]
    assert sorted(sum(shuffled, [])) == list(range(10))


def test_datamodule_shape_mismatch_names_both():
    dm = _shapes_dm(image_size=32)
    with pytest.raises(ShapeMismatchError) as e:
        dm.setup("fit")
    assert "(3, 16, 16)" in str(e.value) and "(3, 32, 32)" in str(e.value)
    with pytest.raises(ShapeMismatchError, match=r"\(1, 16, 16\)"):
        _shapes_dm(channels=1).setup("validate")
    with pytest.raises(ConfigError, match="batch_size"):
        _shapes_dm(batch_size=64).train_dataloader()


def test_train_order_independent_of_global_rng_and_resumable():
    dm = _shapes_dm()
    torch.manual_seed(0)
    first = [b["index"].tolist() for b in dm.train_dataloader()]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    loader = dm.train_dataloader()
    assert [b["index"].tolist() for b in loader] == first
    assert torch.equal(torch.get_rng_state(), state), "iterating must not consume the global RNG"
    loader.set_epoch(1)
    second = [b["index"].tolist() for b in loader]
    assert second != first and sorted(sum(second, [])) == list(range(40))
    assert [b["index"].tolist() for b in _shapes_dm(seed=4).train_dataloader()] != first

    # stop after 2 batches of epoch 1, save, resume in a fresh loader
    loader = dm.train_dataloader()
    loader.set_epoch(1)
    it = iter(loader)
    got = [next(it)["index"].tolist() for _ in range(2)]
    sd = loader.state_dict()
    assert sd == {"epoch": 1, "batches_yielded": 2}
    fresh = dm.train_dataloader()
    fresh.load_state_dict(sd)
    assert fresh.state_dict() == sd
    assert got + [b["index"].tolist() for b in fresh] == second
    assert fresh.state_dict() == {"epoch": 1, "batches_yielded": 5}
    assert [b["index"].tolist() for b in fresh] == second, "the skip applies once"
    assert len(fresh) == 5
    # a loaded state of another epoch does not skip
    other = dm.train_dataloader()
    other.load_state_dict({"epoch": 0, "batches_yielded": 3})
    other.set_epoch(1)
    assert [b["index"].tolist() for b in other] == second
    with pytest.raises(ValueError, match="batches_yielded"):
        other.load_state_dict({"epoch": 1})


def test_resumable_loader_with_persistent_worker():
    ds = ShapesDataset("train", image_size=8, num_train=24)
    loader = ResumableDataLoader(ds, batch_size=4, seed=5, drop_last=True, num_workers=1, persistent_workers=True)
    full = [[b["index"].tolist() for b in loader] for _ in range(1)][0]
    loader.set_epoch(2)
    epoch2 = [b["index"].tolist() for b in loader]
    loader.load_state_dict({"epoch": 2, "batches_yielded": 4})
    assert [b["index"].tolist() for b in loader] == epoch2[4:]
    loader.set_epoch(0)
    assert [b["index"].tolist() for b in loader] == full
    sampler = EpochSampler(10, seed=5)
    assert sampler.permutation(0) == EpochSampler(10, seed=5).permutation(0) != sampler.permutation(1)


@pytest.mark.filterwarnings("ignore:.*val_dataloader.*:UserWarning", "ignore:Be aware that when using `ckpt_path`")
def test_lightning_resume_mid_epoch_sees_same_batches(tmp_path):
    """A run resumed from a mid-epoch checkpoint trains on exactly the batches an uninterrupted run saw."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 8 * 8, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["index"].tolist())
            return self.lin(batch["image"].flatten(1)).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def datamodule():
        ds = functools.partial(ShapesDataset, image_size=8, num_train=40, num_val=8, num_test=8)
        return ImageDataModule(ds, image_size=8, channels=3, batch_size=4, seed=3)  # 10 batches/epoch

    def trainer(callbacks=()):
        return L.Trainer(
            accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks), default_root_dir=tmp_path,
            enable_checkpointing=bool(callbacks),
        )

    full = Tiny()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1, filename="{step}")
    trainer([ckpt]).fit(full, datamodule=datamodule())
    assert len(full.seen) == 30 and full.seen[:10] != full.seen[10:20]  # set_epoch reshuffles
    state = torch.load(tmp_path / "ckpt" / "step=15.ckpt", weights_only=False)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"] == [{"epoch": 1, "batches_yielded": 5}]
    for step in (5, 10, 15):  # mid-epoch 0, epoch boundary, mid-epoch 1
        torch.manual_seed(1000 + step)  # a different global RNG must not matter
        resumed = Tiny()
        trainer().fit(resumed, datamodule=datamodule(), ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt")
        assert resumed.seen == full.seen[step:], f"resume from step {step}"


# -- digits ------------------------------------------------------------------------------------
def test_digits():
    sizes = {s: len(DigitsDataset(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797 and sizes["val"] == sizes["test"] == 180
    ds = DigitsDataset("val", image_size=16, channels=3, seed=1)
    item = ds[0]
    _check_item(item, (3, 16, 16), DigitsDataset.provides)
    assert item["caption"] == f"a handwritten digit {item['label']}"
    assert torch.equal(item["image"][0], item["image"][2])
    assert item["image"].min() == -1  # background 0 -> -1
    a = set(DigitsDataset("train", seed=1).indices.tolist())
    b, c = set(ds.indices.tolist()), set(DigitsDataset("test", seed=1).indices.tolist())
    assert not (a & b or a & c or b & c) and len(a | b | c) == 1797
    assert set(DigitsDataset("val", seed=2).indices.tolist()) != b


# -- IDX / Fashion-MNIST / MNIST -----------------------------------------------------------------
def test_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name), arr)
        assert np.array_equal(read_idx(tmp_path / name, max_items=1), arr[:1])
    ints = np.array([1, -2, 300000], dtype=np.int32)
    write_idx(tmp_path / "i", ints)
    assert np.array_equal(read_idx(tmp_path / "i"), ints)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DatasetFormatError, match=r"bad.*magic"):
        read_idx(tmp_path / "bad")
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(DatasetFormatError, match="short.*truncated"):
        read_idx(tmp_path / "short")
    gz = (tmp_path / "a-idx3-ubyte.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DatasetFormatError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DatasetNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason=f"{FASHION_ROOT} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    with gzip.open(FASHION_ROOT / "t10k-labels-idx1-ubyte.gz") as f:
        assert f.read(4) == b"\x00\x00\x08\x01"
    head = read_idx(FASHION_ROOT / "train-images-idx3-ubyte.gz", max_items=5)
    assert head.shape == (5, 28, 28) and head.dtype == np.uint8
    train, val, test = (FashionMNISTDataset(split=s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert train.num_classes == 10
    item = train[0]
    _check_item(item, (1, 28, 28), FashionMNISTDataset.provides)
    assert torch.equal(item["image"], torch.from_numpy(head[0]).float()[None] / 127.5 - 1)
    assert item["label"] == 9 and item["caption"] == "a photo of an ankle boot"  # the first train image
    assert test[0]["label"] == 9 and test[1]["caption"] == "a photo of a pullover"
    assert val[0]["image"].shape == (1, 28, 28)
    big = FashionMNISTDataset(split="test", image_size=32, channels=3)
    _check_item(big[0], (3, 32, 32), FashionMNISTDataset.provides)


def test_fashion_mnist_fixture_and_missing(tmp_path):
    root = fixtures.write_fashion_mnist_fixture(tmp_path / "fm", n_train=20, n_test=6)
    assert sorted(p.name for p in root.iterdir())[0] == "t10k-images-idx3-ubyte.gz"
    ds = FashionMNISTDataset(root, split="val", val_size=4)
    assert len(ds) == 4 and len(FashionMNISTDataset(root, split="train", val_size=4)) == 16
    with pytest.raises(ConfigError, match="val_size"):
        FashionMNISTDataset(root, split="train", val_size=20)
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as e:
        FashionMNISTDataset(missing)
    assert str(missing) in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)
    assert "github.com/zalandoresearch/fashion-mnist" in str(e.value)


def test_mnist_fixture_matches_torchvision(data_mnist_root):
    import torchvision

    ds = MNISTDataset(data_mnist_root, split="train", val_size=5)
    assert (len(ds), len(MNISTDataset(data_mnist_root, "val", val_size=5)), len(MNISTDataset(data_mnist_root, "test"))) == (25, 5, 10)
    tv = torchvision.datasets.MNIST(str(data_mnist_root), train=True)  # the fixture is in torchvision's layout
    for i in (0, 7):
        item = ds[i]
        _check_item(item, (1, 28, 28), MNISTDataset.provides)
        assert item["label"] == int(tv.targets[i]) and item["caption"] == f"a handwritten digit {item['label']}"
        assert torch.equal(item["image"][0], tv.data[i].float() / 127.5 - 1)
    with pytest.raises(DatasetNotFoundError) as e:
        MNISTDataset(data_mnist_root / "missing")
    assert str(data_mnist_root / "missing") in str(e.value) and "data.download=true" in str(e.value)


# -- CIFAR-10 ------------------------------------------------------------------------------------
def test_cifar10_fixture(data_cifar_root):
    import pickle

    train = CIFAR10Dataset(data_cifar_root, split="train", val_size=6)
    val = CIFAR10Dataset(data_cifar_root, split="val", val_size=6)
    test = CIFAR10Dataset(data_cifar_root / "cifar-10-batches-py", split="test")  # the folder itself works too
    assert (len(train), len(val), len(test)) == (24, 6, 10)
    with open(data_cifar_root / "cifar-10-batches-py" / "data_batch_5", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    item = val[-1]
    _check_item(item, (3, 32, 32), CIFAR10Dataset.provides)
    expect = torch.from_numpy(raw["data"][-1].reshape(3, 32, 32)).float() / 127.5 - 1
    assert torch.equal(item["image"], expect) and item["label"] == raw["labels"][-1]
    assert CIFAR10Dataset.caption_for(0) == "a photo of an airplane"
    assert CIFAR10Dataset.caption_for(9) == "a photo of a truck"
    _check_item(CIFAR10Dataset(data_cifar_root, "test", image_size=16, channels=1)[0], (1, 16, 16), ("label",))
    with pytest.raises(DatasetNotFoundError) as e:
        CIFAR10Dataset(data_cifar_root / "missing")
    assert str(data_cifar_root / "missing") in str(e.value) and "data.download=true" in str(e.value)


# -- CelebA --------------------------------------------------------------------------------------
def test_celeba_fixture(data_celeba_root):
    lens = [len(CelebADataset(data_celeba_root, s)) for s in ("train", "val", "test")]
    assert lens == [7, 2, 3]
    ds = CelebADataset(data_celeba_root, "test", image_size=32)
    assert ds.num_classes == 2 and "label" in ds.provides
    lines = (data_celeba_root / "list_attr_celeba.txt").read_text().splitlines()
    row = lines[2 + 9 + 0].split()  # first test image is the 10th file
    assert row[0] == ds.files[0] == "000010.jpg"
    item = ds[0]
    _check_item(item, (3, 32, 32), ds.provides)
    expect = [1 if v == "1" else 0 for v in row[1:]]
    assert item["attributes"].dtype == torch.int64 and item["attributes"].tolist() == expect
    assert item["label"] == expect[CELEBA_ATTRIBUTES.index("Smiling")]
    assert item["caption"] == celeba_caption(expect)
    assert (" man" in item["caption"]) == bool(expect[CELEBA_ATTRIBUTES.index("Male")])
    nolabel = CelebADataset(data_celeba_root, "val", label_attribute=None, crop_size=None)
    assert "label" not in nolabel[0] and nolabel.num_classes is None
    with pytest.raises(ConfigError, match="label_attribute"):
        CelebADataset(data_celeba_root, "val", label_attribute="Grumpy")
    with pytest.raises(DatasetNotFoundError) as e:
        CelebADataset(data_celeba_root / "missing")
    assert str(data_celeba_root / "missing") in str(e.value) and "list_attr_celeba.txt" in str(e.value)


def test_celeba_caption_mapping():
    attrs = {name: 0 for name in CELEBA_ATTRIBUTES}
    attrs.update(Smiling=1, Young=1, Black_Hair=1, Wavy_Hair=1, Eyeglasses=1, No_Beard=1, Wearing_Earrings=1)
    assert celeba_caption(attrs) == (
        "a photo of a smiling young woman with wavy black hair and eyeglasses, wearing earrings"
    )
    attrs.update(Male=1, No_Beard=0, Smiling=0, Young=0, Bald=1, Blurry=1, Wearing_Earrings=0, Eyeglasses=0)
    assert celeba_caption(attrs) == "a blurry photo of a bald man with a beard"
    assert celeba_caption([-1] * 40) == "a photo of a woman with a beard"  # No_Beard=-1 means a beard


def test_celeba_unreadable_image_names_file(tmp_path):
    root = fixtures.write_celeba_fixture(tmp_path / "c", n=6)
    (root / "img_align_celeba" / "000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFormatError, match="000001.jpg"):
        CelebADataset(root, "train")[0]


# -- image folder ----------------------------------------------------------------------------------
def test_image_folder(data_folder_root):
    kw = dict(val_fraction=0.2, test_fraction=0.2, seed=0)
    splits = {s: ImageFolderDataset(data_folder_root, s, image_size=24, captions="captions.jsonl", labels=True, **kw)
              for s in ("train", "val", "test")}
    files = [f for ds in splits.values() for f in ds.files]
    assert len(files) == len(set(files)) == 12 and [len(d) for d in splits.values()] == [8, 2, 2]
    train = splits["train"]
    assert train.classes == ("cat", "dog") and train.num_classes == 2
    assert train.provides == ("image", "label", "caption", "index")
    txt = ImageFolderDataset(data_folder_root, "train", image_size=24, captions="captions.txt", **kw)
    assert txt.files == train.files and "label" not in txt.provides
    for i in range(len(train)):
        item = train[i]
        _check_item(item, (3, 24, 24), train.provides)
        assert item["caption"] == txt[i]["caption"]
        cls = train.files[i].split("/")[0]
        assert item["label"] == train.classes.index(cls) and f"of a {cls} " in item["caption"]
    csv_dir = data_folder_root / "dog"  # a Hugging Face style metadata.csv in a sub-folder: names relative to it
    import csv as _csv

    with open(csv_dir / "metadata.csv", "w", newline="") as f:
        w = _csv.writer(f)
        w.writerow(["file_name", "text"])
        w.writerows([[p.name, f"csv caption {p.name}"] for p in sorted(csv_dir.iterdir()) if p.suffix != ".csv"])
    try:
        from mmexp.data.folder import read_captions

        table = read_captions(csv_dir / "metadata.csv", data_folder_root)
        assert table and all(k.startswith("dog/") and v == f"csv caption {k[4:]}" for k, v in table.items())
    finally:
        (csv_dir / "metadata.csv").unlink()
    gray = ImageFolderDataset(data_folder_root, "val", image_size=20, channels=1, **kw)
    _check_item(gray[0], (1, 20, 20), gray.provides)
    assert ImageFolderDataset(data_folder_root, "val", **kw).files == splits["val"].files  # deterministic
    assert ImageFolderDataset(data_folder_root, "val", val_fraction=0.2, test_fraction=0.2, seed=9).files != splits["val"].files


def test_image_folder_errors(tmp_path):
    root = fixtures.write_image_folder_fixture(tmp_path / "f", n=6, labels=False)
    bad = root / "zz_broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    ds = ImageFolderDataset(root, "train", val_fraction=0, test_fraction=0)
    with pytest.raises(DatasetFormatError, match="zz_broken.png"):
        ds[ds.files.index("zz_broken.png")]
    with pytest.raises(DatasetFormatError, match="no caption.*zz_broken.png"):
        ImageFolderDataset(root, "train", captions="captions.jsonl")
    with pytest.raises(DatasetNotFoundError, match="captions file"):
        ImageFolderDataset(root, "train", captions="nope.jsonl")
    with pytest.raises(ConfigError, match="sub-folders"):
        ImageFolderDataset(root, "train", labels=True)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "empty", "train")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "absent")):
        ImageFolderDataset(tmp_path / "absent", "train")


# -- configs -------------------------------------------------------------------------------------
_CACHE = __import__("tempfile").mkdtemp(prefix="mmexp-test-cache-")


def _compose(name, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(overrides=[f"+data={name}", "+seed=11", "+paths.data_dir=/nonexistent",
                                  f"+paths.cache_dir={_CACHE}", *overrides])


@pytest.mark.parametrize(
    "name, overrides, shape",
    [
        ("shapes", ["data.dataset.num_train=16", "data.batch_size=4"], (3, 32, 32)),
        ("digits", ["data.batch_size=4"], (1, 32, 32)),
        ("mnist", ["data.root=MNIST_ROOT", "data.dataset.val_size=5", "data.batch_size=4"], (1, 28, 28)),
        ("cifar10", ["data.root=CIFAR_ROOT", "data.dataset.val_size=6", "data.batch_size=4"], (3, 32, 32)),
        ("celeba", ["data.root=CELEBA_ROOT", "data.batch_size=4"], (3, 64, 64)),
        ("folder", ["data.root=FOLDER_ROOT", "data.dataset.captions=captions.jsonl", "data.dataset.labels=true",
                    "data.batch_size=4"], (3, 64, 64)),
    ]
    + ([("fashion_mnist", ["data.batch_size=4"], (1, 28, 28))] if FASHION_ROOT.is_dir() else []),
)
def test_configs_instantiate(name, overrides, shape, data_mnist_root, data_cifar_root, data_celeba_root, data_folder_root):
    from hydra.utils import instantiate

    roots = {"MNIST_ROOT": data_mnist_root, "CIFAR_ROOT": data_cifar_root,
             "CELEBA_ROOT": data_celeba_root, "FOLDER_ROOT": data_folder_root}
    overrides = [functools.reduce(lambda o, kv: o.replace(kv[0], str(kv[1])), roots.items(), o) for o in overrides]
    cfg = _compose(name, *overrides)
    assert cfg.data.seed == 11
    dm = instantiate(cfg.data)
    assert isinstance(dm, ImageDataModule) and dm.image_shape == shape and dm.name == name
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, 4, shape, dm.provides)
    assert len(next(iter(dm.dataloader("test")))["index"]) >= 1


def test_folder_config_requires_root():
    from hydra.utils import instantiate
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        instantiate(_compose("folder").data)


def test_missing_root_via_config_names_path():
    from hydra.utils import instantiate

    dm = instantiate(_compose("mnist").data)
    with pytest.raises(DatasetNotFoundError, match="/nonexistent/mnist"):
        dm.setup("fit")


def test_shapes_rendered_once_equal_shapes_drawn_per_item(tmp_path):
    """The render-once store (memory and the .npz cache) gives exactly the items drawn one by one."""
    from mmexp.data.shapes import ShapesDataset

    drawn = ShapesDataset("val", num_val=24, channels=3, render_once=False)
    first = ShapesDataset("val", num_val=24, channels=3, cache_dir=str(tmp_path))
    assert first[0]["caption"] == drawn[0]["caption"]
    files = list(tmp_path.glob("shapes-*.npz"))
    assert len(files) == 1
    cached = ShapesDataset("val", num_val=24, channels=3, cache_dir=str(tmp_path))
    for i in range(24):
        a, b = drawn[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert (a["caption"], a["label"], a["index"]) == (b["caption"], b["label"], b["index"])
    # another split, size or seed is another file; a damaged file is rendered again
    ShapesDataset("val", num_val=24, channels=1, cache_dir=str(tmp_path))[0]
    assert len(list(tmp_path.glob("shapes-*.npz"))) == 2
    files[0].write_bytes(b"not an npz")
    again = ShapesDataset("val", num_val=24, channels=3, cache_dir=str(tmp_path))
    assert torch.equal(again[5]["image"], drawn[5]["image"])


def test_shapes_batches_sliced_from_the_render_equal_the_items_collated(tmp_path):
    """A loader over the rendered shapes slices whole batches (``__getitems__``), equal to the items collated."""
    from torch.utils.data import DataLoader, default_collate

    from mmexp.data.datamodule import ImageDataModule
    from mmexp.data.loaders import Collated, collate
    from mmexp.data.shapes import ShapesDataset

    ds = ShapesDataset("train", num_train=40, channels=3, cache_dir=str(tmp_path))
    idx = [7, 0, 39, 7, -1]
    batch = ds.__getitems__(idx)
    assert isinstance(batch, Collated)
    want = default_collate([ds[i] for i in idx])
    got = collate(batch)
    assert set(got) == set(want) and type(got) is dict
    for key, value in want.items():
        if torch.is_tensor(value):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key
    assert got["index"].tolist() == [7, 0, 39, 7, 39]
    with pytest.raises(IndexError, match="out of range"):
        ds.__getitems__([0, 40])
    # items drawn one by one come as items, and collate as before
    drawn = ShapesDataset("train", num_train=40, channels=3, render_once=False)
    assert isinstance(drawn.__getitems__([1, 2]), list)
    assert torch.equal(collate(drawn.__getitems__(idx))["image"], want["image"])
    # the datamodule's loaders (shuffled training, ordered evaluation) fetch batches this way
    dm = ImageDataModule(functools.partial(ShapesDataset, num_train=40, num_val=12, cache_dir=str(tmp_path)),
                         image_size=32, channels=3, batch_size=16, seed=3)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        dataset = loader.dataset
        for b in loader:
            ref = default_collate([dataset[i] for i in b["index"].tolist()])
            assert torch.equal(b["image"], ref["image"]) and b["caption"] == ref["caption"]
    # a plain DataLoader (default_collate) still reads the dataset, item by item
    plain = next(iter(DataLoader(ds, batch_size=4)))
    assert torch.equal(plain["image"], default_collate([ds[i] for i in range(4)])["image"])
    assert len(batch) == 5 and batch[-1]["index"] == 39


def test_num_workers_auto_follows_the_hardware(monkeypatch):
    from mmexp.data.datamodule import resolve_num_workers
    from mmexp.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_num_workers("auto") == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert 1 <= resolve_num_workers("auto") <= 8
    assert resolve_num_workers(3) == 3
    with pytest.raises(ConfigError, match="auto"):
        resolve_num_workers("many")


def test_captions_of_a_split_equal_its_items_captions(data_mnist_root, data_celeba_root, data_folder_root):
    """captions() (what text encoders build vocabularies from) reads no image, and says what items say."""
    from mmexp.data import CelebADataset, DigitsDataset, ImageFolderDataset, MNISTDataset, ShapesDataset

    datasets = [ShapesDataset("val", num_val=12), ShapesDataset("val", num_val=12, render_once=False),
                DigitsDataset("test"), MNISTDataset(data_mnist_root, "val", val_size=5),
                CelebADataset(data_celeba_root, "train"),
                ImageFolderDataset(data_folder_root, "train", image_size=32, captions="captions.jsonl")]
    for ds in datasets:
        captions = ds.captions()
        assert len(captions) == len(ds) > 0, type(ds).__name__
        assert captions == [ds[i]["caption"] for i in range(len(ds))], type(ds).__name__
