"""Which ops (and CUDA runtime calls) mmexp's GAN step spends more host time on than the Lightning floor and the
plain loop: ``torch.profiler`` over the timed iterations of each (benchmarks/bench_gan.py's contestants), then one
table of calls and self CPU time per iteration, op by op, sorted by mmexp's excess over the floor. On a GPU the
``cudaLaunchKernel`` row counts kernel launches, including those that one ATen op makes internally (a foreach op's
slow route), which ``bench_gan.py --count`` cannot see.

    python experiments/gpu/opdiff.py --device cuda --batch-size 128 --image-size 64 --base-channels 64
    python experiments/gpu/opdiff.py --device cpu --batch-size 2 --base-channels 4 --latent-dim 16 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_gan as B  # noqa: E402


class OpTable(B.StepProfile):
    """:class:`bench_gan.StepProfile` that keeps ``{op: (calls, self CPU us, self device us)}`` per iteration."""

    def stop(self) -> None:
        if self.prof is None or self.wall:
            return
        self._sync()
        self.wall = B.time.perf_counter() - self.t0
        self.prof.stop()
        self.table = {e.key: (e.count / self.steps, e.self_cpu_time_total / self.steps,
                              getattr(e, "self_device_time_total", 0.0) / self.steps)
                      for e in self.prof.key_averages()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--steps", 30), ("--warmup", 25), ("--batch-size", 64), ("--image-size", 32),
                          ("--channels", 3), ("--base-channels", 32), ("--latent-dim", 100), ("--threads", 0),
                          ("--rows", 30)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.channels_last, args.window = False, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    data = B.Batches(args.warmup + args.steps, args.batch_size, args.channels, args.image_size)
    tables, walls = {}, {}
    for name, run in (("mmexp", B.run_lightning), ("floor", B.run_lightning_floor), ("plain", B.run_plain)):
        with OpTable(name, args.device, args.steps) as prof:
            run(args, data, counter=prof)
        tables[name], walls[name] = prof.table, 1e3 * prof.wall / args.steps
    print(f"device={args.device} batch={args.batch_size} size={args.image_size} base_channels={args.base_channels}, "
          f"{args.steps} iterations under the profiler: ms/iteration " +
          ", ".join(f"{k} {v:.3f}" for k, v in walls.items()))
    for name, t in tables.items():
        launches = t.get("cudaLaunchKernel", (0, 0, 0))[0]
        print(f"{name:6s}: {sum(v[1] for v in t.values()) / 1e3:7.3f} ms self CPU per iteration (all events), "
              f"{launches:.1f} cudaLaunchKernel")
    zero = (0.0, 0.0, 0.0)
    keys = sorted(set(tables["mmexp"]) | set(tables["floor"]),
                  key=lambda k: -(tables["mmexp"].get(k, zero)[1] - tables["floor"].get(k, zero)[1]))
    print(f"{'op':50s} {'calls: mmexp':>12s} {'floor':>6s} {'plain':>6s}   {'self CPU us: mmexp':>18s} "
          f"{'floor':>7s} {'plain':>7s}")
    for k in keys[:args.rows]:
        m, f, pl = (tables[n].get(k, zero) for n in ("mmexp", "floor", "plain"))
        print(f"{k[:50]:50s} {m[0]:12.1f} {f[0]:6.1f} {pl[0]:6.1f}   {m[1]:18.1f} {f[1]:7.1f} {pl[1]:7.1f}")


if __name__ == "__main__":
    main()
