"""Benchmark: Inception feature extraction and FID, mmexp vs torch-fidelity, same device, same run.

    python benchmarks/bench_metrics.py [--n 256] [--size 64] [--batch-size 64] [--device cpu|cuda]

Both use the same weights (the offline FID Inception; for torch-fidelity a copy with a fixed random fc
layer, which pool3 features do not use) and the same real-photo crops; nothing is cached across the two.
Prints images/s of feature extraction, total FID time, the ratio and whether the FIDs are equal.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch


def crops(n: int, size: int, which: int, seed: int) -> torch.Tensor:
    import skimage.data as d

    ims = [d.astronaut(), d.coffee(), d.immunohistochemistry()] if which == 0 else [d.chelsea(), d.rocket(), d.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = ims[i % len(ims)]
        y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        out.append(torch.from_numpy(np.ascontiguousarray(im[y : y + size, x : x + size])).permute(2, 0, 1))
    return torch.stack(out)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256, help="images per set (real and fake)")
    ap.add_argument("--size", type=int, default=64, help="crop size (299 = no resize)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from mmexp.metrics import MetricSuite, resolve_inception_weights

    weights = resolve_inception_weights()
    sd = torch.load(weights.path, map_location="cpu", weights_only=True)
    if "fc.weight" not in sd:
        g = torch.Generator().manual_seed(0)
        sd["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.05
        sd["fc.bias"] = torch.zeros(1008)
    tmp = tempfile.NamedTemporaryFile(suffix=".pth", delete=False)
    torch.save(sd, tmp.name)

    real_u8, fake_u8 = crops(args.n, args.size, 0, 1), crops(args.n, args.size, 1, 2)
    real_f, fake_f = real_u8.float() / 127.5 - 1, fake_u8.float() / 127.5 - 1
    print(f"device={device} threads={torch.get_num_threads()} n={args.n} size={args.size} batch={args.batch_size} "
          f"weights={weights.path.name}")

    # ---- torch-fidelity: its extractor, its batching (as calculate_metrics does, no_grad), its FID
    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=tmp.name).to(device)
    tf(torch.zeros(2, 3, 299, 299, dtype=torch.uint8, device=device))  # warm-up
    sync(device)
    t0 = time.perf_counter()
    feats = []
    with torch.no_grad():
        for x in (real_u8, fake_u8):
            feats.append(torch.cat([tf(b.to(device))[0].cpu() for b in x.split(args.batch_size)]))
    sync(device)
    t_tf_ext = time.perf_counter() - t0
    fid_tf = fid_statistics_to_metric(fid_features_to_statistics(feats[1]), fid_features_to_statistics(feats[0]),
                                      False)["frechet_inception_distance"]
    t_tf = time.perf_counter() - t0
    del tf

    # ---- mmexp: MetricSuite from [-1, 1] floats (includes the uint8 conversion)
    suite = MetricSuite(metrics="fid", weights_path=tmp.name, batch_size=args.batch_size)
    suite.update_fake(fake_f[:2].to(device))  # warm-up (loads the network)
    suite.reset()
    sync(device)
    t0 = time.perf_counter()
    for b in real_f.split(args.batch_size):
        suite.update_real(b.to(device))
    for b in fake_f.split(args.batch_size):
        suite.update_fake(b.to(device))
    sync(device)
    t_mm_ext = time.perf_counter() - t0
    fid_mm = suite.compute()["fid"]
    t_mm = time.perf_counter() - t0
    os.unlink(tmp.name)

    n_img = 2 * args.n
    print(f"feature extraction  torch-fidelity {n_img / t_tf_ext:8.1f} img/s   mmexp {n_img / t_mm_ext:8.1f} img/s   "
          f"speed-up x{t_tf_ext / t_mm_ext:.2f}")
    print(f"total FID time      torch-fidelity {t_tf:8.2f} s       mmexp {t_mm:8.2f} s       speed-up x{t_tf / t_mm:.2f}")
    rel = abs(fid_mm - fid_tf) / abs(fid_tf)
    print(f"FID                 torch-fidelity {fid_tf:.6f}   mmexp {fid_mm:.6f}   rel.diff {rel:.2e}   "
          f"equal(<1e-3): {rel < 1e-3}")


if __name__ == "__main__":
    main()
