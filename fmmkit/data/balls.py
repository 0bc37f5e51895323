"""Exact probabilities of balls under Gaussians, for the data sets' high-density regions.

- ``rice_cdf(nu, rho)``: P(|nu e + z| <= rho) for z ~ N(0, I_2) and a unit vector e (the Rice
  distribution's CDF, = 1 - Q_1(nu, rho), Marcum's Q): the mass of a disc of radius rho whose centre is
  nu away from a standard 2D Gaussian's mean. nu = 0 gives the Rayleigh CDF 1 - exp(-rho^2 / 2).
- ``chi2_quantile(level, dim)``: q with P(|z|^2 <= q) = level for z ~ N(0, I_dim).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(256))


def rice_cdf(nu: Tensor | float, rho: float) -> Tensor:
    """P(|nu e + z| <= rho), z ~ N(0, I_2), elementwise in nu (float64), by 256-point Gauss-Legendre
    quadrature of the Rice density x exp(-(x^2 + nu^2) / 2) I_0(nu x) on [0, rho] (error < 1e-12 for
    rho <= 10)."""
    nu = torch.as_tensor(nu, dtype=torch.float64)
    x = 0.5 * rho * (_NODES + 1)  # nodes mapped to [0, rho]
    shape = nu.shape
    nu = nu.reshape(-1, 1)
    # I_0(z) = i0e(z) exp(z): the exponent -(x - nu)^2 / 2 never overflows
    density = x * torch.exp(-0.5 * (x - nu) ** 2) * torch.special.i0e(nu * x)
    return (0.5 * rho * (density * _WEIGHTS).sum(dim=1)).reshape(shape)


def chi2_quantile(level: float, dim: int) -> float:
    """The ``level`` quantile of chi^2 with ``dim`` degrees of freedom, by bisection on the regularised
    lower incomplete gamma function P(dim / 2, q / 2) (to float64 precision)."""
    assert 0 < level < 1, f"level must be in (0, 1), got {level}"
    a = torch.tensor(dim / 2, dtype=torch.float64)
    lo, hi = 0.0, float(dim) + 10.0
    while float(torch.special.gammainc(a, torch.tensor(hi / 2, dtype=torch.float64))) < level:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(torch.special.gammainc(a, torch.tensor(mid / 2, dtype=torch.float64))) < level:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
