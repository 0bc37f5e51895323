"""``stochastic_flow_map`` and ``consistency``: flow-map jumps with noise re-injected through the interpolant.

For an interpolant with Gaussian noise, I_t given the data x1 is N(beta_t x1, n_t^2 I) with
n_t^2 = alpha_t^2 + gamma_t^2. On a grid 0 = t_0 < ... < t_K = 1, one step from t_k to t = t_{k+1} with
injected noise sigma in [0, n_t]:

    u   solves  n_u / beta_u = sqrt(n_t^2 - sigma^2) / beta_t     (u in [t, 1]: closer to the data),
    x  <-  (beta_t / beta_u) X_{t_k, u}(x) + sigma e,    e ~ N(0, I).

With an exact flow map this keeps every marginal exactly, for any data: X_{t_k,u}(x) has the law p_u
of n_u e' + beta_u x1, so the step's output has the law of n_t e'' + beta_t x1, which is p_t
(/work/notes/frontier.md Sec. 8). sigma = 0 is the deterministic ``flow_map`` jump (u = t); sigma = n_t
(u = 1) jumps to the data and re-noises: multistep consistency sampling (Song et al. 2023, Alg. 1),
the ``consistency`` sampler, the one a model that learns only X_{s,1} (consistency training and
distillation) needs. ``stochastic_flow_map`` re-injects sigma = churn * gamma_t (``noise = "gamma"``,
the default: the interpolant's own gamma-noise, none for a deterministic interpolant) or sigma =
churn * n_t (``noise = "total"``). NFE = K either way; the noise comes from a generator seeded with
``seed`` (offset by :data:`RENOISE_SEED_OFFSET`, so that it never replays the starting noise x0 drawn
with a small seed) at each call, so a sampler draws the same noise every time.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fmmkit.core import BuildContext, FlowMapLike, Interpolant, SampleResult
from fmmkit.core.flow_map import time_dtype
from fmmkit.core.validators import one_of, unit_interval
from fmmkit.hookspecs import hookimpl
from fmmkit.samplers.flow_map import FlowMapSampler, FlowMapSamplerConfig

NOISES = ("gamma", "total")
#: added to ``seed``: the re-injected noise must be independent of x0, which callers draw with small seeds
RENOISE_SEED_OFFSET = 0x5EED_0000_0001


@attrs.define(frozen=True)
class StochasticFlowMapConfig(FlowMapSamplerConfig):
    """steps / grid as ``flow_map``; churn: share of the noise re-drawn at each step; noise: "gamma"
    (churn x gamma_t) or "total" (churn x sqrt(alpha_t^2 + gamma_t^2)); seed of the re-injected noise."""

    churn: float = attrs.field(default=1.0, validator=unit_interval)
    noise: str = attrs.field(default="gamma", validator=one_of(NOISES))
    seed: int = 0


@attrs.define(frozen=True)
class ConsistencySamplerConfig(FlowMapSamplerConfig):
    """steps / grid as ``flow_map``; seed of the re-injected noise."""

    seed: int = 0


def _noise_scale(ip: Interpolant, t: Tensor) -> Tensor:
    """n_t = sqrt(alpha_t^2 + gamma_t^2), the standard deviation of I_t given x1."""
    return torch.sqrt(ip.alpha(t) ** 2 + ip.gamma(t) ** 2)


def intermediate_time(ip: Interpolant, t: float, sigma: float, iterations: int = 60) -> float:
    """u in [t, 1] with n_u / beta_u = sqrt(n_t^2 - sigma^2) / beta_t (bisection; n / beta decreases)."""
    tt = torch.tensor([t], dtype=torch.float64)
    n_t, beta_t = float(_noise_scale(ip, tt)), float(ip.beta(tt))
    if sigma <= 0 or n_t <= 0:
        return t
    target = math.sqrt(max(n_t**2 - sigma**2, 0.0)) / beta_t
    if target <= 0:
        return 1.0
    lo, hi = t, 1.0
    for _ in range(iterations):
        mid = torch.tensor([(lo + hi) / 2], dtype=torch.float64)
        ratio = float(_noise_scale(ip, mid)) / float(ip.beta(mid))
        lo, hi = ((lo + hi) / 2, hi) if ratio > target else (lo, (lo + hi) / 2)
    return (lo + hi) / 2


class StochasticFlowMapSampler(FlowMapSampler):
    """x <- (beta_t / beta_u) X_{t_k, u}(x) + sigma e with sigma = churn x (gamma_t or n_t); NFE = K."""

    Config = StochasticFlowMapConfig

    def __init__(self, config: StochasticFlowMapConfig = StochasticFlowMapConfig(), interpolant: Interpolant | None = None) -> None:
        super().__init__(config)
        self.interpolant = interpolant

    @classmethod
    def build(cls, config: StochasticFlowMapConfig, ctx: BuildContext) -> StochasticFlowMapSampler:
        if ctx.interpolant is None:
            raise ValueError(f"sampler {cls.__name__} re-noises through the run's interpolant; build it with one "
                             "(BuildContext(interpolant=...))")
        return cls(config, ctx.interpolant)

    def injected(self, t: float) -> float:
        """sigma at grid time t."""
        assert self.interpolant is not None
        tt = torch.tensor([t], dtype=torch.float64)
        base = self.interpolant.gamma(tt) if self.config.noise == "gamma" else _noise_scale(self.interpolant, tt)
        return self.config.churn * float(base)

    @property
    def label(self) -> str:
        return f"stochastic_flow_map({len(self.times) - 1}, churn {self.config.churn:g} x {self.config.noise})"

    def __call__(self, model: FlowMapLike, x0: Tensor, y: Tensor | None = None) -> SampleResult:  # type: ignore[override]
        assert self.interpolant is not None, "a re-noising sampler needs the interpolant"
        ip, grid = self.interpolant, self.times
        g = torch.Generator(device=x0.device).manual_seed(RENOISE_SEED_OFFSET + self.config.seed)
        x, n = x0, x0.shape[0]
        trajectory = [x] if self.config.keep_trajectory else None
        for s, t in zip(grid, grid[1:]):
            sigma = self.injected(t)
            u = intermediate_time(ip, t, sigma)
            s_b = torch.full((n,), s, dtype=time_dtype(x), device=x.device)
            jumped = model(x, s_b, torch.full_like(s_b, u), y)
            if sigma > 0:
                beta = lambda v: float(ip.beta(torch.tensor([v], dtype=torch.float64)))  # noqa: E731
                e = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
                x = (beta(t) / beta(u)) * jumped + sigma * e
            else:
                x = jumped
            if trajectory is not None:
                trajectory.append(x)
        return SampleResult(x=x, nfe=len(grid) - 1, trajectory=trajectory)


class ConsistencySampler(StochasticFlowMapSampler):
    """Multistep consistency sampling: x <- beta_t X_{t_k, 1}(x) + n_t e (the last step returns X_{t_{K-1}, 1})."""

    Config = ConsistencySamplerConfig  # type: ignore[assignment]

    @property
    def label(self) -> str:
        return f"consistency({len(self.times) - 1})"

    def injected(self, t: float) -> float:
        assert self.interpolant is not None
        return float(_noise_scale(self.interpolant, torch.tensor([t], dtype=torch.float64)))


@hookimpl
def register_samplers(register) -> None:  # type: ignore[no-untyped-def]
    register("stochastic_flow_map", StochasticFlowMapSampler)
    register("consistency", ConsistencySampler)
