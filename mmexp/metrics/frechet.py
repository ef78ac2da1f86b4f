"""Fréchet distance between two Gaussians, in float64.

``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))``.

``tr(sqrt(S1 S2))`` is the sum of the square roots of the eigenvalues of ``S1 S2``. Those equal the
eigenvalues of the symmetric PSD matrix ``A = sqrt(S1) S2 sqrt(S1)``, so we take ``eigvalsh(A)``, clamp
round-off negatives to 0 and sum their square roots. This is the quantity torch-fidelity
(``eigvals(S1 @ S2)``) and pytorch-fid / scipy (``trace(sqrtm(S1 @ S2))``) compute, but stays real and
stable for rank-deficient covariances (fewer samples than feature dimensions).
"""

from __future__ import annotations

import numpy as np
import torch


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (as ``np.cov(rowvar=False)``) of ``[N, D]`` features, in float64."""
    f = features.to(torch.float64)
    n = f.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    mu = f.mean(dim=0)
    fc = f - mu
    sigma = fc.T @ fc / (n - 1)
    return mu, sigma


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(s)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``tr(sqrtm(sigma1 @ sigma2))`` for symmetric PSD matrices, float64."""
    s1 = torch.as_tensor(sigma1).to(torch.float64)
    s2 = torch.as_tensor(sigma2).to(device=s1.device, dtype=torch.float64)
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    r = _psd_sqrt(s1)
    a = r @ s2 @ r
    a = (a + a.T) / 2
    return torch.linalg.eigvalsh(a).clamp(min=0).sqrt().sum()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (tensors or arrays), float64."""
    mu1 = torch.as_tensor(np.asarray(mu1) if not torch.is_tensor(mu1) else mu1).to(torch.float64)
    dev = mu1.device
    mu2 = torch.as_tensor(np.asarray(mu2) if not torch.is_tensor(mu2) else mu2).to(device=dev, dtype=torch.float64)
    s1 = torch.as_tensor(np.asarray(sigma1) if not torch.is_tensor(sigma1) else sigma1).to(
        device=dev, dtype=torch.float64)
    s2 = torch.as_tensor(np.asarray(sigma2) if not torch.is_tensor(sigma2) else sigma2).to(
        device=dev, dtype=torch.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"incompatible statistics: {tuple(mu1.shape)} {tuple(s1.shape)} vs "
                         f"{tuple(mu2.shape)} {tuple(s2.shape)}")
    diff = mu1 - mu2
    d = diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt_product(s1, s2)
    return float(d)


def frechet_distance_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Same value as ``frechet_distance(*feature_statistics(f1), *feature_statistics(f2))``, faster for
    few samples: with centred features A, B, ``tr sqrt(S1 S2) = ||A B^T||_* / sqrt((n1-1)(n2-1))`` (the
    non-zero eigenvalues of S1 S2 are the squared singular values of A B^T / sqrt((n1-1)(n2-1)))."""
    a = f1.to(torch.float64)
    b = f2.to(device=a.device, dtype=torch.float64)
    n1, n2 = a.shape[0], b.shape[0]
    if n1 < 2 or n2 < 2:
        raise ValueError(f"need at least 2 samples per set, got {n1} and {n2}")
    mu1, mu2 = a.mean(0), b.mean(0)
    a = a - mu1
    b = b - mu2
    tr1 = (a * a).sum() / (n1 - 1)
    tr2 = (b * b).sum() / (n2 - 1)
    tr_covmean = torch.linalg.svdvals(a @ b.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    diff = mu1 - mu2
    return float(diff.dot(diff) + tr1 + tr2 - 2 * tr_covmean)
