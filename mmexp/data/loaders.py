"""Deterministic, resumable data loading.

* :class:`EpochSampler` shuffles with a permutation that depends only on ``(seed, epoch)``; it never
  touches the global RNG. Lightning calls ``set_epoch`` on it at the start of every epoch
  (``lightning.fabric.utilities.data._set_sampler_epoch`` looks at ``dataloader.sampler``).
* :class:`ResumableDataLoader` is a ``DataLoader`` with ``state_dict()`` / ``load_state_dict()``.
  Lightning 2.x stores the state of every training dataloader that has both methods in the
  checkpoint (``FitLoop.on_save_checkpoint`` -> ``CombinedLoader._state_dicts``) and hands it back
  on resume before creating the iterator (``FitLoop.setup_data`` -> ``_load_combined_loader_states``).
  After ``load_state_dict`` the next iteration of the saved epoch skips the batches already yielded
  (only their indices are skipped: no sample is loaded twice), so a run killed mid-epoch sees
  exactly the batches an uninterrupted run would have seen.

Worker processes are seeded from a generator reseeded from ``(seed, epoch)`` at the start of each
epoch, so per-worker RNG (``torch.initial_seed()`` inside workers) is reproducible too. A dataset with a
``set_epoch(epoch)`` method (:class:`EpochSeeded`: random training crops) is told the epoch at the start of
each epoch's iteration, so its items can depend on ``(seed, index, epoch)`` alone.

A dataset may also fetch a whole batch at once: ``__getitems__(indices)`` (which ``DataLoader`` calls when it
exists) returning a :class:`Collated` batch, exactly what ``default_collate`` would make of the items, so a
dataset held in memory (the shapes, rendered once) slices its arrays instead of building and stacking one
dict per item. Every mmexp loader collates with :func:`collate`, which passes such a batch through.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, default_collate

__all__ = ["Collated", "EpochSampler", "EpochSeeded", "ResumableDataLoader", "collate", "derive_seed"]


class Collated(Sequence):
    """A batch a dataset's ``__getitems__`` built at once (``batch``: what ``default_collate`` would make of the
    items, tensors with a leading batch dimension and lists of strings). :func:`collate` (mmexp's loaders) takes
    ``batch`` as it is; any other collate function sees a sequence of the items (``item(j)`` for position ``j``),
    so a plain ``DataLoader`` over the dataset still works, at the per-item cost."""

    def __init__(self, batch: dict[str, Any], item: Callable[[int], Any], size: int) -> None:
        self.batch, self._item, self._size = batch, item, int(size)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, j: int) -> Any:  # type: ignore[override]
        if not -self._size <= j < self._size:
            raise IndexError(j)
        return self._item(j % self._size)


def collate(batch: Any) -> Any:
    """The collate function of mmexp's loaders: a :class:`Collated` batch as it is, a list of items through
    ``torch.utils.data.default_collate``."""
    if isinstance(batch, Collated):
        return dict(batch.batch)
    return default_collate(batch)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer ``keys`` with NumPy's ``SeedSequence`` (well mixed)."""
    state = np.random.SeedSequence([int(k) % (1 << 64) for k in keys]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) >> 1


class EpochSeeded:
    """Mixin of datasets whose training items depend on the epoch (random crops, flips): :meth:`item_generator`
    is a CPU generator seeded by ``(seed, split, index, epoch)``, so an item is the same whatever the worker,
    the batch or an interruption, and new every epoch. :class:`ResumableDataLoader` calls :meth:`set_epoch`;
    the epoch lives in a shared-memory tensor, which worker processes (persistent ones too) read."""

    def set_epoch(self, epoch: int) -> None:
        self._epoch_tensor()[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch_tensor()[0])

    def _epoch_tensor(self) -> torch.Tensor:
        t = self.__dict__.get("_shared_epoch")
        if t is None:
            t = self.__dict__["_shared_epoch"] = torch.zeros(1, dtype=torch.int64).share_memory_()
        return t

    def item_generator(self, seed: int, split_id: int, index: int, epoch: int | None = None) -> torch.Generator:
        """The generator of item ``index`` in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        return torch.Generator().manual_seed(derive_seed(seed, split_id, index, epoch, 0xC0))


class EpochSampler(Sampler[int]):
    """Yields ``range(n)`` shuffled by a permutation that depends only on ``(seed, epoch)``.

    Args:
        data_source: the dataset (only ``len`` is used) or its length.
        seed: base seed.
        shuffle: if ``False`` yields ``0..n-1`` in order.
    """

    def __init__(self, data_source: Sized | int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this at every epoch start)."""
        self.epoch = int(epoch)

    def permutation(self, epoch: int | None = None) -> list[int]:
        """The order of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return list(range(self.num_samples))
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation())

    def __len__(self) -> int:
        return self.num_samples


class _SkipIndexSampler:
    """Wraps the loader's index sampler (batch sampler) and skips the first ``loader._skip`` batches.

    ``DataLoader`` iterators keep a reference to this object and call ``iter`` on it at every
    (re)start, including with ``persistent_workers=True``, so the skip is read at that moment.
    """

    def __init__(self, loader: ResumableDataLoader, base: Any) -> None:
        self.loader = loader
        self.base = base

    def __iter__(self) -> Iterator[Any]:
        skip = self.loader._skip
        it = iter(self.base)
        return itertools.islice(it, skip, None) if skip else it

    def __len__(self) -> int:
        return len(self.base)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose order depends only on ``(seed, epoch)`` and that can resume mid-epoch.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch.
        shuffle: shuffle with :class:`EpochSampler` (``seed``, ``epoch``); ``False`` keeps dataset order.
        seed: base seed of the order and of the worker seeds.
        drop_last: drop the last incomplete batch.
        sampler: a custom sampler (e.g. one Lightning injects for distributed training); its
            ``set_epoch`` is called by Lightning as usual. Default: ``EpochSampler(dataset, seed, shuffle)``.
        **kwargs: any other ``DataLoader`` argument (``num_workers``, ``pin_memory``,
            ``persistent_workers``, ``collate_fn``...). A ``generator`` defaults to one seeded with
            ``seed`` so creating worker seeds never consumes the global RNG.

    ``state_dict()`` returns ``{"epoch": int, "batches_yielded": int}`` for the epoch being (or last)
    iterated. ``load_state_dict(sd)`` makes the next iteration of epoch ``sd["epoch"]`` start after
    ``sd["batches_yielded"]`` batches; an iteration of any other epoch starts from the beginning.
    ``len(loader)`` is always the full epoch length.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | None = True,
        sampler: Sampler | None = None,
        seed: int = 0,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        if sampler is None:
            sampler = EpochSampler(len(dataset), seed=seed, shuffle=bool(shuffle))
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator().manual_seed(derive_seed(seed, -1))
        if kwargs.get("batch_sampler") is not None:
            raise ValueError("ResumableDataLoader builds its own batch sampler; pass `sampler` and `batch_size` instead")
        kwargs.pop("batch_sampler", None)
        if kwargs.get("collate_fn") is None:
            kwargs["collate_fn"] = collate
        super().__init__(dataset, batch_size=batch_size, shuffle=None, sampler=sampler, drop_last=drop_last, **kwargs)
        self.seed = int(seed)
        self._skip = 0  # batches to skip when the next iterator starts
        self._pending: tuple[int, int] | None = None  # (epoch, batches) loaded, not yet applied
        self._epoch = self._sampler_epoch()
        self._batches_yielded = 0

    # -- epoch / state ----------------------------------------------------------------------
    def _sampler_epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Forward to the sampler's ``set_epoch`` (convenience when used outside Lightning)."""
        fn = getattr(self.sampler, "set_epoch", None)
        if callable(fn):
            fn(epoch)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches_yielded"}`` of the current (or last, or pending loaded) epoch."""
        if self._pending is not None:
            return {"epoch": self._pending[0], "batches_yielded": self._pending[1]}
        return {"epoch": self._epoch, "batches_yielded": self._batches_yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume: the next iteration of epoch ``state_dict["epoch"]`` skips the batches already yielded."""
        try:
            epoch, done = int(state_dict["epoch"]), int(state_dict["batches_yielded"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"invalid ResumableDataLoader state {state_dict!r}: expected {{'epoch': int, 'batches_yielded': int}}"
            ) from e
        if epoch < 0 or done < 0:
            raise ValueError(f"invalid ResumableDataLoader state {state_dict!r}: values must be >= 0")
        self._pending = (epoch, done)
        self.set_epoch(epoch)

    # -- iteration --------------------------------------------------------------------------
    @property
    def _index_sampler(self) -> Any:  # type: ignore[override]
        base = self.batch_sampler if self._auto_collation else self.sampler
        return _SkipIndexSampler(self, base)

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing happens until the first ``next``, by which time Lightning has called
        # ``set_epoch`` (it creates the iterator before setting the epoch on resume).
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        epoch = self._sampler_epoch()
        skip = 0
        if self._pending is not None:
            pending_epoch, pending_batches = self._pending
            self._pending = None
            if pending_epoch == epoch:
                skip = pending_batches
        self._epoch, self._batches_yielded = epoch, skip
        # datasets whose items change with the epoch (random training crops) learn it here, before any worker
        # fetches an item of this epoch (they keep it in shared memory, so persistent workers see it too)
        set_dataset_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_dataset_epoch):
            set_dataset_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(derive_seed(self.seed, epoch))
        self._skip = skip
        try:
            it = super().__iter__()
        finally:
            self._skip = 0
        for batch in it:
            self._batches_yielded += 1
            yield batch
