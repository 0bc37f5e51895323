"""How close a learned flow map is to the exact one on Gaussian data (issue 13, goal 2).

For data N(m, diag(sigma^2)) the exact map is affine, X*_{s,t}(x) = mu_t + sqrt(S_t / S_s)(x - mu_s)
(:class:`fmmkit.exact.GaussianFlowMap`). Two figures:

- map error: RMS over forward pairs s <= t (uniform on the triangle), points x = I_s and coordinates of
  X_{s,t}(x) - X*_{s,t}(x), divided by the RMS of the exact displacement X*_{s,t}(x) - x;
- one-step std ratio: per-coordinate std of X_{0,1}(x0), x0 ~ N(0, I), over the true sigma (1 is exact;
  a blurred map gives > 1), and the one-step mean error in units of sigma.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fmmkit.core import FlowMapLike, Interpolant
from fmmkit.exact import GaussianFlowMap


@dataclass(frozen=True)
class GaussianFit:
    """map_error (relative RMS), std_ratio (per coordinate), mean_error (max |mean - m| / sigma)."""

    map_error: float
    std_ratio: Tensor
    mean_error: float

    @property
    def std_worst(self) -> float:
        """max over coordinates of |std ratio - 1|."""
        return float((self.std_ratio - 1).abs().max())


@torch.no_grad()
def gaussian_fit(model: FlowMapLike, exact: GaussianFlowMap, interpolant: Interpolant, *, pairs: int = 4096,
                 samples: int = 20_000, seed: int = 0) -> GaussianFit:
    """Score ``model`` against ``exact`` (both in the same convention) on fixed draws of ``seed``.

    Example:
        >>> from fmmkit.interpolants.linear import LinearInterpolant
        >>> ip = LinearInterpolant()
        >>> exact = GaussianFlowMap(ip, torch.zeros(2), torch.tensor([0.5, 2.0]))
        >>> fit = gaussian_fit(exact, exact, ip, pairs=64, samples=4000)
        >>> fit.map_error < 1e-6, fit.std_worst < 0.05
        (True, True)
    """
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(pairs, generator=g), torch.rand(pairs, generator=g)
    s, t = torch.minimum(a, b), torch.maximum(a, b)
    mean, std = exact.mean.float(), exact.std.float()
    x1 = mean + std * torch.randn((pairs, *mean.shape), generator=g)
    x0 = torch.randn(x1.shape, generator=g)
    x_s = interpolant.interpolate(x0, x1, s).x_t
    learned = model(x_s, s, t).double()
    truth = exact(x_s.double(), s.double(), t.double())
    error = (learned - truth).pow(2).mean().sqrt() / (truth - x_s.double()).pow(2).mean().sqrt()
    z = torch.randn((samples, *mean.shape), generator=torch.Generator().manual_seed(seed + 1))
    one = model(z, torch.zeros(samples), torch.ones(samples)).double()
    ratio = one.std(dim=0) / exact.std
    mean_error = ((one.mean(dim=0) - exact.mean) / exact.std).abs().max()
    return GaussianFit(float(error), ratio.float(), float(mean_error))
