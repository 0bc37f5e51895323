"""``gaussian`` teacher: the exact velocity of data N(mean, diag(std^2)) under the run's interpolant.

A spec says ``[teacher] kind = "gaussian"`` with ``mean`` and ``std`` lists (one entry per data
coordinate, or a single entry for all of them); ``build`` returns a :class:`fmmkit.exact.GaussianFlowMap`.
"""

from __future__ import annotations

import attrs

from fmmkit.core import BuildContext, Component
from fmmkit.core.validators import each, non_empty, positive
from fmmkit.exact import GaussianFlowMap, per_coordinate
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class GaussianTeacherConfig:
    """mean, std: per-coordinate mean and standard deviation of the data (length 1 broadcasts)."""

    mean: list[float] = attrs.field(validator=non_empty)
    std: list[float] = attrs.field(validator=[non_empty, each(positive)])


class GaussianTeacher(Component):
    """Builds the exact Gaussian oracle for the run's interpolant and data shape."""

    Config = GaussianTeacherConfig

    @classmethod
    def build(cls, config: GaussianTeacherConfig, ctx: BuildContext) -> GaussianFlowMap:
        if ctx.interpolant is None:
            raise ValueError("the gaussian teacher is built after the interpolant; ctx.interpolant is None")
        shape = tuple(ctx.data_shape)
        mean = per_coordinate(config.mean, "mean", shape)
        std = per_coordinate(config.std, "std", shape)
        return GaussianFlowMap(ctx.interpolant, mean, std)


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("gaussian", GaussianTeacher)
