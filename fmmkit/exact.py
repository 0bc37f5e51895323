"""Exact velocities and flow maps for Gaussian data: oracles for tests, teachers and sanity checks.

For data x1 ~ N(m, diag(std^2)) independent of x0 ~ N(0, I) (and z), the interpolant
I_t = alpha x0 + beta x1 + gamma z is Gaussian per dimension with mean mu_t = beta_t m and variance
S_t = alpha_t^2 + gamma_t^2 + beta_t^2 std^2. Hence

    b_t(x)     = beta'_t m + (S'_t / (2 S_t)) (x - mu_t),
    X_{s,t}(x) = mu_t + sqrt(S_t / S_s) (x - mu_s),

with S'_t = 2 alpha alpha' + 2 gamma gamma' + 2 beta beta' std^2. For a Gaussian mixture (linear
interpolant, gamma = 0) the velocity is closed form and the flow map is an accurate ODE solve.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmmkit.core import Interpolant
from fmmkit.core.shapes import as_batch_times, broadcast_time
from fmmkit.samplers.ode import RK4_TABLEAU, integrate_fixed


class GaussianFlowMap(nn.Module):
    """The exact velocity b_t and flow map X_{s,t} for data N(mean, diag(std^2)) (a FlowMapLike).

    ``mean`` and ``std`` have the shape of one data point (or broadcast to it); all computation runs in
    the dtype of the input x. ``y`` is accepted and ignored.
    """

    def __init__(self, interpolant: Interpolant, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        mean, std = torch.broadcast_tensors(torch.as_tensor(mean, dtype=torch.float64),
                                            torch.as_tensor(std, dtype=torch.float64))
        if not bool((std > 0).all()):
            raise ValueError(f"GaussianFlowMap: std must be > 0 everywhere, got {std.tolist()}")
        self.interpolant = interpolant
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def _moments(self, t: Tensor | float, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """mu_t, S_t, S'_t and beta'_t m, each broadcast against x of shape (B, ...)."""
        tb = broadcast_time(as_batch_times(t, x), x)
        ip = self.interpolant
        m, var = self.mean.to(x), self.std.to(x) ** 2
        alpha, beta, gamma = ip.alpha(tb), ip.beta(tb), ip.gamma(tb)
        d_alpha, d_beta = ip.d_alpha(tb), ip.d_beta(tb)
        s = alpha**2 + gamma**2 + beta**2 * var
        ds = 2 * alpha * d_alpha + 2 * ip.gamma_d_gamma(tb) + 2 * beta * d_beta * var
        return beta * m, s, ds, d_beta * m

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """b_t(x) = beta'_t m + (S'_t / (2 S_t)) (x - mu_t)."""
        mu, s, ds, d_mu = self._moments(t, x)
        return d_mu + ds / (2 * s) * (x - mu)

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x) = mu_t + sqrt(S_t / S_s) (x - mu_s)."""
        mu_s, var_s, _, _ = self._moments(s, x)
        mu_t, var_t, _, _ = self._moments(t, x)
        return mu_t + torch.sqrt(var_t / var_s) * (x - mu_s)

    def average_velocity(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """v_{s,t}(x) = (X_{s,t}(x) - x) / (t - s), and b_t(x) where s = t."""
        s_b, t_b = as_batch_times(s, x), as_batch_times(t, x)
        dt = broadcast_time(t_b - s_b, x)
        diagonal = dt == 0
        off = (self.forward(x, s_b, t_b) - x) / torch.where(diagonal, torch.ones_like(dt), dt)
        return torch.where(diagonal, self.velocity(x, t_b), off)

    def conditional_variance(self, t: Tensor | float, reduction: str = "mean") -> Tensor:
        """E|dI_t/dt - b_t(I_t)|^2 per dimension, averaged (or summed) over dimensions; shaped like t.

        Per dimension: Var(dI) - Cov(dI, I)^2 / Var(I), with Var(dI) = alpha'^2 + beta'^2 std^2 + gamma'^2,
        Cov = alpha alpha' + beta beta' std^2 + gamma gamma', Var(I) = S_t. This is the flow-matching
        loss of the exact velocity (infinite at t = 0, 1 when gamma > 0).
        """
        t = torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, Tensor) else None)
        tt = t.unsqueeze(-1)
        ip = self.interpolant
        var = (self.std.to(t) ** 2).flatten()
        alpha, beta, gamma = ip.alpha(tt), ip.beta(tt), ip.gamma(tt)
        d_alpha, d_beta, d_gamma = ip.d_alpha(tt), ip.d_beta(tt), ip.d_gamma(tt)
        var_i = alpha**2 + gamma**2 + beta**2 * var
        var_di = d_alpha**2 + d_beta**2 * var + d_gamma**2
        cov = alpha * d_alpha + beta * d_beta * var + ip.gamma_d_gamma(tt)
        per_dim = var_di - cov**2 / var_i
        if reduction == "mean":
            return per_dim.mean(-1)
        if reduction == "sum":
            return per_dim.sum(-1)
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """n draws of the data x1 = mean + std * N(0, I), shape (n, *mean.shape)."""
        noise = torch.randn((n, *self.mean.shape), generator=generator, dtype=torch.float64)
        return (self.mean + self.std * noise).to(dtype)


class GaussianMixtureVelocity(nn.Module):
    """Exact velocity of the linear interpolant (gamma = 0) for data sum_k pi_k N(m_k, sigma_k^2 I).

    b_t(x) = sum_k w_k(x, t) [m_k + ((t sigma_k^2 - (1 - t)) / s_kt^2)(x - t m_k)], with
    s_kt^2 = (1 - t)^2 + t^2 sigma_k^2 and w_k proportional to pi_k N(x; t m_k, s_kt^2 I).
    ``flow_map(x, s, t)`` (also ``__call__``) integrates it with ``steps`` RK4 steps in float64.
    weights (K,), means (K, *shape), stds (K,).
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor, steps: int = 500) -> None:
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        k = weights.shape[0]
        if weights.ndim != 1 or means.shape[0] != k or stds.shape != (k,):
            raise ValueError(
                f"need weights (K,), means (K, ...), stds (K,); got {tuple(weights.shape)}, "
                f"{tuple(means.shape)}, {tuple(stds.shape)}"
            )
        if not bool((weights > 0).all() and (stds > 0).all()):
            raise ValueError("mixture weights and stds must be > 0")
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("means", means.clone())
        self.register_buffer("stds", stds.clone())
        self.steps = steps

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """The mixture velocity b_t(x) (see the class docstring)."""
        t = as_batch_times(t, x)[:, None]  # (B, 1)
        flat = x.reshape(x.shape[0], -1)  # (B, D)
        means = self.means.to(x).reshape(self.means.shape[0], -1)  # (K, D)
        var = self.stds.to(x) ** 2  # (K,)
        s2 = (1 - t) ** 2 + t**2 * var  # (B, K)
        diff = flat[:, None, :] - t[:, :, None] * means[None]  # (B, K, D)
        log_w = self.log_weights.to(x) - 0.5 * flat.shape[1] * torch.log(s2) - diff.pow(2).sum(-1) / (2 * s2)
        w = torch.softmax(log_w, dim=1)  # (B, K)
        coef = (t * var - (1 - t)) / s2  # (B, K)
        b = means[None] + coef[:, :, None] * diff  # (B, K, D)
        return (w[:, :, None] * b).sum(1).reshape(x.shape)

    def flow_map(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x) by ``steps`` RK4 steps of dx/dt = b_t(x) in float64, returned in x's dtype."""
        x64 = x.double()
        s64, t64 = as_batch_times(s, x64), as_batch_times(t, x64)
        out, _ = integrate_fixed(self.velocity, x64, s64, t64, self.steps, RK4_TABLEAU)
        return out.to(x.dtype)

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x): see :meth:`flow_map`."""
        return self.flow_map(x, s, t, y)
