"""Sampling-side ways to a lower FID for a trained default run, without retraining: discriminator rejection sampling
(Azadi et al. 2019, "DRS"), best-of-K by D's logit, the truncation trick (z scaled by psi), and the training G
instead of its EMA. Every sample set is 512 images, one per index of the val protocol, scored as the `val` protocol
scores them (mmexp's Inception features against the 512 val images), so the first line repeats the run's own
`val/fid`.

DRS here is per index and deterministic: index i draws K candidates from its own noise streams
(``GenerativeModule.noise(..., stream=1000 + k)``), D scores them, and the first candidate accepted with probability
``sigmoid(F - gamma)`` is kept (the last one when none is), where ``F = D - M - log(1 - exp(D - M - eps))`` with M
the largest logit seen and gamma a quantile of F (DRS's shift); the acceptance draws come from a fixed generator.

    python experiments/sampling_with_d.py RUN_DIR     # RUN_DIR of `python -m mmexp` (its checkpoints/last.ckpt)
"""
from __future__ import annotations

import os
import sys

import torch
from hydra.utils import instantiate

from mmexp.metrics.frechet import frechet_distance_from_features
from mmexp.metrics.networks import MetricNetworks
from mmexp.pipeline import rebuild

K = 16


def main(run: str) -> None:
    torch.set_num_threads(2)
    # the model and the run config the checkpoint carries (mmexp's own loader: weights only, eval mode)
    model, cfg, _ = rebuild(os.path.join(run, "checkpoints", "last.ckpt"))
    val = instantiate(cfg.data.dataset)("val")  # the run's own dataset config: the split its protocol scores against
    nets = MetricNetworks()

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([nets.features(x[i:i + 128].contiguous(), False)[0].double()
                              for i in range(0, len(x), 128)])

    n = 512
    real = features(torch.stack([val[i]["image"] for i in range(n)]))

    def fid(x: torch.Tensor) -> float:
        return frechet_distance_from_features(features(x), real)

    idx = torch.arange(n)
    g, d = model.sampler, model.discriminator
    with torch.inference_mode():
        z = model.noise(idx, model.latent_dim)
        print(f"{'the run (EMA G, psi 1)':44s} FID {fid(g(z).clamp(-1, 1)):6.1f}", flush=True)
        for psi in (0.9, 0.8, 0.7):
            print(f"{f'truncation psi {psi}':44s} FID {fid(g(z * psi).clamp(-1, 1)):6.1f}", flush=True)
        print(f"{'the training G instead of its EMA':44s} FID {fid(model.generator(z).clamp(-1, 1)):6.1f}",
              flush=True)
        cands, logits = [], []
        for k in range(K):
            x = g(model.noise(idx, model.latent_dim, stream=1000 + k)).clamp(-1, 1)
            cands.append(x)
            logits.append(d(x).reshape(-1))
    cand, logit = torch.stack(cands), torch.stack(logits)  # [K, n, C, H, W], [K, n]
    print(f"{'another noise set (stream 1000)':44s} FID {fid(cand[0]):6.1f}", flush=True)
    print(f"{f'best of {K} by D logit':44s} FID {fid(cand[logit.argmax(0), idx]):6.1f}", flush=True)
    m = logit.max()
    f = logit - m - torch.log1p(-torch.exp(logit - m - 1e-6).clamp(max=1 - 1e-7))
    u = torch.rand(K, n, generator=torch.Generator().manual_seed(7))
    for q in (0.5, 0.8, 0.95):
        accept = u < torch.sigmoid(f - torch.quantile(f.flatten(), q))
        first = torch.where(accept.any(0), accept.float().argmax(0), torch.full((n,), K - 1))
        print(f"{f'DRS, gamma at quantile {q} (accepts {accept.float().mean():.2f})':44s} FID "
              f"{fid(cand[first, idx]):6.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
