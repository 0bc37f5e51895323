"""``in_support``: the share of generated samples that land where the data lives (higher is better).

in_support = (1 / N) sum_i 1[x_i in R], R = ``data.support_region(level)`` (see
:class:`fmmkit.core.SupportRegion`):

- data with bounded support: R = {x : p(x) > 0}, so the data itself scores exactly 1
  (``checkerboard``: inside the 8 occupied squares);
- data with unbounded support: R is a high-density region and the data scores its mass P_data(R)
  (``SupportRegion.mass``): ``gaussian`` (any dimension) the ellipsoid |(x - mean) / std|^2 <= chi^2_dim
  quantile of ``level`` (mass = level); ``eight_gaussians`` the union of the discs of radius
  std sqrt(-2 log(1 - level)) around the centres (mass = level plus the other modes' Rice-CDF share,
  0.990002 for the defaults).

Blurry samples spill out of R, so the score falls below the data's. The reference sample is not used
(R is exact). Data that defines no region (``two_moons``, ``pinwheel``, ``spirals``, ``npy``) scores NaN
for 2D points, so that the default 2D metric list still evaluates every 2D run; any other data raises
ValueError (a spec error in ``fmmkit eval``).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fmmkit.core import DataSource, Metric
from fmmkit.core.validators import SpecValueError
from fmmkit.hookspecs import hookimpl


def _open_unit_interval(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value < 1:
        raise SpecValueError(attribute.name, f"must be in (0, 1), got {value!r}")


@attrs.define(frozen=True)
class InSupportConfig:
    """level: probability of the high-density region for data with unbounded support (ignored when the
    support is bounded)."""

    level: float = attrs.field(default=0.99, validator=_open_unit_interval)


class InSupport(Metric):
    """Fraction of samples inside the data's support or high-density region (the data scores its mass)."""

    Config = InSupportConfig
    higher_is_better = True

    def __init__(self, config: InSupportConfig = InSupportConfig()) -> None:
        self.config = config

    def nominal(self, data: DataSource) -> float:
        """The data's own score P_data(R); NaN when the data defines no region."""
        region = data.support_region(self.config.level)
        return math.nan if region is None else region.mass

    def __call__(self, samples: Tensor, reference: Tensor, data: DataSource) -> float:
        region = data.support_region(self.config.level) if data is not None else None
        if region is None:
            if samples.shape[1:] == (2,):
                return math.nan
            raise ValueError(f"in_support needs data that defines a support region ({type(data).__name__} does not)")
        inside = region.contains(samples.detach().cpu())
        assert inside.shape == (samples.shape[0],), f"support region returned shape {tuple(inside.shape)}"
        return float(inside.to(torch.float64).mean())


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    register("in_support", InSupport)
