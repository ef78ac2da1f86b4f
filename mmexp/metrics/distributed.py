"""Metric state across DDP processes: per-sample values gathered, padding duplicates dropped, sorted.

Under DDP, Lightning's ``DistributedSampler`` gives rank ``r`` of ``W`` the samples ``r, r + W, ...``
of a split and pads the last round by repeating the first samples, so every rank sees the same
number. A metric over "the split" must therefore be computed over the union of every rank's samples,
each counted once. :class:`IndexedSamples` stores per-sample tensors together with each sample's
index (its position in the split, ``batch["index"]``); :meth:`IndexedSamples.gather` collects them
from every rank, keeps one row per index and sorts by index, so 2 processes see exactly what 1
process sees, in the same order.

Every function here is a no-op (local data, sorted) when ``torch.distributed`` is not initialised
or has a single process. The ones that communicate are collective: every rank must call them, in
the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo (CPU DDP) moves CPU tensors
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` without DDP)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank."""
    return all(all_gather_object(bool(flag)))


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (``[n_r, ...]``, ``n_r`` may differ per rank) of every rank in rank order.

    ``all_gather`` needs equal shapes: each rank pads to the largest ``n_r`` and the padding is cut
    off again. Trailing shape and dtype must agree across ranks. The result is on ``x.device``.
    """
    if not is_distributed():
        return x
    device = _comm_device()
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    longest = max(sizes_i)
    if longest == 0:
        return x
    buf = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=device)
    buf[: x.shape[0]] = x.to(device)
    out = [torch.empty_like(buf) for _ in sizes_i]
    dist.all_gather(out, buf)
    return torch.cat([o[:s] for o, s in zip(out, sizes_i)]).to(x.device)


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy ``module``'s buffers (BatchNorm statistics, spectral-norm vectors...) from rank ``src``.

    DDP keeps parameters equal across ranks but each rank's last training forward updates its own
    buffers; rank 0's are the ones checkpoints store, so they are the ones scored."""
    if not is_distributed():
        return
    device = _comm_device()
    for buf in module.buffers():
        if buf.device == device:
            dist.broadcast(buf, src)
        else:
            tmp = buf.to(device)
            dist.broadcast(tmp, src)
            buf.copy_(tmp)


def unique_sorted(index: torch.Tensor) -> torch.Tensor:
    """Positions in ``index`` that keep one row per index value (the first), ordered by index."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[keep]


class IndexedSamples:
    """Per-sample tensors (rows ``[n, ...]``) keyed by each sample's index, gathered across ranks.

    ``add(index, features=..., logits=...)`` appends rows; every call must give the same names
    with the same trailing shapes. :meth:`gather` is collective under DDP.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._index: list[torch.Tensor] = []
        self._values: dict[str, list[torch.Tensor]] = {}
        self._count = 0

    def __len__(self) -> int:
        """Rows added on this rank."""
        return self._count

    def add(self, index: torch.Tensor, **values: torch.Tensor) -> None:
        n = int(index.numel())
        for name, v in values.items():
            if v.shape[0] != n:
                raise ValueError(f"{name} has {v.shape[0]} rows for {n} sample indices")
        if self._values and set(values) != set(self._values):
            raise ValueError(f"IndexedSamples: got values {sorted(values)}, earlier {sorted(self._values)}")
        self._index.append(index.reshape(-1).to(device="cpu", dtype=torch.long))
        for name, v in values.items():
            self._values.setdefault(name, []).append(v)
        self._count += n

    def local_index(self) -> torch.Tensor:
        return torch.cat(self._index) if self._index else torch.zeros(0, dtype=torch.long)

    def gather(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(index [N], {name: [N, ...]})``: the union over ranks, one row per index, sorted by index.

        Padding duplicates of ``DistributedSampler`` are the same sample (same index) on two ranks:
        the copy of the lowest rank is kept."""
        index = self.local_index()
        local = {name: torch.cat(vs) for name, vs in self._values.items()}
        if is_distributed():
            # a rank without samples must still take part, with empty tensors of the right shape
            meta = {name: (tuple(v.shape[1:]), v.dtype) for name, v in local.items()}
            for other in all_gather_object(meta):
                for name, (shape, dtype) in other.items():
                    if name not in local:
                        device = next(iter(local.values())).device if local else torch.device("cpu")
                        local[name] = torch.zeros((0, *shape), dtype=dtype, device=device)
            index = all_gather_cat(index)
            local = {name: all_gather_cat(local[name]) for name in sorted(local)}
        keep = unique_sorted(index)
        return index[keep], {name: v[keep.to(v.device)] for name, v in local.items()}


def positions_to_indices(start: int, n: int) -> torch.Tensor:
    """Sample indices of the ``n`` samples arriving after ``start`` on this rank when none are
    given: ``position * world_size + rank``, the order of an unshuffled ``DistributedSampler``
    (``position`` itself in a single process)."""
    return torch.arange(start, start + n, dtype=torch.long) * world_size() + rank()


def split_for_rank(items: Sequence[int]) -> list[int]:
    """This rank's share of ``items`` (``items[rank::world_size]``)."""
    return list(items[rank() :: world_size()])
