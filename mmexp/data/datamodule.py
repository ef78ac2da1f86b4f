"""``ImageDataModule``: one LightningDataModule for every mmexp dataset."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmexp.errors import ConfigError, ShapeMismatchError
from mmexp.batch import check_keys

from .base import SPLITS, STANDARD_SPLITS, check_split
from .loaders import ResumableDataLoader, collate, derive_seed
from .transforms import check_channels, check_image_size

__all__ = ["ImageDataModule", "DegradedLoader"]

_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: STANDARD_SPLITS,
}


def resolve_num_workers(num_workers: int | str) -> int:
    """``"auto"`` -> 0 without a GPU, else ``min(8, CPUs per GPU)``; an integer >= 0 as it is."""
    if num_workers == "auto":
        if not torch.cuda.is_available():
            return 0
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(8, cpus // max(1, torch.cuda.device_count()) - 1))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0 or 'auto', got {num_workers!r}")
    return num_workers


class ImageDataModule(L.LightningDataModule):
    """Wraps a dataset factory into train/val/test loaders that follow ``docs/interfaces.md``.

    Args:
        dataset: callable ``dataset(split=...)`` returning a map-style dataset of dict items; in
            configs a ``_partial_: true`` node (e.g. ``mmexp.data.shapes.ShapesDataset``).
        image_size: side of the (square) images the model expects; checked against the data.
        channels: 1 or 3; checked against the data.
        batch_size: training batch size.
        eval_batch_size: batch size of val/test loaders (default: ``batch_size``).
        num_workers: DataLoader worker processes (0 = load in the main process), or ``"auto"``: none on a
            machine without a GPU (items are cheap and processes cost more than they save on a few cores),
            ``min(8, CPUs per GPU)`` with one, so a GPU step is not data-bound.
        seed: seeds the training order (with the epoch) and the worker seeds; never the global RNG.
        pin_memory: pin host memory for faster GPU transfer; ``"auto"``: when a GPU is present.
        drop_last: drop the last incomplete training batch (val/test never drop).
        persistent_workers: keep workers alive between epochs (default: ``num_workers > 0``).
        name: short dataset name; default the dataset class's ``name`` attribute.
        root, download: data-level settings of file-based datasets; configs interpolate them into
            the ``dataset`` node (``data.root=...``, ``data.download=true``). Kept here for reference only.
        degradation: a :class:`mmexp.degradations.Degradation` (config group ``degradation=``, interpolated as
            ``data.degradation: ${degradation}``) or None (default). Applied to every batch on its device in
            :meth:`on_after_batch_transfer` (see :meth:`degrade`); ``provides`` then adds its keys.
        eval_degradation: the degradation of the val/test/eval splits when they differ from training's, e.g.
            a blind denoiser trained on sigma in [0, 55] (``degradation=blind_noise``) and scored at sigma 25
            (``data.eval_degradation`` = a fixed-sigma noise). Default None: ``degradation`` for every split.
        num_classes: the number of classes of ``label`` the config declares (``data.num_classes``), so that
            label-conditioned model configs can interpolate it (``${data.num_classes}``) before any data is
            read; checked against the dataset's own ``num_classes`` when a split is built. None: not declared.

    Datasets are built lazily (``setup`` or the first property/loader that needs them) and cached.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset],
        image_size: int,
        channels: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        seed: int = 0,
        pin_memory: bool | str = False,
        drop_last: bool = True,
        persistent_workers: bool | None = None,
        name: str | None = None,
        root: str | None = None,
        download: bool = False,
        degradation: Callable[..., dict] | None = None,
        num_classes: int | None = None,
        eval_degradation: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__()
        if not callable(dataset):
            raise ConfigError(
                f"data.dataset must be callable as dataset(split=...), got {type(dataset).__name__}; "
                "in a config give it `_partial_: true`"
            )
        self.dataset_factory = dataset
        self.image_size = check_image_size(image_size)
        self.channels = check_channels(channels)
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
        num_workers = resolve_num_workers(num_workers)
        if pin_memory == "auto":
            pin_memory = torch.cuda.is_available()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = int(seed)
        self.pin_memory = bool(pin_memory)
        self.drop_last = bool(drop_last)
        self.persistent_workers = (num_workers > 0) if persistent_workers is None else bool(persistent_workers and num_workers > 0)
        self._name = name
        self.root = root
        self.download = bool(download)
        self.declared_num_classes = None if num_classes is None else int(num_classes)
        self._datasets: dict[str, Dataset] = {}
        for key, value in (("degradation", degradation), ("eval_degradation", eval_degradation)):
            if value is not None and not (callable(value) and hasattr(value, "provides")):
                raise ConfigError(f"data.{key} must be a degradation (callable with `provides`), got "
                                  f"{type(value).__name__}; choose one with degradation=NAME")
        if eval_degradation is not None and degradation is None:
            raise ConfigError("data.eval_degradation is set but data.degradation is not: give the training "
                              "degradation too (degradation=NAME)")
        self.degradation = degradation
        self.eval_degradation = eval_degradation

    # -- properties -----------------------------------------------------------------------
    @property
    def dataset_class(self) -> Any:
        """The class (or function) the ``dataset`` factory builds."""
        fn = self.dataset_factory
        while isinstance(fn, functools.partial):
            fn = fn.func
        return fn

    @property
    def name(self) -> str:
        """Short dataset name (e.g. ``"shapes"``)."""
        if self._name:
            return self._name
        cls = self.dataset_class
        return str(getattr(cls, "name", None) or getattr(cls, "__name__", "dataset")).lower()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the batches' images."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int | None:
        """Number of classes of ``label`` (``None`` if the dataset has no labels). Builds the train split."""
        n = getattr(self.dataset("train"), "num_classes", None)
        return None if n is None else int(n)

    @property
    def provides(self) -> tuple[str, ...]:
        """Batch keys of the batches a model sees: the dataset's ``provides`` plus the degradation's. Builds
        a split (train, else the first non-empty one: evaluation sets have no train split)."""
        ds = self._some_split()
        keys = getattr(ds, "provides", None)
        if keys is None:
            keys = tuple(ds[0].keys()) if len(ds) else ("image", "index")
        keys = tuple(keys)
        if self.degradation is not None:
            check_keys(keys, getattr(self.degradation, "required_keys", ()), type(self.degradation).__name__,
                       f"data '{self.name}'")
            for degradation in (self.degradation, self.eval_degradation):
                keys += tuple(k for k in getattr(degradation, "provides", ()) if k not in keys)
        return keys

    def _some_split(self) -> Dataset:
        for split in SPLITS:
            ds = self.dataset(split)
            if len(ds):  # type: ignore[arg-type]
                return ds
        return self.dataset("train")

    # -- datasets -------------------------------------------------------------------------
    def dataset(self, split: str) -> Dataset:
        """The (cached) dataset of ``split``, built and shape-checked on first use."""
        check_split(split)
        if split not in self._datasets:
            ds = self.dataset_factory(split=split)
            self._validate(ds, split)
            self._datasets[split] = ds
        return self._datasets[split]

    def _validate(self, ds: Dataset, split: str) -> None:
        try:
            n = len(ds)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(f"dataset {ds!r} has no length; mmexp needs map-style datasets") from None
        if n == 0:
            return
        item = ds[0]
        if not isinstance(item, dict) or "image" not in item:
            raise ConfigError(
                f"{type(ds).__name__} items must be dicts with an 'image' key (see docs/interfaces.md), "
                f"got {type(item).__name__}"
            )
        shape = tuple(item["image"].shape)
        if getattr(ds, "variable_size", False):
            # whole images of any size (evaluation): only the channels must agree
            shape, expected = shape[:1], self.image_shape[:1]
        else:
            expected = self.image_shape
        if shape != expected:
            raise ShapeMismatchError(
                f"the {self.name} {split} images have shape {shape} (C, H, W) but the data config expects "
                f"{self.image_shape} from data.channels={self.channels}, data.image_size={self.image_size}; "
                "make them agree (set data.image_size/data.channels, or the dataset's own image_size/channels)"
            )
        missing = [k for k in getattr(ds, "provides", ()) if k not in item]
        if missing:
            raise ConfigError(f"{type(ds).__name__} declares keys {missing} in `provides` but its items lack them")
        declared, actual = self.declared_num_classes, getattr(ds, "num_classes", None)
        if declared is not None and declared != actual:
            raise ConfigError(
                f"data.num_classes={declared} but the {self.name} {split} split has "
                f"{'no labels' if actual is None else f'{actual} classes'}; set data.num_classes={actual or 'null'} "
                "(label-conditioned models take their number of classes from it)")

    # -- degradation --------------------------------------------------------------------
    def degradation_seeds(self, index: torch.Tensor, split: str, epoch: int = 0) -> torch.Tensor:
        """Per-sample seeds ``derive_seed(seed, split id, index, epoch)`` (int64 ``[B]``, on the CPU): a
        sample's degradation depends on nothing else (not the batch, its size or the number of processes)."""
        check_split(split)
        sid = SPLITS.index(split)
        return torch.tensor([derive_seed(self.seed, sid, int(i), int(epoch)) for i in index.tolist()],
                            dtype=torch.int64)

    def degrade(self, batch: dict[str, Any], split: str, epoch: int = 0) -> dict[str, Any]:
        """``batch`` through the degradation (a new dict; the batch itself when there is none).

        ``epoch`` matters for ``train`` only (new parameters every epoch; give the trainer's current epoch);
        val/test use epoch 0 whatever is passed, so their inputs never change. Use this outside a trainer
        (evaluation, restoration scripts) to get exactly the inputs a training run validated on. Splits other
        than ``train`` go through ``eval_degradation`` when there is one.
        """
        degradation = self.degradation_for(split)
        if degradation is None:
            return batch
        if "index" not in batch:
            raise ConfigError("a degraded batch needs 'index' (the per-sample seeds come from it)")
        seeds = self.degradation_seeds(batch["index"], split, epoch if split == "train" else 0)
        return degradation(batch, seeds)

    def degradation_for(self, split: str) -> Callable[..., dict] | None:
        """The degradation ``split``'s batches go through: ``eval_degradation`` (when set) for every split but
        ``train``, else ``degradation``."""
        if split != "train" and self.eval_degradation is not None:
            return self.eval_degradation
        return self.degradation

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Apply the degradation on the batch's device, with the split and epoch of the running loop."""
        if self.degradation is None or not isinstance(batch, dict):
            return batch
        trainer = self.trainer
        stage = getattr(getattr(trainer, "state", None), "stage", None)
        stage = getattr(stage, "value", stage)
        split = {"train": "train", "validate": "val", "sanity_check": "val", "test": "test",
                 "predict": "test"}.get(str(stage), "val")
        epoch = int(trainer.current_epoch) if split == "train" and trainer is not None else 0
        return self.degrade(batch, split, epoch)

    def prepare_data(self) -> None:
        """Nothing to do: datasets with ``download: true`` download when built (on every rank-0 call)."""

    def setup(self, stage: str | None = None) -> None:
        """Build (lazily, once) and validate the datasets needed by ``stage``."""
        for split in _STAGE_SPLITS.get(stage, STANDARD_SPLITS):
            self.dataset(split)

    # -- loaders --------------------------------------------------------------------------
    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
        }

    def _nonempty(self, split: str) -> Dataset:
        ds = self.dataset(split)
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ConfigError(f"the {split} split of {self.name} is empty; check the dataset's split sizes/fractions")
        return ds

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled by ``(seed, epoch)``, resumable mid-epoch, ``drop_last`` as configured."""
        ds = self._nonempty("train")
        if self.drop_last and len(ds) < self.batch_size:  # type: ignore[arg-type]
            raise ConfigError(
                f"train split of {self.name} has {len(ds)} items, fewer than data.batch_size={self.batch_size} "
                "with drop_last=true: no batch would be produced; lower data.batch_size or set data.drop_last=false"
            )
        return ResumableDataLoader(
            ds, batch_size=self.batch_size, shuffle=True, seed=self.seed, drop_last=self.drop_last, **self._loader_kwargs()
        )

    def val_dataloader(self) -> DataLoader:
        """Dataset order, no shuffle, keeps the last partial batch."""
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Dataset order, no shuffle, keeps the last partial batch."""
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def dataloader(self, split: str, batch_size: int | None = None, shuffle: bool = False,
                   degrade: bool = False) -> DataLoader | DegradedLoader:
        """A deterministic loader over any split (used by eval/sample tasks).

        Args:
            split: ``train``, ``val``, ``test`` or, for datasets that have it, ``compositional``.
            batch_size: default ``eval_batch_size`` (1 for datasets of whole images of any size).
            shuffle: if true the order is a permutation fixed by ``seed`` (not the global RNG).
            degrade: yield batches already through the degradation (on the CPU, epoch 0), for loops that do not
                run this datamodule's hooks (``trainer.validate(model, dataloaders=...)``). Default False: a
                trainer given this datamodule applies it itself.

        Never drops the last batch.
        """
        ds = self._nonempty(split)
        bs = batch_size or self.eval_batch_size
        if getattr(ds, "variable_size", False):
            bs = 1
        if shuffle:
            loader: DataLoader = ResumableDataLoader(ds, batch_size=bs, shuffle=True, seed=self.seed, drop_last=False,
                                                     **self._loader_kwargs())
        else:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, SPLITS.index(split), 7))
            loader = DataLoader(ds, batch_size=bs, shuffle=False, drop_last=False, generator=generator,
                                collate_fn=collate, **self._loader_kwargs())
        if degrade and self.degradation is not None:
            return DegradedLoader(loader, self, split)
        return loader

    def __str__(self) -> str:  # LightningDataModule's would build every loader
        return self.__repr__()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, image_shape={self.image_shape}, batch_size={self.batch_size}, "
            f"eval_batch_size={self.eval_batch_size}, num_workers={self.num_workers}, seed={self.seed})"
        )


class DegradedLoader:
    """A loader whose batches come through a datamodule's degradation (``split``, epoch 0). Iterable, sized,
    and exposes ``dataset``/``batch_size`` like the loader it wraps."""

    def __init__(self, loader: DataLoader, datamodule: ImageDataModule, split: str) -> None:
        self.loader, self.datamodule, self.split = loader, datamodule, split
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __iter__(self):
        for batch in self.loader:
            yield self.datamodule.degrade(batch, self.split, 0)

    def __len__(self) -> int:
        return len(self.loader)
