"""One training iteration of the default run's networks in a plain PyTorch loop: NCHW vs channels-last weights
(``model.channels_last``, on in ``model=dcgan``/``sngan``), optionally bf16 autocast on top.

The networks are the default's (``model=sngan``): DCGAN generator with nearest-neighbour upsampling, DCGAN
discriminator with spectral norm; hinge loss, fused Adam(5e-4, betas 0/0.999), batch 64, 32 px. The variants run
alternately, ``--repeats`` times, in one process; each reports the median iteration time after warm-up and its
ratio to NCHW float32 (lower time is better; a ratio > 1 is a speed-up).

    python benchmarks/bench_memory_format.py --width 16      # the default's width
    python benchmarks/bench_memory_format.py --width 32 --bf16

``--model`` times another family's default networks instead (as its ``conf/model/`` composes them, 3 channels):
one step of L1 reconstruction with fused Adam, ``--batch-size`` images of ``--size`` px in (an SR network's
output is ``upscale`` times larger):

    python benchmarks/bench_memory_format.py --model dncnn --batch-size 8 --size 48
    python benchmarks/bench_memory_format.py --model vqvae --batch-size 32 --size 32
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from mmexp.networks.dcgan import DCGANDiscriminator, DCGANGenerator


def iteration_times(layout: torch.memory_format, bf16: bool, args) -> list[float]:
    torch.manual_seed(0)
    g = DCGANGenerator(100, 3, 32, args.width, upsample="nearest").to(memory_format=layout)
    d = DCGANDiscriminator(3, 32, args.width, spectral_norm=True).to(memory_format=layout)
    opt_g = torch.optim.Adam(g.parameters(), 5e-4, betas=(0.0, 0.999), fused=True)
    opt_d = torch.optim.Adam(d.parameters(), 5e-4, betas=(0.0, 0.999), fused=True)
    real = (torch.rand(args.batch_size, 3, 32, 32) * 2 - 1).contiguous(memory_format=layout)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        with autocast():
            with torch.no_grad():
                fake = g(torch.randn(args.batch_size, 100))
            d_loss = F.relu(1 - d(real)).mean() + F.relu(1 + d(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        d.requires_grad_(False)
        with autocast():
            g_loss = -d(g(torch.randn(args.batch_size, 100))).float().mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d.requires_grad_(True)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def family_networks(model: str) -> torch.nn.Module:
    """``model``'s networks, as ``python -m mmexp model=MODEL`` builds them, as one module ``image -> image``."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="mmexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}", "data.channels=3"])
    if "network" in cfg.model:  # the restoration models
        return instantiate(cfg.model.network)
    if "quantizer" in cfg.model:  # VQ-VAE: encoder -> quantizer -> decoder
        enc, vq, dec = (instantiate(cfg.model[k]) for k in ("encoder", "quantizer", "decoder"))

        class AutoEncoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.enc, self.vq, self.dec = enc, vq, dec

            def forward(self, x):
                return self.dec(self.vq(self.enc(x))[0])
        return AutoEncoder()
    raise SystemExit(f"--model {model}: no restoration network or VQ-VAE in its config")


def reconstruction_times(layout: torch.memory_format, bf16: bool, args) -> list[float]:
    torch.manual_seed(0)
    net = family_networks(args.model).to(memory_format=layout)
    opt = torch.optim.Adam(net.parameters(), 1e-4, fused=True)
    x = (torch.rand(args.batch_size, 3, args.size, args.size) * 2 - 1).contiguous(memory_format=layout)
    scale = getattr(net, "upscale", 1)
    target = torch.rand(args.batch_size, 3, args.size * scale, args.size * scale) * 2 - 1
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        with autocast():
            loss = (net(x).float() - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16, help="base_channels of G and D (the default run: 16)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (CPU) with channels-last weights")
    p.add_argument("--model", default=None, help="time this conf/model/ entry's networks (e.g. dncnn, msrresnet, "
                   "vqvae) instead of the default GAN's")
    p.add_argument("--size", type=int, default=32, help="with --model: the input's side in px")
    args = p.parse_args()
    timer = reconstruction_times if args.model else iteration_times
    variants = {"NCHW float32": (torch.contiguous_format, False), "channels-last float32": (torch.channels_last, False)}
    if args.bf16:
        variants["channels-last bf16 autocast"] = (torch.channels_last, True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # alternate, so slow phases of a shared machine hit every variant
        for key, (layout, bf16) in variants.items():
            times[key] += timer(layout, bf16, args)
    what = (f"model={args.model} batch={args.batch_size} {args.size} px in" if args.model else
            f"width={args.width} batch={args.batch_size} 32 px")
    print(f"threads={torch.get_num_threads()} {what}, {args.repeats} x {args.steps} timed iterations")
    base = statistics.median(times["NCHW float32"])
    for key, t in times.items():
        print(f"{key:28s}: {1000 * statistics.median(t):7.1f} ms / iteration (median), {base / statistics.median(t):.2f}x")


if __name__ == "__main__":
    main()
