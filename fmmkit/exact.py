"""Exact velocities and flow maps for Gaussian data: oracles for tests, teachers and references.

For data x1 ~ N(m, diag(std^2)) independent of x0 ~ N(0, I) (and z), the interpolant
I_t = alpha x0 + beta x1 + gamma z is Gaussian per dimension with mean mu_t = beta_t m and variance
S_t = alpha_t^2 + gamma_t^2 + beta_t^2 std^2. Hence (2505.18825, Prop. 2.2 applied to a Gaussian)

    b_t(x)     = beta'_t m + (S'_t / (2 S_t)) (x - mu_t),
    X_{s,t}(x) = mu_t + sqrt(S_t / S_s) (x - mu_s),

with S'_t = 2 alpha alpha' + 2 gamma gamma' + 2 beta beta' std^2. For a mixture sum_k pi_k N(m_k,
diag(std_k^2)) the same holds per component, and since E[dI_t/dt | I_t = x, k] is the component's
Gaussian velocity, b_t(x) = sum_k w_k(x, t) b^k_t(x) with posterior weights
w_k proportional to pi_k N(x; beta_t m_k, diag(S^k_t)); its flow map is an accurate RK4 solve.
Both work for any interpolant with alpha, beta, gamma (gamma gamma' enters in its finite form).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from fmmkit.core import Interpolant
from fmmkit.core.shapes import as_batch_times, broadcast_time
from fmmkit.core.validators import SpecValueError
from fmmkit.samplers.ode import RK4_TABLEAU, integrate_fixed


def per_coordinate(values: list[float], name: str, data_shape: tuple[int, ...]) -> Tensor:
    """A float64 tensor shaped like one data point from 1 entry (broadcast) or one entry per coordinate
    (a spec's ``mean``/``std`` lists); SpecValueError naming ``name`` otherwise."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if not data_shape:
        return tensor
    size = math.prod(data_shape)
    if tensor.numel() == 1:
        return tensor.expand(size).reshape(data_shape)
    if tensor.numel() == size:
        return tensor.reshape(data_shape)
    raise SpecValueError(name, f"has {tensor.numel()} entries but data points have {size} coordinates; give 1 or {size}")


def gamma_squared(interpolant: Interpolant, t: Tensor) -> Tensor:
    """gamma(t)^2, as a^2 t (1 - t) for the default gamma = a sqrt(t (1 - t)).

    The closed form keeps forward-mode derivatives finite at t = 0, 1, where d/dt sqrt is infinite.
    """
    if type(interpolant).gamma is Interpolant.gamma:
        return interpolant.noise_scale**2 * (t * (1 - t))
    return interpolant.gamma(t) ** 2


def gaussian_moments(interpolant: Interpolant, t: Tensor, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mu_t, S_t, S'_t, mu'_t) of I_t for data N(mean, diag(var)); t broadcasts against mean and var.

    mu_t = beta m, S_t = alpha^2 + gamma^2 + beta^2 var, S'_t = 2 (alpha alpha' + gamma gamma' + beta beta' var),
    mu'_t = beta' m.
    """
    ip = interpolant
    alpha, beta, d_alpha, d_beta = ip.alpha(t), ip.beta(t), ip.d_alpha(t), ip.d_beta(t)
    s = alpha**2 + gamma_squared(ip, t) + beta**2 * var
    ds = 2 * (alpha * d_alpha + ip.gamma_d_gamma(t) + beta * d_beta * var)
    return beta * mean, s, ds, d_beta * mean


class ExactFlowMap(nn.Module):
    """A reference map: velocity b_t(x) and flow map X_{s,t}(x) known exactly (or to solver accuracy).

    It satisfies :class:`fmmkit.core.FlowMapLike` and the parts of :class:`fmmkit.core.FlowMap` that
    losses and :mod:`fmmkit.core.derivatives` use (``average_velocity``, ``forward_ad_mode``), so a loss or a
    law check can be evaluated on it directly. ``y`` is accepted and ignored.
    """

    supports_forward_ad = True

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """b_t(x)."""
        raise NotImplementedError

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def forward_ad_mode(self) -> Iterator[None]:
        """Forward-mode AD is always valid on the closed forms."""
        yield

    def average_velocity(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """v_{s,t}(x) = (X_{s,t}(x) - x) / (t - s), and b_t(x) where s = t."""
        s_b, t_b = as_batch_times(s, x), as_batch_times(t, x)
        dt = broadcast_time(t_b - s_b, x)
        diagonal = dt == 0
        off = (self.forward(x, s_b, t_b) - x) / torch.where(diagonal, torch.ones_like(dt), dt)
        return torch.where(diagonal, self.velocity(x, t_b), off)


class GaussianFlowMap(ExactFlowMap):
    """The exact velocity b_t and flow map X_{s,t} for data N(mean, diag(std^2)) (a FlowMapLike).

    ``mean`` and ``std`` have the shape of one data point (or broadcast to it); all computation runs in
    the dtype of the input x.
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
        return gaussian_moments(self.interpolant, tb, self.mean.to(x), self.std.to(x) ** 2)

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """b_t(x) = beta'_t m + (S'_t / (2 S_t)) (x - mu_t)."""
        mu, s, ds, d_mu = self._moments(t, x)
        return d_mu + ds / (2 * s) * (x - mu)

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x) = mu_t + sqrt(S_t / S_s) (x - mu_s)."""
        mu_s, var_s, _, _ = self._moments(s, x)
        mu_t, var_t, _, _ = self._moments(t, x)
        return mu_t + torch.sqrt(var_t / var_s) * (x - mu_s)

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
        _, var_i, d_var_i, _ = gaussian_moments(ip, tt, torch.zeros_like(var), var)
        var_di = ip.d_alpha(tt) ** 2 + ip.d_beta(tt) ** 2 * var + ip.d_gamma(tt) ** 2
        per_dim = var_di - (d_var_i / 2) ** 2 / var_i
        if reduction == "mean":
            return per_dim.mean(-1)
        if reduction == "sum":
            return per_dim.sum(-1)
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """n draws of the data x1 = mean + std * N(0, I), shape (n, *mean.shape)."""
        noise = torch.randn((n, *self.mean.shape), generator=generator, dtype=torch.float64)
        return (self.mean + self.std * noise).to(dtype)


def _linear() -> Interpolant:
    from fmmkit.interpolants.linear import LinearInterpolant

    return LinearInterpolant()


class GaussianMixtureFlowMap(ExactFlowMap):
    """Exact velocity of data sum_k pi_k N(m_k, diag(std_k^2)) under any interpolant (linear by default).

    b_t(x) = sum_k w_k(x, t) [beta'_t m_k + (S^k'_t / (2 S^k_t)) (x - beta_t m_k)],
    w_k proportional to pi_k N(x; beta_t m_k, diag(S^k_t)), S^k_t = alpha_t^2 + gamma_t^2 + beta_t^2 std_k^2.
    ``flow_map(x, s, t)`` (also ``__call__``) integrates dx/dt = b_t(x) with ``steps`` RK4 steps in
    float64 (global error O(|t - s|^4 / steps^4)). weights (K,), means (K, *shape), stds (K,) (one
    scale per component) or (K, *shape) (diagonal).
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor, steps: int = 500,
                 interpolant: Interpolant | None = None) -> None:
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        k = weights.shape[0] if weights.ndim == 1 else -1
        if weights.ndim != 1 or means.ndim < 2 or means.shape[0] != k or stds.shape not in ((k,), means.shape):
            raise ValueError(
                f"need weights (K,), means (K, ...), stds (K,) or shaped like means; got {tuple(weights.shape)}, "
                f"{tuple(means.shape)}, {tuple(stds.shape)}"
            )
        if not bool((weights > 0).all() and (stds > 0).all()):
            raise ValueError("mixture weights and stds must be > 0")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        stds = stds.reshape(k, *([1] * (means.ndim - 1))).expand_as(means) if stds.ndim == 1 else stds
        self.interpolant = interpolant if interpolant is not None else _linear()
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("means", means.clone())
        self.register_buffer("stds", stds.clone())
        self.steps = steps

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """The mixture velocity b_t(x) (see the class docstring)."""
        assert x.shape[1:] == self.means.shape[1:], (
            f"mixture points have shape {tuple(self.means.shape[1:])}, got x of shape {tuple(x.shape)}"
        )
        k = self.means.shape[0]
        tb = as_batch_times(t, x)[:, None, None]  # (B, 1, 1)
        flat = x.reshape(x.shape[0], 1, -1)  # (B, 1, D)
        mean = self.means.to(x).reshape(1, k, -1)  # (1, K, D)
        var = self.stds.to(x).reshape(1, k, -1) ** 2  # (1, K, D)
        mu, s, ds, d_mu = gaussian_moments(self.interpolant, tb, mean, var)  # (B, K, D)
        diff = flat - mu
        log_w = self.log_weights.to(x) - 0.5 * (torch.log(s) + diff.pow(2) / s).sum(-1)  # (B, K)
        w = (log_w - log_w.logsumexp(dim=1, keepdim=True)).exp()  # softmax; torch.softmax is ms-slow here on 2 threads
        b = d_mu + ds / (2 * s) * diff  # (B, K, D)
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

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """n draws of the data: a component k ~ pi, then m_k + std_k * N(0, I); shape (n, *shape)."""
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp] * noise).to(dtype)


#: The former name, kept for existing callers.
GaussianMixtureVelocity = GaussianMixtureFlowMap


class BoxMixtureFlowMap(ExactFlowMap):
    """Exact velocity of data uniform on a union of K disjoint axis-aligned boxes (the checkerboard).

    With x = alpha x0 + beta x1 (gamma = 0) and x1 uniform on the union, the box k has posterior
    weight w_k proportional to prod_d [Phi(z_hi) - Phi(z_lo)], z = (beta edge - x_d) / alpha (the prior
    mass of a box is its volume, which cancels the density 1 / volume), and inside it x1_d is the normal
    N(x_d / beta, (alpha / beta)^2) truncated to the box:
    E[x1_d | x, k] = x_d / beta + (alpha / beta) (phi(z_lo) - phi(z_hi)) / (Phi(z_hi) - Phi(z_lo)).
    Then b_t(x) = alpha'_t E[x0 | x] + beta'_t E[x1 | x], with E[x0 | x] = (x - beta E[x1 | x]) / alpha.
    Times are kept in [t_eps, 1 - t_eps] (the formulas divide by beta and alpha); ``flow_map`` is
    ``steps`` RK4 steps in float64. lows, highs: (K, D) box corners.
    """

    def __init__(self, lows: Tensor, highs: Tensor, steps: int = 1000, interpolant: Interpolant | None = None,
                 t_eps: float = 1e-6) -> None:
        super().__init__()
        lows, highs = torch.as_tensor(lows, dtype=torch.float64), torch.as_tensor(highs, dtype=torch.float64)
        if lows.ndim != 2 or lows.shape != highs.shape or not bool((highs > lows).all()):
            raise ValueError(f"need lows and highs of one shape (K, D) with highs > lows, got {tuple(lows.shape)} "
                             f"and {tuple(highs.shape)}")
        self.interpolant = interpolant if interpolant is not None else _linear()
        if self.interpolant.stochastic:
            raise ValueError("BoxMixtureFlowMap needs a deterministic interpolant (gamma = 0)")
        self.register_buffer("lows", lows.clone())
        self.register_buffer("highs", highs.clone())
        self.steps, self.t_eps = steps, t_eps

    @classmethod
    def checkerboard(cls, scale: float = 1.0, **kwargs: object) -> BoxMixtureFlowMap:
        """The 8 black squares of ``checkerboard`` data (:class:`fmmkit.data.toy2d.Checkerboard`) of that scale."""
        from fmmkit.data.toy2d import Checkerboard

        corners = Checkerboard.CORNERS.double() * scale
        return cls(corners, corners + scale, **kwargs)  # type: ignore[arg-type]

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """b_t(x) (see the class docstring); x (B, D)."""
        assert x.ndim == 2 and x.shape[1] == self.lows.shape[1], (
            f"box mixture points have shape ({self.lows.shape[1]},), got x of shape {tuple(x.shape)}")
        tb = as_batch_times(t, x).clamp(self.t_eps, 1 - self.t_eps)[:, None, None]  # (B, 1, 1)
        ip = self.interpolant
        alpha, beta, d_alpha, d_beta = ip.alpha(tb), ip.beta(tb), ip.d_alpha(tb), ip.d_beta(tb)
        xk = x[:, None, :]  # (B, 1, D)
        z_lo = (beta * self.lows.to(x)[None] - xk) / alpha  # (B, K, D)
        z_hi = (beta * self.highs.to(x)[None] - xk) / alpha
        # log(Phi(z_hi) - Phi(z_lo)) on the side of the smaller tail (mirror boxes right of x)
        right = z_lo > 0
        a, b = torch.where(right, -z_hi, z_lo), torch.where(right, -z_lo, z_hi)
        log_b = torch.special.log_ndtr(b)
        log_mass = log_b + torch.log1p(-torch.exp(torch.special.log_ndtr(a) - log_b))  # (B, K, D)
        log_phi = lambda z: -0.5 * z**2 - 0.5 * math.log(2 * math.pi)  # noqa: E731
        ratio = torch.exp(log_phi(z_lo) - log_mass) - torch.exp(log_phi(z_hi) - log_mass)
        mean_in_box = xk / beta + (alpha / beta) * ratio  # E[x1_d | x, k] (B, K, D)
        log_w = log_mass.sum(-1)  # (B, K)
        w = (log_w - log_w.logsumexp(dim=1, keepdim=True)).exp()
        mean_x1 = (w[:, :, None] * mean_in_box).sum(1)  # (B, D)
        a0, b0, da0, db0 = (v[:, :, 0] for v in (alpha, beta, d_alpha, d_beta))
        mean_x0 = (x - b0 * mean_x1) / a0
        return da0 * mean_x0 + db0 * mean_x1

    def flow_map(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x) by ``steps`` RK4 steps of dx/dt = b_t(x) in float64, returned in x's dtype."""
        x64 = x.double()
        out, _ = integrate_fixed(self.velocity, x64, as_batch_times(s, x64), as_batch_times(t, x64), self.steps,
                                 RK4_TABLEAU)
        return out.to(x.dtype)

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x): see :meth:`flow_map`."""
        return self.flow_map(x, s, t, y)
