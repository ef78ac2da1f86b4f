"""Shared parts of mmexp's LightningModules: shape/batch checks, the non-finite-loss guard,
optimizer construction from Hydra partials, deterministic validation noise (per sample index)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from mmexp.batch import check_keys
from mmexp.data.loaders import derive_seed
from mmexp.errors import MissingBatchKeyError, NonFiniteLossError, ShapeMismatchError


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer`` can skip an update on the device from a ``found_inf`` tensor (fused Adam,
    AdamW, SGD: ``_step_supports_amp_scaling``)."""
    opt = getattr(optimizer, "optimizer", optimizer)
    # the flag is set at construction; a param group's "fused" can change after (a resumed optimizer state)
    return bool(getattr(opt, "_step_supports_amp_scaling", False)) and \
        all(group.get("fused") for group in getattr(opt, "param_groups", [{}]))


def found_inf_of(ok: torch.Tensor) -> torch.Tensor:
    """The float ``found_inf`` flag (1.0: a loss was non-finite, 0.0: all finite) that a fused optimizer's ``step``
    reads, for the device boolean ``ok`` of :meth:`GenerativeModule.guard_finite`: the flag the guard computed ``ok``
    from when it came from there (no kernel launch), else derived from ``ok``."""
    found = getattr(ok, "_mmexp_found_inf", None)
    return found if found is not None else (~ok).to(torch.float32)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every state tensor of ``optimizer`` that is shaped like its parameter (Adam's moments) the parameter's
    memory layout. A loaded state keeps the strides it was saved with, and the fused optimizers walk a parameter,
    its gradient and its state as flat memory: a channels-last parameter with a contiguous ``exp_avg`` (a
    checkpoint written before ``channels_last`` was switched on, or the reverse) would be updated with another
    element's moments, silently. Registered on every optimizer :meth:`GenerativeModule.build_optimizer` makes, as a
    ``load_state_dict`` post-hook."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            for key, value in (state or {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 1 and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class FlatBuffers:
    """Buffers (BatchNorm running statistics, spectral-norm vectors, an EMA codebook) re-pointed into one flat
    tensor per (device, dtype) with ``Tensor.set_``: each buffer stays the same tensor object (its module's, DDP's,
    an optimizer's or a hook's references keep working, in-place updates land in the flat tensor), only its storage
    moves. A snapshot of them all is then one clone per group and a restore one ``where`` (written in place), however
    many buffers there are, and no per-buffer Python on either side.

    Args:
        buffers (Iterable[Tensor]): the buffers, in place.

    :meth:`intact` says whether every buffer still lives where it was put (a module that *replaced* a buffer's
    storage, e.g. with ``.data =``, breaks the link; :meth:`GenerativeModule.snapshot_buffers` then flattens again).
    """

    def __init__(self, buffers: Iterable[torch.Tensor]) -> None:
        buffers = list(buffers)
        groups: dict[tuple, list[torch.Tensor]] = {}
        for buf in buffers:
            groups.setdefault((buf.device, buf.dtype), []).append(buf)
        self.flats: list[torch.Tensor] = []
        with torch.no_grad():
            for bufs in groups.values():
                flat = torch.cat([b.detach().reshape(-1) for b in bufs])
                offset = 0
                for b in bufs:
                    b.set_(flat[offset:offset + b.numel()].view(b.shape))
                    offset += b.numel()
                self.flats.append(flat)
        self.buffers = buffers
        self._ptrs = [b.data_ptr() for b in buffers]

    def __len__(self) -> int:
        return len(self.buffers)

    def intact(self) -> bool:
        return all(b.data_ptr() == p for b, p in zip(self.buffers, self._ptrs))


class BufferSnapshot:
    """A copy of some buffers' values (:class:`FlatBuffers`), taken and put back in a fixed handful of kernel
    launches however many buffers there are. Copying buffer by buffer (a clone, then a ``where`` and a ``copy_``
    each) is ~3 launches per buffer: for a DCGAN's ~20 buffers about 60 launches a step, which on a GPU cost more
    host time than a small model's step can spare.

    Args:
        buffers (FlatBuffers | Iterable[Tensor]): the buffers (flattened first when not yet).
    """

    def __init__(self, buffers: FlatBuffers | Iterable[torch.Tensor]) -> None:
        self.flat = buffers if isinstance(buffers, FlatBuffers) else FlatBuffers(buffers)
        with torch.no_grad():
            self.saved = [f.clone() for f in self.flat.flats]

    def __len__(self) -> int:
        return len(self.flat)

    def restore_unless(self, ok: torch.Tensor) -> None:
        """Put every buffer back to its snapshot value unless ``ok`` (a device boolean; no host sync)."""
        with torch.no_grad():
            for now, saved in zip(self.flat.flats, self.saved):
                torch.where(ok.to(now.device), now, saved, out=now)


class LossRecord:
    """The guarded losses of one :meth:`GenerativeModule.guard_finite` signature (its loss names) since the last
    host check: a device ring of ``size`` rows, one per call, that the call stacks its losses into (no host sync)
    and the check reads back (one transfer) to find the first non-finite loss, its step and its value.

    Args:
        names (tuple[str, ...]): the losses' names, in the order of each row.
        size (int): rows: calls between host checks (a full ring forces a check).
        device (torch.device): where the losses are.
    """

    def __init__(self, names: tuple[str, ...], size: int, device: torch.device) -> None:
        self.names = names
        self.values = torch.zeros(size, len(names), device=device)
        self.steps = [0] * size
        self.count = 0    # rows written, ever
        self.pending = 0  # rows written since the last check

    @property
    def full(self) -> bool:
        return self.pending >= len(self.steps)

    def next_row(self, step: int) -> torch.Tensor:
        """The row for the losses of ``step`` (a view to write them into), counted as written."""
        row = self.count % len(self.steps)
        self.steps[row] = step
        self.count += 1
        self.pending += 1
        return self.values[row]

    def first_nonfinite(self) -> tuple[int, str, float] | None:
        """``(step, name, value)`` of the first non-finite loss written since the last check (one host transfer),
        or None; the rows count as checked afterwards."""
        pending, self.pending = min(self.pending, len(self.steps)), 0
        if not pending:
            return None
        rows = self.values.tolist()
        for j in range(self.count - pending, self.count):
            row = j % len(self.steps)
            for name, value in zip(self.names, rows[row]):
                if not math.isfinite(value):
                    return self.steps[row], name, value
        return None


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

    Non-finite losses never reach the weights, without a host sync per step:

    - every training loss passes through :meth:`guard_finite`, which keeps a *device-side* record of
      the first non-finite one (``torch.isfinite``, no host sync) and returns a device boolean ``ok``;
    - :meth:`skip_unless` hands ``ok`` to the optimizer: optimizers that take a ``found_inf`` tensor
      (``fused=True`` Adam, AdamW and SGD, the configs' default) skip the update *on the device*
      when it is false (parameters, moments and step count unchanged); the EMA and the buffers that a
      forward pass changed (BatchNorm statistics: :meth:`snapshot_buffers`) are restored likewise;
    - every ``finite_check_every_n_steps`` batches the record is read back (one host sync) and
      :class:`NonFiniteLossError` raised: the weights in memory are then those of the last good step,
      and :meth:`assert_finite` (checked before every checkpoint write) keeps a poisoned state off disk.

    Args:
        finite_check_every_n_steps (int | None): batches between host-side checks. Default: None
            (auto): 100 when every optimizer takes ``found_inf``, else 1 (a sync per step: the check
            then runs before each backward, which is the only way to keep the guarantee with an
            optimizer that cannot skip an update on the device).
        log_every_n_steps (int | None): training scalars are summed on the device and logged as means
            every this many batches (one host sync then, none in between). Default: None (the
            trainer's ``log_every_n_steps``).
        sample_seed (int): seed of validation and preview noise, so samples are comparable
            across validations: validation samples draw theirs per sample index (:meth:`noise`),
            previews from a ``torch.Generator`` seeded with it. Default: 0.
        channels_last (bool): keep the 4-D weights (convolutions) in channels-last memory layout
            (``torch.channels_last``), set in :meth:`setup`: convolutions then run without layout conversions
            (oneDNN on CPUs, cuDNN's NHWC kernels on GPUs; 1.6-2x for the default GAN's step on 2 CPU cores). The
            numbers are the same up to float rounding; checkpoints load either way (optimizer states are re-laid
            to their parameters': :func:`match_param_layout`). Default: False.

    Subclasses define ``image_shape``, call :meth:`check_batch`, :meth:`guard_finite`,
    :meth:`skip_unless` (or, in manual optimisation, :meth:`step_unless`: the step itself) and :meth:`log_train` in
    their steps, and build optimizers with :meth:`build_optimizer`. In manual optimisation, :meth:`manual_backward`
    and :meth:`step_unless` go straight to torch when nothing in Lightning's path would act (:meth:`direct_steps`).
    """

    #: batch keys the model consumes (see docs/interfaces.md)
    required_keys: tuple[str, ...] = ("image",)

    def __init__(self, finite_check_every_n_steps: int | None = None, sample_seed: int = 0,
                 log_every_n_steps: int | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)
        for name, value in (("finite_check_every_n_steps", finite_check_every_n_steps),
                            ("log_every_n_steps", log_every_n_steps)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 (or null for auto), got {value}")
        self._check_every = None if finite_check_every_n_steps is None else int(finite_check_every_n_steps)
        self._log_every = None if log_every_n_steps is None else int(log_every_n_steps)
        # key -> [device sum, count] of training scalars since the last log
        self._running: dict[str, list] = {}
        #: the training scalars last logged (means since the previous log), as numbers: what the progress bar shows
        self.progress_values: dict[str, float] = {}
        # (buffer snapshot, device "all finite") of the current batch, applied in on_train_batch_end
        self._restore: tuple[list, torch.Tensor] | None = None
        self.sample_seed = int(sample_seed)
        # the loss names of one guard_finite call -> its losses since the last host check (device rings, not saved)
        self._loss_records: dict[tuple[str, ...], LossRecord] = {}
        # (step, name, value) of the first non-finite loss a host check found
        self._first_nonfinite: tuple[int, str, float] | None = None
        self._batches_seen = 0
        # modules' ids -> their buffers, flattened (snapshot_buffers); cleared by _apply
        self._buffer_lists: dict[tuple[int, ...], FlatBuffers] = {}
        # device -> a scalar 1.0 (the unscale factor of guard_finite's check)
        self._unit: dict[torch.device, torch.Tensor] = {}
        # (ids of the trainer's optimizers, the auto value of finite_check_every_n_steps)
        self._check_every_auto: tuple[tuple[int, ...], int] | None = None
        self._val_rng: torch.Generator | None = None
        # (trainer, whether manual optimisation may bypass its strategy: direct_steps)
        self._direct: tuple[Any, bool] | None = None
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
        """Fail early if the trainer's datamodule disagrees with the model (shape, keys); put the weights in
        channels-last layout when asked (before the optimizers are made, so their states follow)."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
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

    def restore_buffers_unless_finite(self) -> None:
        """Put back the buffers snapshotted in this batch if any guarded loss was non-finite (device-side). Runs
        once the batch's backward passes are done: at the end of a manual-optimisation ``training_step``, after
        ``optimizer_step`` in automatic optimisation, and before a failed host check raises."""
        if self._restore is None:
            return
        snapshot, ok = self._restore
        self._restore = None
        snapshot.restore_unless(ok)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.restore_buffers_unless_finite()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.restore_buffers_unless_finite()  # a model that did not restore in its step

    def snapshot_buffers(self, *modules: nn.Module) -> BufferSnapshot:
        """A :class:`BufferSnapshot` of every buffer of ``modules`` (BatchNorm running statistics, spectral-norm
        vectors, an EMA codebook), taken before a training forward pass changes them; give it to
        :meth:`guard_finite` so a forward pass that produced a non-finite loss leaves them as they were."""
        # the buffers are walked and flattened once per set of modules (a module tree walk every step costs more
        # host time than the snapshot itself); _apply (.to(), .half(), ...) replaces buffers and clears the cache
        key = tuple(id(m) for m in modules)
        flat = self._buffer_lists.get(key)
        if flat is None or not flat.intact():
            seen: set[int] = set()
            buffers = []
            for module in modules:
                for buf in module.buffers():
                    if id(buf) not in seen:
                        seen.add(id(buf))
                        buffers.append(buf)
            flat = self._buffer_lists[key] = FlatBuffers(buffers)
        return BufferSnapshot(flat)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> GenerativeModule:
        if getattr(self, "_buffer_lists", None):
            self._buffer_lists.clear()
        return super()._apply(fn, *args, **kwargs)

    @property
    def finite_check_every_n_steps(self) -> int:
        """Batches between host-side non-finite checks (see the class docstring)."""
        if self._check_every is not None:
            return self._check_every
        optimizers = self._all_optimizers()
        ids = tuple(id(o) for o in optimizers)
        if self._check_every_auto is None or self._check_every_auto[0] != ids:
            # per step this would walk every optimizer's param groups; it changes only with the optimizers (a
            # resumed state is loaded into them before the first step)
            self._check_every_auto = (ids, 100 if optimizers and all(skips_on_device(o) for o in optimizers) else 1)
        return self._check_every_auto[1]

    def _all_optimizers(self) -> list:
        if self._trainer is None:
            return []
        opts = self.trainer.optimizers
        return list(opts) if opts else []

    def guard_finite(self, snapshot: BufferSnapshot | None = None, **losses: torch.Tensor) -> torch.Tensor:
        """Record non-finite ``losses`` (name -> scalar tensor) without a host sync and return ``ok``, a
        device boolean (all finite); every ``finite_check_every_n_steps`` batches (every call when 1) check
        on the host and raise.

        ``snapshot`` (from :meth:`snapshot_buffers`): when any of ``losses`` is non-finite, those buffers are
        put back to their snapshot values on the device (``torch.where``, no host sync) at the end of the
        batch (after every backward pass of the step), so NaN running statistics from the bad forward pass
        never stay in the model, in memory or in a checkpoint.
        """
        names = tuple(losses)
        every = self.finite_check_every_n_steps
        device = next(iter(losses.values())).device
        rec = self._loss_records.get(names)
        if rec is None or len(rec.steps) != every or rec.values.device != device:
            if rec is not None and rec.pending:
                self.assert_finite()  # what the old record holds is checked before it is replaced
            rec = self._loss_records[names] = LossRecord(names, every, device)
        # all the losses stacked straight into the record's next row: a fixed handful of kernel launches per call,
        # however many losses (each launch costs ~10 us of host time, which on a GPU is more than a small model's
        # step can spare). The check is the one GradScaler uses on gradients (one kernel: it sets a float flag to 1
        # when any value is non-finite; the scale 1 leaves the values as they are); the flag is what a fused
        # optimizer's step reads (skip_unless) and ok its negation: four kernel launches a call (stack, the flag's
        # zero, the check, ok), where torch.isfinite(...).all() and a float copy of its negation take six
        with torch.no_grad():
            vals = torch.stack([(v.detach().reshape(()) if v.numel() == 1 else v.detach().sum()).float()
                                for v in losses.values()], out=rec.next_row(self.global_step))
            found = vals.new_zeros(())
            unit = self._unit.get(vals.device)
            if unit is None:
                unit = self._unit[vals.device] = torch.ones((), device=vals.device)
            torch._amp_foreach_non_finite_check_and_unscale_([vals], found, unit)
            ok = found.eq(0)
        ok._mmexp_found_inf = found  # read by skip_unless (found_inf_of)
        if snapshot:
            # restored after the batch's backward passes (spectral-norm vectors are part of the graph)
            pending = self._restore
            self._restore = (snapshot, ok if pending is None else pending[1] & ok)
        # every `every` batches; sooner when a model guards the same losses more than once a batch
        if self._batches_seen % every == 0 or rec.full:
            self.assert_finite()
        return ok

    @staticmethod
    def skip_unless(optimizer: Any, ok: torch.Tensor) -> None:
        """Make ``optimizer``'s next ``step`` a no-op on the device unless ``ok`` (optimizers that take
        ``found_inf``: fused Adam/AdamW/SGD). Others are left alone: with them the guard checks every step."""
        opt = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer wraps the torch optimizer
        if skips_on_device(opt):
            opt.grad_scale = None
            opt.found_inf = found_inf_of(ok)

    def step_unless(self, optimizer: Any, ok: torch.Tensor) -> None:
        """Manual optimisation: ``optimizer.step()`` that is a no-op on the device unless ``ok`` (:meth:`skip_unless`).

        Lightning's ``LightningOptimizer.step`` runs the optimizer through the strategy and the precision plugin
        (a closure, the ``on_before_optimizer_step`` hooks, gradient clipping, which manual optimisation leaves to
        the module): ~180 Python calls a step, host time that a GPU step spends waiting. When none of that can
        change the update (:meth:`direct_steps`), the torch optimizer steps directly, between the two calls by
        which Lightning's loop counts the step (``global_step``, the profiler's ``optimizer_step``); the update is
        the same."""
        self.skip_unless(optimizer, ok)
        if self.direct_steps() and hasattr(optimizer, "_on_before_step") and hasattr(optimizer, "optimizer"):
            optimizer._on_before_step()
            optimizer.optimizer.step()
            optimizer._on_after_step()
        else:
            optimizer.step()

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` directly when Lightning's way there (the strategy's and the precision plugin's
        ``backward`` and the ``on_before_backward`` / ``on_after_backward`` hooks, ~240 Python calls) would add
        nothing (:meth:`direct_steps`); else Lightning's :meth:`~lightning.pytorch.LightningModule.manual_backward`."""
        if self.direct_steps():
            loss.backward(*args, **kwargs)
        else:
            super().manual_backward(loss, *args, **kwargs)

    def direct_steps(self) -> bool:
        """Whether :meth:`manual_backward` and :meth:`step_unless` may skip Lightning's strategy and precision
        plugin: a fit on one device (``SingleDeviceStrategy``: no DDP gradient hooks to prepare), in a precision
        that neither scales losses nor changes the step (32, 64 or 16/bf16 without a ``GradScaler``), and no
        callback or module method that Lightning would call on the way (``on_before_backward``,
        ``on_after_backward``, ``on_before_optimizer_step``, ``backward``). Decided once per trainer."""
        trainer = self._trainer
        if trainer is None:
            return False
        cached = self._direct
        if cached is not None and cached[0] is trainer:
            return cached[1]
        from lightning.pytorch.callbacks import Callback
        from lightning.pytorch.plugins.precision import MixedPrecision, Precision
        from lightning.pytorch.strategies import SingleDeviceStrategy

        strategy = trainer.strategy
        plugin = strategy.precision_plugin
        plain = all(
            getattr(type(plugin), name) is getattr(Precision, name)
            or (isinstance(plugin, MixedPrecision) and plugin.scaler is None
                and getattr(type(plugin), name) is getattr(MixedPrecision, name))
            for name in ("pre_backward", "backward", "post_backward", "optimizer_step", "_wrap_closure",
                         "_after_closure"))
        hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
        listened = any(getattr(type(cb), h, None) is not getattr(Callback, h) for cb in trainer.callbacks for h in hooks)
        listened |= any(getattr(type(self), h) is not getattr(L.LightningModule, h) for h in (*hooks, "backward"))
        direct = (type(strategy) is SingleDeviceStrategy and plain and not listened and not self.automatic_optimization
                  and getattr(self, "_fabric", None) is None)
        self._direct = (trainer, direct)
        return direct

    def skip_updates_unless(self, ok: torch.Tensor) -> None:
        """Automatic optimisation: called in ``training_step`` (inside Lightning's optimizer closure, before
        the update), makes every optimizer skip this step's update on the device unless ``ok``."""
        if self._trainer is None:
            return
        optimizers = self.optimizers()
        for opt in optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]:
            self.skip_unless(opt, ok)

    def log_train(self, values: dict[str, torch.Tensor]) -> None:
        """Training scalars: summed on the device (no host sync) and logged as their means since the last
        log, every ``log_every_n_steps`` batches, with one host transfer for all of them."""
        # one vector per set of keys (a D-only batch logs fewer than a D+G one): two kernel launches a call
        keys = tuple(values)
        with torch.no_grad():
            # scalars (0-dim float32: what the models log) stack as they are, without per-value Python calls
            try:
                vec = torch.stack(list(values.values()))
            except RuntimeError:  # values of different shapes (a [1] beside 0-dim ones)
                vec = None
            if vec is None or vec.shape != (len(keys),) or vec.dtype != torch.float32:
                vec = torch.stack([v.detach().reshape(()).float() for v in values.values()])
        entry = self._running.get(keys)
        if entry is None:
            self._running[keys] = [vec, 1]
        else:
            entry[0] += vec
            entry[1] += 1
        if self._trainer is not None and self._should_log_now():
            self._flush_train_logs(on_step=True)

    def _flush_train_logs(self, on_step: bool) -> None:
        if not self._running:
            return
        groups = list(self._running.items())
        self._running.clear()
        sums = torch.cat([vec for _, (vec, _) in groups]).cpu().tolist()  # the one host transfer
        total: dict[str, list[float]] = {}
        i = 0
        for keys, (_, count) in groups:
            for key in keys:
                acc = total.setdefault(key, [0.0, 0])
                acc[0] += sums[i]
                acc[1] += count
                i += 1
        # CPU tensors, not floats (Lightning would make a float a tensor on the module's device), and not on the
        # progress bar: after *every* batch Lightning turns each progress-bar value into a number with .item(),
        # which for a GPU tensor is a device sync per step (the host then waits for the GPU instead of queuing the
        # next step's work). mmexp.callbacks.ProgressBar shows these numbers instead.
        self.progress_values = {k: v / n for k, (v, n) in total.items()}
        means = dict(zip(total, torch.tensor(list(self.progress_values.values()), dtype=torch.float32).unbind()))
        if not on_step or self._trainer is None:  # the epoch's means; or a module outside a Trainer: no loggers
            self.log_dict(means, on_step=on_step, on_epoch=not on_step, prog_bar=False)
            return
        # On a step, straight to where Lightning's self.log would put them: the loggers, at the step and with the epoch
        # Lightning gives on-step logs (its logger connector's log_metrics, which also keeps them as logged metrics),
        # and the trainer's callback metrics (monitors, metrics.json). Going through self.log costs ~2,000 Python
        # calls per key in Lightning's result collection (benchmarks/README.md): host time a GPU step cannot spare.
        self.trainer.callback_metrics.update(means)
        self.trainer._logger_connector.log_metrics(means)

    def _should_log_now(self) -> bool:
        trainer = self.trainer
        if trainer.fast_dev_run:
            return True
        every = self._log_every or trainer.log_every_n_steps
        if not every:
            return False
        batches = trainer.fit_loop.epoch_loop._batches_that_stepped + 1  # as Lightning decides when to write logs
        return batches % every == 0 or trainer.should_stop

    def assert_finite(self) -> None:
        """Raise NonFiniteLossError if any guarded loss has been non-finite (host sync)."""
        bad = [found for rec in self._loss_records.values() if (found := rec.first_nonfinite()) is not None]
        # sticky: once found, every later check raises too (a checkpoint write after the error must still refuse)
        if self._first_nonfinite is not None:
            bad.append(self._first_nonfinite)
        if bad:
            self._first_nonfinite = min(bad)
        for step, name, value in sorted(bad)[:1]:  # the first loss that went bad
            self.restore_buffers_unless_finite()  # the step stops here: no backward will need them
            n = self.finite_check_every_n_steps
            optimizers = self._all_optimizers()
            if n == 1 or (optimizers and all(skips_on_device(o) for o in optimizers)):
                consequence = ("no optimizer update used it (it was checked before backward, or skipped on the "
                               "device), and buffers changed by that forward pass were restored, so the weights "
                               "in memory and the last checkpoint are from the last good step")
            else:
                consequence = (f"non-finite checks run every {n} steps and this optimizer cannot skip an update "
                               f"on the device, so the weights in memory were updated with it after step {step} "
                               "and will not be saved; resume from the last checkpoint")
            raise NonFiniteLossError(
                f"loss {name!r} became non-finite ({float(value)}) at step {step}; {consequence}. "
                "Try a lower learning rate, gradient clipping or a different loss.")

    def on_train_epoch_end(self) -> None:
        self.assert_finite()
        # what was summed since the last log (a run shorter than log_every_n_steps still reports its losses)
        self._flush_train_logs(on_step=False)

    # ------------------------------------------------------------------ optimizers and noise
    @staticmethod
    def build_optimizer(optimizer: Callable[..., torch.optim.Optimizer], params: Iterable,
                        scheduler: Callable[..., Any] | None = None
                        ) -> tuple[torch.optim.Optimizer, Any]:
        """``optimizer(params=...)`` from a Hydra partial; ``scheduler(optimizer=...)`` if given.
        Parameters with ``requires_grad=False`` (e.g. an EMA codebook) are left out."""
        opt = optimizer(params=[p for p in params if p.requires_grad])
        opt.register_load_state_dict_post_hook(match_param_layout)
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
