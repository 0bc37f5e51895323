"""The Frechet distance between Gaussians fitted to two feature sets (the formula of FID).

FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)   (Dowson & Landau 1982),
computed in float64 with symmetric eigendecompositions (no complex sqrtm).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_fit(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = features.detach().reshape(features.shape[0], -1).to(device="cpu", dtype=torch.float64)
    assert f.shape[0] >= 2, f"a covariance needs at least 2 feature vectors, got shape {tuple(f.shape)}"
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(s: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((s + s.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """FD between N(mu1, cov1) and N(mu2, cov2) (float64)."""
    assert mu1.shape == mu2.shape and cov1.shape == cov2.shape == (mu1.shape[0], mu1.shape[0]), (
        f"mismatched statistics: mu {tuple(mu1.shape)} / {tuple(mu2.shape)}, cov {tuple(cov1.shape)} / {tuple(cov2.shape)}"
    )
    root1 = _psd_sqrt(cov1.double())
    middle = root1 @ cov2.double() @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).double().pow(2).sum() + torch.trace(cov1.double()) + torch.trace(cov2.double()) - 2 * cross
    return float(value)


def frechet_distance_of_features(a: Tensor, b: Tensor) -> float:
    """FD between Gaussian fits of two feature sets (N, D) and (M, D)."""
    return frechet_distance(*gaussian_fit(a), *gaussian_fit(b))
