"""Generation metrics on Inception features: KID, Inception Score, precision/recall, and
:func:`compare_features`, which scores generated features against real ones with those and FID.

Each reproduces torch-fidelity's definition (same defaults, same numpy RNG for the random subsets and
the IS shuffle), computed in float64 with torch on the features' device. FID is in :mod:`.frechet`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from mmexp.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features

log = logging.getLogger(__name__)

_FRECHET_GRAM_MAX = 2048  # use the (exact) Gram-matrix form of the Fréchet distance up to this many samples


def _mmd2_unbiased_poly(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float | None, coef0: float):
    d = x.shape[1]
    g = 1.0 / d if gamma is None else gamma
    m = x.shape[0]
    k_xx = (x @ x.T * g + coef0) ** degree
    k_yy = (y @ y.T * g + coef0) ** degree
    k_xy = (x @ y.T * g + coef0) ** degree
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_inception_distance(
    fake: torch.Tensor,
    real: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 2020,
) -> tuple[float, float, int]:
    """KID (unbiased MMD^2, cubic polynomial kernel) averaged over random subsets, as torch-fidelity.

    ``fake`` plays torch-fidelity's input1 and ``real`` input2 (the subset draws alternate in that order
    from ``np.random.RandomState(seed)``). ``subset_size`` is reduced to the number of samples when
    there are fewer. Returns ``(mean, std, subset_size_used)``.
    """
    n1, n2 = fake.shape[0], real.shape[0]
    size = min(subset_size, n1, n2)
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n1} fake and {n2} real")
    f1 = fake.to(torch.float64)
    f2 = real.to(device=f1.device, dtype=torch.float64)
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        i1 = torch.from_numpy(rng.choice(n1, size, replace=False)).to(f1.device)
        i2 = torch.from_numpy(rng.choice(n2, size, replace=False)).to(f1.device)
        mmds.append(_mmd2_unbiased_poly(f1[i1], f2[i2], degree, gamma, coef0))
    m = torch.stack(mmds).cpu().numpy()
    return float(np.mean(m)), float(np.std(m)), size


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020, shuffle: bool = True):
    """Inception Score from (unbiased) logits, as torch-fidelity's ``isc_features_to_metric``."""
    n = logits.shape[0]
    if n < splits:
        raise ValueError(f"Inception Score needs at least {splits} samples (one per split), got {n}")
    f = logits
    if shuffle:
        perm = torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(f.device)
        f = f[perm]
    f = f.to(torch.float64)
    p = f.softmax(dim=1)
    log_p = f.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        pc, lpc = p[sl], log_p[sl]
        q = pc.mean(dim=0, keepdim=True)
        scores.append((pc * (lpc - q.log())).sum(dim=1).mean().exp())
    s = torch.stack(scores).cpu().numpy()
    return float(np.mean(s)), float(np.std(s))


def _kth_nn_radius(f: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    out = []
    for chunk in f.split(batch):
        out.append(torch.cdist(chunk, f).kthvalue(k + 1, dim=1).values)  # +1: the point itself
    return torch.cat(out)


def _coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    hits = []
    for chunk in query.split(batch):
        hits.append((torch.cdist(chunk, ref) <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(hits).to(torch.float64).mean()


def precision_recall(fake: torch.Tensor, real: torch.Tensor, k: int = 3, batch: int = 10000):
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls, as torch-fidelity.

    precision: fraction of fake samples inside some real sample's k-NN ball;
    recall: fraction of real samples inside some fake sample's k-NN ball.
    """
    if fake.shape[0] <= k or real.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {fake.shape[0]} fake and {real.shape[0]} real")
    f1 = fake.to(torch.float32)
    f2 = real.to(device=f1.device, dtype=torch.float32)
    r1 = _kth_nn_radius(f1, k, batch)
    r2 = _kth_nn_radius(f2, k, batch)
    precision = _coverage(f1, f2, r2, batch)
    recall = _coverage(f2, f1, r1, batch)
    return float(precision), float(recall)


def compare_features(
    fake: torch.Tensor,
    real: torch.Tensor | None,
    metrics: Sequence[str],
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    seed: int = 2020,
) -> tuple[dict[str, float], int | None]:
    """The requested ``fid`` / ``kid`` / ``pr`` of generated features against real ones.

    ``real`` holds the real features (None when only their statistics are known); ``reference`` is
    their cached ``(mu, sigma)`` if any (FID then needs no features beyond the Gram-form size).
    Metrics without enough samples are skipped with a warning. Returns the results (``fid``,
    ``kid_mean``, ``kid_std``, ``precision``, ``recall``) and the KID subset size used (or None).
    """
    out: dict[str, float] = {}
    kid_size = None
    dev = fake.device
    if "fid" in metrics:
        if fake.shape[0] < 2:
            log.warning("FID skipped: needs at least 2 generated samples, got %d", fake.shape[0])
        elif real is not None and max(real.shape[0], fake.shape[0]) <= _FRECHET_GRAM_MAX:
            out["fid"] = frechet_distance_from_features(fake, real.to(dev))
        else:
            mu_f, sig_f = feature_statistics(fake)
            mu_r, sig_r = (t.to(dev) for t in reference) if reference is not None else feature_statistics(real)
            out["fid"] = frechet_distance(mu_f, sig_f, mu_r, sig_r)
    if "kid" in metrics and real is not None:
        if min(fake.shape[0], real.shape[0]) < 2:
            log.warning("KID skipped: needs at least 2 samples per set")
        else:
            out["kid_mean"], out["kid_std"], kid_size = kernel_inception_distance(
                fake, real.to(dev), kid_subsets, kid_subset_size, seed=seed)
    if "pr" in metrics and real is not None:
        if min(fake.shape[0], real.shape[0]) <= pr_k:
            log.warning("precision/recall skipped: needs more than k=%d samples per set", pr_k)
        else:
            out["precision"], out["recall"] = precision_recall(fake, real.to(dev), k=pr_k)
    return out, kid_size
