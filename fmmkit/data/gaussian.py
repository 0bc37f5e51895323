"""``gaussian``: data N(mean, diag(std^2)) in ``dim`` dimensions, known to fmmkit only through samples.

The trainer sees batches of points, as from any data set; :meth:`GaussianData.exact_flow_map` gives
the exact velocity and flow map of the population (:class:`fmmkit.exact.GaussianFlowMap`), which
``fmmkit verify`` and the benchmarks use as the reference. With ``num_points = N > 0`` the data are a
fixed sample of N points (drawn with ``data_seed``) resampled with replacement, like a real data set;
with 0 every batch is a fresh draw from the population.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, DataSource, Interpolant, SupportRegion
from fmmkit.core.validators import each, non_empty, non_negative, positive
from fmmkit.data.balls import chi2_quantile
from fmmkit.exact import GaussianFlowMap, per_coordinate
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class GaussianDataConfig:
    """dim; mean, std (1 entry broadcasts, or ``dim`` entries); num_points (0: fresh draws); data_seed."""

    dim: int = attrs.field(default=2, validator=positive)
    mean: list[float] = attrs.field(factory=lambda: [0.0], validator=non_empty)
    std: list[float] = attrs.field(factory=lambda: [1.0], validator=[non_empty, each(positive)])
    num_points: int = attrs.field(default=0, validator=non_negative)
    data_seed: int = 0


class GaussianData(DataSource):
    """Points mean + std * N(0, I) of shape (dim,), float32."""

    Config = GaussianDataConfig

    def __init__(self, config: GaussianDataConfig = GaussianDataConfig()) -> None:
        self.config = config
        self.shape = (config.dim,)
        self.mean = per_coordinate(config.mean, "mean", self.shape)
        self.std = per_coordinate(config.std, "std", self.shape)
        self.points: Tensor | None = None
        if config.num_points:
            self.points = self._draw(config.num_points, torch.Generator().manual_seed(config.data_seed))

    def _draw(self, n: int, generator: torch.Generator) -> Tensor:
        noise = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return (self.mean + self.std * noise).to(torch.float32)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n points: fresh draws, or drawn with replacement from the fixed sample."""
        if self.points is None:
            return Batch(self._draw(n, generator))
        idx = torch.randint(len(self.points), (n,), generator=generator)
        return Batch(self.points[idx])

    def density(self, x: Tensor) -> Tensor:
        """prod_i N(x_i; mean_i, std_i^2) of the population, shape (B,)."""
        z = (x.double() - self.mean) / self.std
        log_p = -0.5 * z.pow(2) - torch.log(self.std) - 0.5 * math.log(2 * math.pi)
        return log_p.sum(dim=1).exp().to(x.dtype)

    def support_region(self, level: float) -> SupportRegion:
        """The ellipsoid sum_i ((x_i - mean_i) / std_i)^2 <= q, q the ``level`` quantile of chi^2(dim): the
        population's highest-density region of mass ``level`` exactly."""
        q = chi2_quantile(level, math.prod(self.shape))

        def contains(x: Tensor) -> Tensor:
            z = (x.double() - self.mean) / self.std
            return z.pow(2).flatten(1).sum(dim=1) <= q

        return SupportRegion(contains, level, f"inside the {level:g} ellipsoid")

    def bounds(self) -> tuple[float, float]:
        """mean -+ 4 std over every coordinate."""
        return (float((self.mean - 4 * self.std).min()), float((self.mean + 4 * self.std).max()))

    def exact_flow_map(self, interpolant: Interpolant) -> GaussianFlowMap:
        """The population's exact b_t and X_{s,t} under ``interpolant``."""
        return GaussianFlowMap(interpolant, self.mean, self.std)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("gaussian", GaussianData)
