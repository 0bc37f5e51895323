"""Public hypothesis strategies for testing flow maps, interpolants and losses.

- :func:`times`, :func:`time_pairs`, :func:`time_triples`: times in [0, 1], endpoints included, in forward
  or any order (re-exported from :mod:`fmmkit.verification.strategies`).
- :func:`batches`: float64 batches (B, d) drawn from a hypothesis-chosen seed, size, dimension and scale.
- :func:`interpolants`: registered interpolants (a plugin's too), with and without gamma noise.
- :func:`gaussian_problems`: a Gaussian target N(m, diag(std^2)) under an interpolant, with its exact
  map (:class:`fmmkit.exact.GaussianFlowMap`) and points drawn at any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import attrs
import torch
from hypothesis import strategies as st
from torch import Tensor

from fmmkit.core import BuildContext, Interpolant
from fmmkit.exact import GaussianFlowMap
from fmmkit.verification.strategies import time_pairs, time_triples, times

__all__ = ["GaussianProblem", "batches", "build_interpolant", "gaussian_problems", "interpolant_cases",
           "interpolants", "time_pairs", "time_triples", "times"]


@st.composite
def batches(draw: st.DrawFn, dims: tuple[int, int] = (1, 8), sizes: tuple[int, int] = (1, 32),
            scales: tuple[float, float] = (0.1, 5.0), dtype: torch.dtype = torch.float64) -> Tensor:
    """scale * N(0, I) of shape (size, dim), with size, dim, scale and the seed chosen by hypothesis."""
    dim = draw(st.integers(*dims))
    size = draw(st.integers(*sizes))
    scale = draw(st.floats(*scales))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(size, dim, generator=g, dtype=torch.float64)).to(dtype)


def build_interpolant(name: str, noise: float = 0.0) -> Interpolant:
    """The registered interpolant ``name`` with its default config, and gamma noise ``noise`` when it has one."""
    from fmmkit.registry import get_registry

    entry = get_registry().get("interpolant", name)
    fields = {f.name for f in attrs.fields(entry.config)} if attrs.has(entry.config) else set()
    if noise and "noise" not in fields:
        raise ValueError(f"interpolant '{name}' has no 'noise' parameter; it cannot take gamma noise {noise}")
    config = entry.config(noise=noise) if "noise" in fields else entry.config()
    return entry.build(config, BuildContext())


def interpolant_cases(names: Sequence[str] | None = None, noise: float = 0.5) -> list[tuple[str, float]]:
    """(name, noise) for every registered interpolant (or ``names``): noise 0, and ``noise`` if it takes one."""
    from fmmkit.registry import get_registry

    registry = get_registry()
    cases = []
    for name in names if names is not None else registry.names("interpolant"):
        config = registry.get("interpolant", name).config
        cases.append((name, 0.0))
        if noise and attrs.has(config) and "noise" in {f.name for f in attrs.fields(config)}:
            cases.append((name, noise))
    return cases


def interpolants(names: Sequence[str] | None = None, noise: tuple[float, float] = (0.0, 1.0)) -> st.SearchStrategy[Interpolant]:
    """A registered interpolant (every one by default) with gamma noise in ``noise`` when it takes one."""
    cases = interpolant_cases(names, noise=1.0 if noise[1] > 0 else 0.0)
    names_with_noise = {n for n, a in cases if a}

    @st.composite
    def build(draw: st.DrawFn) -> Interpolant:
        name = draw(st.sampled_from(sorted({n for n, _ in cases})))
        a = draw(st.one_of(st.just(0.0), st.floats(*noise))) if name in names_with_noise else 0.0
        return build_interpolant(name, a)

    return build()


@dataclass
class GaussianProblem:
    """A Gaussian target under an interpolant: its exact map, and points of I_s at any time s."""

    interpolant: Interpolant
    mean: Tensor
    std: Tensor
    oracle: GaussianFlowMap
    seed: int

    @property
    def dim(self) -> int:
        """Coordinates per point."""
        return int(self.mean.numel())

    def points(self, n: int, s: Tensor | float, seed: int | None = None) -> Tensor:
        """n draws of I_s (float64): alpha_s x0 + beta_s x1 + gamma_s z with x1 from the target."""
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        x1 = self.oracle.sample(n, g, dtype=torch.float64)
        s_b = torch.as_tensor(s, dtype=torch.float64).expand(n) if torch.as_tensor(s).ndim == 0 else torch.as_tensor(s, dtype=torch.float64)
        return self.interpolant.draw(x1, s_b, generator=g).x_t

    def __repr__(self) -> str:
        name = type(self.interpolant).__name__
        return (f"GaussianProblem({name}(noise={self.interpolant.noise_scale:g}), mean={self.mean.tolist()}, "
                f"std={self.std.tolist()}, seed={self.seed})")


@st.composite
def gaussian_problems(draw: st.DrawFn, interpolant: st.SearchStrategy[Interpolant] | None = None,
                      dims: tuple[int, int] = (1, 8), means: tuple[float, float] = (-3.0, 3.0),
                      stds: tuple[float, float] = (0.1, 3.0)) -> GaussianProblem:
    """A target N(m, diag(std^2)) in 1..8 dimensions under a registered interpolant (noise included)."""
    ip = draw(interpolant if interpolant is not None else interpolants())
    dim = draw(st.integers(*dims))
    mean = torch.tensor(draw(st.lists(st.floats(*means), min_size=dim, max_size=dim)), dtype=torch.float64)
    std = torch.tensor(draw(st.lists(st.floats(*stds), min_size=dim, max_size=dim)), dtype=torch.float64)
    seed = draw(st.integers(0, 2**31 - 1))
    return GaussianProblem(ip, mean, std, GaussianFlowMap(ip, mean, std), seed)
