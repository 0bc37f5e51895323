"""``gaussian`` teacher: the exact velocity of data N(mean, diag(std^2)) under the run's interpolant.

A spec says ``[teacher] kind = "gaussian"`` with ``mean`` and ``std`` lists (one entry per data
coordinate, or a single entry for all of them); ``build`` returns a :class:`fmmkit.exact.GaussianFlowMap`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import attrs

from fmmkit.core import BuildContext, Component, Interpolant
from fmmkit.core.validators import each, non_empty, positive
from fmmkit.exact import ExactFlowMap, GaussianFlowMap, per_coordinate
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class GaussianTeacherConfig:
    """mean, std: per-coordinate mean and standard deviation of the data (length 1 broadcasts)."""

    mean: list[float] = attrs.field(validator=non_empty)
    std: list[float] = attrs.field(validator=[non_empty, each(positive)])


class ExactTeacher(Component):
    """A teacher that is an exact map of Gaussian data (:mod:`fmmkit.exact`) under the run's interpolant,
    its parameters given per data coordinate."""

    @classmethod
    def build(cls, config: Any, ctx: BuildContext) -> ExactFlowMap:
        if ctx.interpolant is None:
            raise ValueError(f"the {cls.__name__} is built after the interpolant; ctx.interpolant is None")
        return cls.exact(config, ctx.interpolant, tuple(ctx.data_shape))

    @classmethod
    @abstractmethod
    def exact(cls, config: Any, interpolant: Interpolant, shape: tuple[int, ...]) -> ExactFlowMap:
        """The exact map for data points of ``shape``."""


class GaussianTeacher(ExactTeacher):
    """Builds the exact Gaussian oracle for the run's interpolant and data shape."""

    Config = GaussianTeacherConfig

    @classmethod
    def exact(cls, config: GaussianTeacherConfig, interpolant: Interpolant, shape: tuple[int, ...]) -> GaussianFlowMap:
        return GaussianFlowMap(interpolant, per_coordinate(config.mean, "mean", shape),
                               per_coordinate(config.std, "std", shape))


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("gaussian", GaussianTeacher)
