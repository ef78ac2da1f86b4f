"""Shared parts of mmexp's LightningModules: shape/batch checks, the non-finite-loss guard,
optimizer construction from Hydra partials, deterministic validation noise (per sample index)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from mmexp.batch import check_keys
from mmexp.data.loaders import derive_seed
from mmexp.errors import MissingBatchKeyError, NonFiniteLossError, ShapeMismatchError


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode under ``torch.no_grad`` and restore their modes afterwards."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class GenerativeModule(L.LightningModule):
    """Base class of the generative LightningModules.

    Args:
        finite_check_every_n_steps (int): every training loss passes through
            :meth:`guard_finite`, which accumulates a *device-side* record of the first
            non-finite loss (``torch.isfinite``, no host sync) and reads it back (a host sync)
            every this many training batches, raising :class:`NonFiniteLossError`. Default: 1:
            the check runs before each backward, so a NaN/inf never reaches ``backward`` or an
            optimizer step and the weights in memory and on disk stay the last good ones. On GPU
            a larger value avoids one sync per step; then up to N-1 optimizer steps may run on
            non-finite gradients before the error, so the weights in memory are corrupt, but
            :meth:`assert_finite` (called by the checkpoint callback before every save, and at
            the end of each training epoch) refuses to let them be saved: resume from the last
            checkpoint.
        sample_seed (int): seed of validation and preview noise, so samples are comparable
            across validations: validation samples draw theirs per sample index (:meth:`noise`),
            previews from a ``torch.Generator`` seeded with it. Default: 0.

    Subclasses define ``image_shape``, call :meth:`check_batch` and :meth:`guard_finite` in their
    steps, and build optimizers with :meth:`build_optimizer`.
    """

    #: batch keys the model consumes (see docs/interfaces.md)
    required_keys: tuple[str, ...] = ("image",)

    def __init__(self, finite_check_every_n_steps: int = 1, sample_seed: int = 0) -> None:
        super().__init__()
        if finite_check_every_n_steps < 1:
            raise ValueError("finite_check_every_n_steps must be >= 1, "
                             f"got {finite_check_every_n_steps}")
        self.finite_check_every_n_steps = int(finite_check_every_n_steps)
        self.sample_seed = int(sample_seed)
        # loss name -> (first bad step, or -1; value at that step), device tensors, not saved
        self._nonfinite: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._batches_seen = 0
        self._val_rng: torch.Generator | None = None
        #: global step of the last finished validation (None: none yet in this process)
        self.validated_step: int | None = None

    # ------------------------------------------------------------------ shapes and batches
    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def check_data(self, image_shape: Iterable[int]) -> None:
        """Raise ShapeMismatchError unless the data's ``(C, H, W)`` equals :attr:`image_shape`."""
        data, model = tuple(int(s) for s in image_shape), tuple(self.image_shape)
        if data != model:
            raise ShapeMismatchError(
                f"data gives images of shape {data} but the model is built for {model}; set "
                f"data.image_size/data.channels or the model's channels/image_size to agree")

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Raise MissingBatchKeyError naming the first required key missing from ``batch``
        (the keys are defined in :mod:`mmexp.batch`)."""
        check_keys(batch.keys(), self.required_keys, type(self).__name__)

    def setup(self, stage: str) -> None:
        """Fail early if the trainer's datamodule disagrees with the model (shape, keys)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        shape = getattr(dm, "image_shape", None)
        if shape is not None:
            self.check_data(shape)
        provides = getattr(dm, "provides", None)
        if provides:
            self.check_batch(dict.fromkeys(provides))

    # ------------------------------------------------------------------ non-finite guard
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batches_seen += 1

    @staticmethod
    @torch.no_grad()
    def snapshot_buffers(*modules: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(buffer, copy)`` pairs of every buffer of ``modules`` (BatchNorm running statistics, spectral-norm
        vectors, an EMA codebook), taken before a training forward pass changes them; give them to
        :meth:`guard_finite` so a forward pass that produced a non-finite loss leaves them as they were."""
        seen: set[int] = set()
        pairs = []
        for module in modules:
            for buf in module.buffers():
                if id(buf) not in seen:
                    seen.add(id(buf))
                    pairs.append((buf, buf.detach().clone()))
        return pairs

    def guard_finite(self, snapshot: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     **losses: torch.Tensor) -> None:
        """Record non-finite ``losses`` (name -> scalar tensor) without a host sync; every
        ``finite_check_every_n_steps`` batches (every call when 1) check and raise.

        ``snapshot`` (from :meth:`snapshot_buffers`): when any of ``losses`` is non-finite, those buffers are
        put back to their snapshot values on the device (``torch.where``, no host sync), so NaN running
        statistics from the bad forward pass never stay in the model, in memory or in a checkpoint.
        """
        step = self.global_step
        if snapshot:
            with torch.no_grad():
                ok = torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()]).all()
                for buf, saved in snapshot:
                    buf.copy_(torch.where(ok.to(buf.device), buf, saved))
        for name, loss in losses.items():
            loss = loss.detach()
            rec = self._nonfinite.get(name)
            if rec is None or rec[0].device != loss.device:
                rec = (torch.full((), -1, dtype=torch.long, device=loss.device),
                       torch.zeros((), dtype=loss.dtype, device=loss.device))
                self._nonfinite[name] = rec
            first, value = rec
            new = ~torch.isfinite(loss).all() & (first < 0)
            first.masked_fill_(new, step)
            value.copy_(torch.where(new, loss.reshape(-1)[0].to(value.dtype), value))
        if self._batches_seen % self.finite_check_every_n_steps == 0:
            self.assert_finite()

    def assert_finite(self) -> None:
        """Raise NonFiniteLossError if any guarded loss has been non-finite (host sync)."""
        for name, (first, value) in self._nonfinite.items():
            step = int(first)
            if step < 0:
                continue
            n = self.finite_check_every_n_steps
            if n == 1:
                consequence = ("no backward or optimizer step ran on it, so the weights in memory "
                               "and the last checkpoint are from the last good step")
            else:
                consequence = (f"non-finite checks run every {n} steps, so the weights in memory "
                               f"were updated with it after step {step} and will not be saved; "
                               "resume from the last checkpoint")
            raise NonFiniteLossError(
                f"loss {name!r} became non-finite ({float(value)}) at step {step}; {consequence}. "
                "Try a lower learning rate, gradient clipping or a different loss.")

    def on_train_epoch_end(self) -> None:
        self.assert_finite()

    # ------------------------------------------------------------------ optimizers and noise
    @staticmethod
    def build_optimizer(optimizer: Callable[..., torch.optim.Optimizer], params: Iterable,
                        scheduler: Callable[..., Any] | None = None
                        ) -> tuple[torch.optim.Optimizer, Any]:
        """``optimizer(params=...)`` from a Hydra partial; ``scheduler(optimizer=...)`` if given.
        Parameters with ``requires_grad=False`` (e.g. an EMA codebook) are left out."""
        opt = optimizer(params=[p for p in params if p.requires_grad])
        return opt, (scheduler(optimizer=opt) if scheduler is not None else None)

    def on_validation_epoch_start(self) -> None:
        self._val_rng = torch.Generator().manual_seed(self.sample_seed)

    def on_validation_epoch_end(self) -> None:
        if self._trainer is not None and not self.trainer.sanity_checking:
            self.validated_step = self.global_step

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    @property
    def eval_prefix(self) -> str:
        """``test`` while ``Trainer.test`` runs, else ``val``: where evaluation losses are logged."""
        trainer = self._trainer
        return "test" if trainer is not None and trainer.testing else "val"

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """The test split is scored as validation is: the same outputs, logged under ``test/``."""
        return self.validation_step(batch, batch_idx)

    def val_generator(self) -> torch.Generator:
        """The validation RNG (CPU, re-seeded with ``sample_seed`` at each validation start)."""
        if self._val_rng is None:
            self.on_validation_epoch_start()
        return self._val_rng

    def randn(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise on the module's device: from ``generator`` if given (drawn on
        the generator's device, then moved, so a CPU generator gives the same numbers on any
        device), else from the global torch RNG."""
        if generator is None:
            return torch.randn(*shape, device=self.device)
        return torch.randn(*shape, generator=generator, device=generator.device).to(self.device)

    def noise(self, indices: torch.Tensor | Iterable[int], *shape: int, seed: int | None = None,
              stream: int = 0) -> torch.Tensor:
        """Standard normal noise ``[len(indices), *shape]`` on the module's device, row ``i`` drawn
        from its own CPU generator seeded with ``derive_seed(seed, stream, indices[i])``.

        A sample's noise depends only on ``(seed, stream, index)``, never on the batch it comes in,
        the batch size or the number of processes, so validation samples (one per
        ``batch["index"]``) are the same under DDP as in one process. ``seed`` defaults to
        ``sample_seed``; ``stream`` separates independent draws for the same index.
        """
        seed = self.sample_seed if seed is None else int(seed)
        rows = [torch.randn(*shape, generator=torch.Generator().manual_seed(derive_seed(seed, stream, int(i))))
                for i in torch.as_tensor(indices).reshape(-1).tolist()]
        return (torch.stack(rows) if rows else torch.zeros(0, *shape)).to(self.device)

    def generate_indexed(self, indices: torch.Tensor | Iterable[int], seed: int | None = None) -> torch.Tensor:
        """One sample per index, from :meth:`noise` (``[len(indices), C, H, W]`` in [-1, 1]): sample
        ``i`` is the same image whatever batch or process draws it. Models that cannot generate
        raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} does not generate samples")

    def sample_indices(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``batch["index"]``: what validation samples are drawn for (see :meth:`noise`)."""
        if "index" not in batch:
            raise MissingBatchKeyError(
                f"{type(self).__name__} draws validation samples per batch['index'], but the batch "
                f"has only {sorted(batch)}; every mmexp dataset provides 'index' (docs/interfaces.md)")
        return torch.as_tensor(batch["index"])

    def preview_generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with ``sample_seed``: the same noise at every preview."""
        return torch.Generator().manual_seed(self.sample_seed)
