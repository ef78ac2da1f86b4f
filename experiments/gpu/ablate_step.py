"""Where mmexp's GAN step loses time against the Lightning floor, by ablation in one process: the module as is, then
with one of its per-step parts switched off (monkeypatched, for measurement only), beside benchmarks/bench_gan.py's
Lightning floor and plain loop, all alternating. A part whose removal closes the gap is where the time goes.

    python experiments/gpu/ablate_step.py --device cuda --batch-size 128 --image-size 64 --base-channels 64
    python experiments/gpu/ablate_step.py --device cpu --batch-size 2 --base-channels 4 --latent-dim 16 --threads 1
    # instead of timing, Python-level calls per iteration (cProfile over the timed iterations; exact on any machine)
    python experiments/gpu/ablate_step.py --calls --device cpu --batch-size 2 --base-channels 4 --latent-dim 16 \
        --threads 1 --steps 200 --warmup 20 --window 1
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_gan as B  # noqa: E402

from mmexp.models.base import GenerativeModule  # noqa: E402


class CallCounter:
    """cProfile over the timed iterations (switched on by the contestant's ``active``, as bench_gan's counters are):
    how many Python-level calls they made."""

    def __init__(self) -> None:
        self.prof, self.on = cProfile.Profile(), False

    @property
    def active(self) -> bool:
        return self.on

    @active.setter
    def active(self, on: bool) -> None:
        if on and not self.on:
            self.prof.enable()
            self.on = True

    def __enter__(self) -> CallCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:  # called by bench_gan's Timer at the end of the timed iterations
        if self.on:
            self.prof.disable()
            self.on = False

    def calls(self) -> int:
        return sum(v[1] for v in pstats.Stats(self.prof).stats.values())


@contextlib.contextmanager
def patched(**attrs):
    old = {k: GenerativeModule.__dict__[k] for k in attrs}
    for k, v in attrs.items():
        setattr(GenerativeModule, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(GenerativeModule, k, v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--steps", 150), ("--warmup", 25), ("--batch-size", 64), ("--image-size", 32),
                          ("--channels", 3), ("--base-channels", 32), ("--latent-dim", 100), ("--repeats", 3),
                          ("--threads", 0), ("--window", 25)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--calls", action="store_true", help="count Python-level calls per iteration instead of timing")
    args = p.parse_args()
    args.channels_last = False
    if args.threads:
        torch.set_num_threads(args.threads)
    data = B.Batches(args.warmup + args.steps, args.batch_size, args.channels, args.image_size)
    true = {}

    def ok(self, snapshot=None, **losses):
        dev = next(iter(losses.values())).device
        return true.setdefault(dev, torch.ones((), dtype=torch.bool, device=dev))

    variants = {
        "as is": {},
        # backward and the optimizer steps through Lightning's strategy and hooks, as before session 16
        "via Lightning's steps": {"direct_steps": lambda self: False},
        "no buffer snapshot": {"snapshot_buffers": lambda self, *m: None},
        "no guard": {"guard_finite": ok, "skip_unless": staticmethod(lambda opt, ok: None)},
        "no log_train": {"log_train": lambda self, values: None},
        "none of them": {"snapshot_buffers": lambda self, *m: None, "guard_finite": ok,
                         "skip_unless": staticmethod(lambda opt, ok: None), "log_train": lambda self, values: None},
    }
    if args.calls:
        counted = {"as is": {}, "via Lightning's steps": variants["via Lightning's steps"],
                   "none of them": variants["none of them"]}
        for name, attrs in counted.items():
            with patched(**attrs), CallCounter() as c:
                B.run_lightning(args, data, counter=c)
            print(f"{name:20s}: {c.calls() / args.steps:8.1f} Python calls per iteration", flush=True)
        with CallCounter() as c:
            B.run_lightning_floor(args, data, counter=c)
        print(f"{'lightning':20s}: {c.calls() / args.steps:8.1f} Python calls per iteration")
        return
    times: dict[str, list[float]] = {k: [] for k in [*variants, "lightning", "plain loop"]}
    for _ in range(args.repeats):
        for name, attrs in variants.items():
            with patched(**attrs):
                times[name] += B.run_lightning(args, data)
        times["lightning"] += B.run_lightning_floor(args, data)
        times["plain loop"] += B.run_plain(args, data)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device={args.device} ({dev}) batch={args.batch_size} size={args.image_size} base_channels="
          f"{args.base_channels} {args.repeats} x {args.steps} iterations, window {args.window}")
    plain = statistics.median(times["plain loop"])
    for name, t in times.items():
        print(f"{name:20s}: {1 / statistics.median(t):8.2f} it/s median, {plain / statistics.median(t):.3f} of the "
              "plain loop")


if __name__ == "__main__":
    main()
