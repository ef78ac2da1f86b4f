"""Where mmexp's GAN step loses time against the Lightning floor, by ablation in one process: the module as is, then
with one of its per-step parts switched off (monkeypatched, for measurement only), beside benchmarks/bench_gan.py's
Lightning floor and plain loop, all alternating. A part whose removal closes the gap is where the time goes.

    python experiments/gpu/ablate_step.py --device cuda --batch-size 128 --image-size 64 --base-channels 64
    python experiments/gpu/ablate_step.py --device cpu --batch-size 2 --base-channels 4 --latent-dim 16 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_gan as B  # noqa: E402

from mmexp.models.base import GenerativeModule  # noqa: E402


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
        "no buffer snapshot": {"snapshot_buffers": lambda self, *m: None},
        "no guard": {"guard_finite": ok, "skip_unless": staticmethod(lambda opt, ok: None)},
        "no log_train": {"log_train": lambda self, values: None},
        "none of them": {"snapshot_buffers": lambda self, *m: None, "guard_finite": ok,
                         "skip_unless": staticmethod(lambda opt, ok: None), "log_train": lambda self, values: None},
    }
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
