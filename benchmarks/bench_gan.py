"""Throughput of the GAN LightningModule under ``lightning.Trainer`` vs a plain PyTorch loop.

Four contestants in one process: the module under a bare Trainer (no logger, no progress bar), the module
as ``python -m mmexp`` runs it ("user": progress bar + CSV logger, logging every ``log_every_n_steps``), the
plain loop's step as a bare LightningModule under the same bare Trainer ("lightning": what Lightning itself
costs, the floor for mmexp's module), and a plain loop. All run the same DCGAN networks (same init), batch,
optimizers (fused Adam 2e-4, betas 0.5/0.999, the framework's default) and loss (non-saturating BCE), one D and one G update per batch (n_disc=1),
on the same in-memory pre-batched data. Warm-up iterations are excluded; each side runs
``--repeats`` times alternately and every iteration is timed (from one batch start to the
next, so loop overhead counts; with ``--window K``, every K iterations, synchronising a GPU only
there, as training does); the reported rate is 1 / median iteration time, which is robust
to other jobs on a shared machine (the mean is printed too). An iteration = one batch =
one D step + one G step (two Lightning ``global_step``s).

    python benchmarks/bench_gan.py --steps 50 --batch-size 64 --image-size 32 --device cpu
    # host-bound, as a small model's step is on a GPU: tiny nets, one thread, so per-step host time is all there is
    python benchmarks/bench_gan.py --device cpu --batch-size 2 --base-channels 4 --latent-dim 16 --threads 1 \
        --steps 300 --warmup 30
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time

import lightning as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset

from mmexp.losses import LossSet
from mmexp.losses.adversarial import NonSaturatingLoss
from mmexp.models import GAN
from mmexp.networks import DCGANDiscriminator, DCGANGenerator


class Batches(Dataset):
    """Pre-made dict batches (so collation costs nothing and is identical for both sides)."""

    def __init__(self, n: int, batch_size: int, channels: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, batch_size, channels, size, size, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": torch.full((self.images.shape[1],), i)}


def networks(args):
    torch.manual_seed(0)
    g = DCGANGenerator(args.latent_dim, args.channels, args.image_size, args.base_channels)
    d = DCGANDiscriminator(args.channels, args.image_size, args.base_channels)
    if args.channels_last:  # every contestant: mmexp's module would convert its own in setup()
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    return g, d


def adam():
    return functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999), fused=True)


#: ATen ops that launch no kernel (views, detach, metadata): left out of the counts
VIEW_OPS = ("aten.detach", "aten.view", "aten._unsafe_view", "aten.t.", "aten.alias", "aten.split", "aten.unbind",
            "aten.select", "aten.expand", "aten.as_strided", "aten.slice", "aten.squeeze", "aten.unsqueeze",
            "aten.reshape", "aten.permute", "aten.lift_fresh")


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that do work (on a GPU each is a kernel launch, host time a small step cannot spare)
    and the reads of a tensor's value into Python (``aten._local_scalar_dense``: ``.item()``, ``float(t)``,
    ``bool(t)``; on a GPU each one waits for the device). A ``.cpu()`` of a GPU tensor (a sync too) counts as an op
    there (``aten._to_copy``); on a CPU run it is nothing, and ``.tolist()`` of a CPU tensor is not seen at all."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.reads = 0
        self.active = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active:
            name = str(func)
            if name.startswith("aten._local_scalar_dense"):
                self.reads += 1
            elif not name.startswith(VIEW_OPS):
                self.ops += 1
        return func(*args, **(kwargs or {}))


class StepProfile:
    """``torch.profiler`` over the timed iterations only (it starts when the contestant sets ``active``, as for
    :class:`OpCounter`): where an iteration's host and device time go. Prints the wall time per iteration, the
    profiler's table of the ops with the most self device time (self CPU time on a CPU run) and its totals."""

    def __init__(self, name: str, device: str, steps: int, rows: int = 12) -> None:
        self.name, self.device, self.steps, self.rows = name, torch.device(device), steps, rows
        self.prof: torch.profiler.profile | None = None
        self.t0 = self.wall = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def active(self) -> bool:
        return self.prof is not None

    @active.setter
    def active(self, on: bool) -> None:
        if on and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self._sync()
            self.prof.start()
            self.t0 = time.perf_counter()

    def __enter__(self) -> StepProfile:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.prof is None or self.wall:
            return
        self._sync()
        self.wall = time.perf_counter() - self.t0
        self.prof.stop()
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        print(f"### {self.name}: {1000 * self.wall / self.steps:.3f} ms per iteration under the profiler "
              f"({self.steps} iterations; divide the totals below by it)")
        print(self.prof.key_averages().table(sort_by=key, row_limit=self.rows, max_name_column_width=60))


class Timer(L.Callback):
    """Timestamps at the start of every ``window``-th batch and at the end of the last one (a CUDA device is
    synchronised at each stamp only, so with ``window`` > 1 the host may run ahead of the GPU in between, as in a
    real run)."""

    def __init__(self, window: int = 1, counter: OpCounter | None = None, warmup: int = 0) -> None:
        self.stamps: list[float] = []
        self.window = window
        self.counter, self.warmup = counter, warmup

    def _now(self, module) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx % self.window == 0:
            self.stamps.append(self._now(module))
        if self.counter is not None:
            self.counter.active = batch_idx >= self.warmup  # whole iterations: batch start to batch start

    def on_train_end(self, trainer, module):
        self.stamps.append(self._now(module))
        stop = getattr(self.counter, "stop", None)
        if stop is not None:
            stop()  # a profiler's timed iterations end here, not with the trainer's teardown


def timed(stamps: list[float], warmup: int, window: int = 1) -> list[float]:
    """Per-iteration seconds after the warm-up (``warmup`` a multiple of ``window``), one value per window."""
    first = warmup // window
    return [(b - a) / window for a, b in zip(stamps[first:], stamps[first + 1:])]


def user_progress_bar():
    """The ``callbacks.progress_bar`` node of mmexp's default config (None when it has none)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="mmexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["logger=none", "metrics=none"])
    return cfg.callbacks.get("progress_bar")


def run_lightning(args, data, user: bool = False, counter: OpCounter | None = None) -> list[float]:
    """``user``: with the progress bar and a CSV logger, as ``python -m mmexp`` runs."""
    import tempfile

    from lightning.pytorch.loggers import CSVLogger

    from hydra.utils import instantiate

    g, d = networks(args)
    # the progress bar python -m mmexp uses (conf/callbacks/default.yaml), else Lightning's default
    bar = user_progress_bar() if user else None
    model = GAN(g, d, LossSet({"adversarial": NonSaturatingLoss()}), adam(), adam(), n_disc=1,
                # only when asked: the "before" code of experiments/gpu/bench_step_overhead.sh has no such argument
                **({"channels_last": True} if args.channels_last else {}))
    timer = Timer(args.window, counter, args.warmup)
    with tempfile.TemporaryDirectory() as tmp, counter or contextlib.nullcontext():
        trainer = L.Trainer(max_steps=2 * (args.warmup + args.steps), accelerator=args.device,
                            devices=1, logger=CSVLogger(tmp) if user else False, enable_checkpointing=False,
                            enable_progress_bar=user, enable_model_summary=False, log_every_n_steps=25,
                            num_sanity_val_steps=0, limit_val_batches=0,
                            callbacks=[timer] + ([instantiate(bar)] if bar is not None else []))
        trainer.fit(model, DataLoader(data, batch_size=None, shuffle=False))
    return timed(timer.stamps, args.warmup, args.window)


class PlainStep(L.LightningModule):
    """The plain loop's step as a bare LightningModule (manual optimisation, nothing else): what Lightning itself
    costs, the floor for mmexp's module under the same Trainer."""

    def __init__(self, g, d, latent_dim: int) -> None:
        super().__init__()
        self.g, self.d, self.latent_dim = g, d, latent_dim
        self.loss = NonSaturatingLoss()
        self.automatic_optimization = False

    def configure_optimizers(self):
        return [adam()(params=self.d.parameters()), adam()(params=self.g.parameters())]

    def training_step(self, batch, batch_idx):
        opt_d, opt_g = self.optimizers()
        real = batch["image"]
        b = real.shape[0]
        with torch.no_grad():
            fake = self.g(torch.randn(b, self.latent_dim, device=real.device))
        d_loss = self.loss.d_loss(self.d(real), self.d(fake))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.d.requires_grad_(False)
        g_loss = self.loss(self.d(self.g(torch.randn(b, self.latent_dim, device=real.device))))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.d.requires_grad_(True)


def run_lightning_floor(args, data, counter: OpCounter | None = None) -> list[float]:
    """:class:`PlainStep` under a bare Trainer (as "mmexp bare")."""
    g, d = networks(args)
    timer = Timer(args.window, counter, args.warmup)
    trainer = L.Trainer(max_steps=2 * (args.warmup + args.steps), accelerator=args.device, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    with counter or contextlib.nullcontext():
        trainer.fit(PlainStep(g, d, args.latent_dim), DataLoader(data, batch_size=None, shuffle=False))
    return timed(timer.stamps, args.warmup, args.window)


def run_plain(args, data, counter: OpCounter | None = None) -> float:
    dev = torch.device(args.device)
    g, d = networks(args)
    g, d = g.to(dev).train(), d.to(dev).train()
    opt_g, opt_d = adam()(params=g.parameters()), adam()(params=d.parameters())
    loss = NonSaturatingLoss()
    stamps = []
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    loop = enumerate(DataLoader(data, batch_size=None, shuffle=False))
    with counter or contextlib.nullcontext():
        plain_loop(args, dev, loop, g, d, opt_g, opt_d, loss, stamps, sync, counter)
    sync()
    stamps.append(time.perf_counter())
    return timed(stamps, args.warmup, args.window)


def plain_loop(args, dev, loop, g, d, opt_g, opt_d, loss, stamps, sync, counter) -> None:
    for i, batch in loop:
        if counter is not None:
            counter.active = i >= args.warmup
        if i % args.window == 0:
            sync()
            stamps.append(time.perf_counter())
        real = batch["image"].to(dev)
        b = real.shape[0]
        with torch.no_grad():
            fake = g(torch.randn(b, args.latent_dim, device=dev))
        d_loss = loss.d_loss(d(real), d(fake))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        d.requires_grad_(False)
        g_loss = loss(d(g(torch.randn(b, args.latent_dim, device=dev))))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d.requires_grad_(True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="timed iterations (batches)")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32, choices=(28, 32, 64))
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--latent-dim", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--window", type=int, default=1,
                   help="iterations per timing window: 1 synchronises a GPU every iteration (host overhead fully "
                        "exposed); more lets the host queue work ahead between stamps, as training does")
    p.add_argument("--channels-last", action="store_true",
                   help="convolution weights in channels-last layout, in every contestant (model.channels_last, on "
                        "in model=dcgan/sngan)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: torch.profiler over the timed iterations of mmexp's module, the "
                        "Lightning floor and the plain loop (self device time per op, or self CPU time on a CPU)")
    p.add_argument("--count", action="store_true",
                   help="instead of timing: count per iteration the ATen ops that do work (kernel launches on a GPU) "
                        "and the reads of tensor values into Python (device syncs on a GPU), in one run of each")
    args = p.parse_args()
    if args.warmup % args.window or args.steps % args.window:
        p.error(f"--warmup ({args.warmup}) and --steps ({args.steps}) must be multiples of --window ({args.window})")
    data = Batches(args.warmup + args.steps, args.batch_size, args.channels, args.image_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        # the last iteration stamp of a Lightning contestant is its on_train_end: profile to there
        run_lightning(args, data, counter=StepProfile("mmexp bare", args.device, args.steps))
        run_lightning_floor(args, data, counter=StepProfile("lightning", args.device, args.steps))
        run_plain(args, data, counter=StepProfile("plain loop", args.device, args.steps))
        return
    if args.count:
        counts = {"mmexp bare": OpCounter(), "mmexp user": OpCounter(), "lightning": OpCounter(),
                  "plain loop": OpCounter()}
        run_lightning(args, data, counter=counts["mmexp bare"])
        run_lightning(args, data, user=True, counter=counts["mmexp user"])
        run_lightning_floor(args, data, counter=counts["lightning"])
        run_plain(args, data, counter=counts["plain loop"])
        print(f"device={args.device} batch={args.batch_size} size={args.image_size} base_channels="
              f"{args.base_channels}: per iteration over {args.steps} iterations (after {args.warmup} warm-up)")
        for key, c in counts.items():
            print(f"{key:11s}: {c.ops / args.steps:7.2f} ATen ops that do work, {c.reads / args.steps:5.2f} "
                  f"reads into Python")
        return
    times: dict[str, list[float]] = {"mmexp bare": [], "mmexp user": [], "lightning": [], "plain loop": []}
    for _ in range(args.repeats):  # alternate, so slow phases of a shared machine hit all of them
        times["mmexp bare"] += run_lightning(args, data)
        times["mmexp user"] += run_lightning(args, data, user=True)
        times["lightning"] += run_lightning_floor(args, data)
        times["plain loop"] += run_plain(args, data)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device={args.device} ({name}) threads={torch.get_num_threads()} batch={args.batch_size} "
          f"size={args.image_size} base_channels={args.base_channels} channels_last={args.channels_last} "
          f"{args.repeats} x {args.steps} timed iterations (+{args.warmup} warm-up each), window {args.window}")
    for key, t in times.items():
        print(f"{key:11s}: {1 / statistics.median(t):8.2f} it/s median, {len(t) / sum(t):8.2f} it/s mean, "
              f"{args.batch_size / statistics.median(t):9.1f} img/s")
    plain = times["plain loop"]
    for key in ("mmexp bare", "mmexp user", "lightning"):
        t = times[key]
        goal = "  (goal >= 0.95)" if key.startswith("mmexp") else "  (Lightning's own cost: the floor for mmexp)"
        print(f"ratio {key}/plain: medians {statistics.median(plain) / statistics.median(t):.3f}, "
              f"means {sum(plain) / sum(t):.3f}{goal}")


if __name__ == "__main__":
    main()
