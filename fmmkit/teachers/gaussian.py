"""``gaussian`` teacher: the exact velocity of data N(mean, diag(std^2)) under the run's interpolant.

A spec says ``[teacher] kind = "gaussian"`` with ``mean`` and ``std`` lists (one entry per data
coordinate, or a single entry for all of them); ``build`` returns a :class:`fmmkit.exact.GaussianFlowMap`.
"""

from __future__ import annotations

import math

import attrs
import torch

from fmmkit.core import BuildContext, Component
from fmmkit.core.validators import SpecValueError, each, positive
from fmmkit.exact import GaussianFlowMap
from fmmkit.hookspecs import hookimpl


def _non_empty(instance: object, attribute: attrs.Attribute[list[float]], value: list[float]) -> None:
    if len(value) == 0:
        raise SpecValueError(attribute.name, "must have at least one entry")


@attrs.define(frozen=True)
class GaussianTeacherConfig:
    """mean, std: per-coordinate mean and standard deviation of the data (length 1 broadcasts)."""

    mean: list[float] = attrs.field(validator=_non_empty)
    std: list[float] = attrs.field(validator=[_non_empty, each(positive)])


class GaussianTeacher(Component):
    """Builds the exact Gaussian oracle for the run's interpolant and data shape."""

    Config = GaussianTeacherConfig

    @classmethod
    def build(cls, config: GaussianTeacherConfig, ctx: BuildContext) -> GaussianFlowMap:
        if ctx.interpolant is None:
            raise ValueError("the gaussian teacher is built after the interpolant; ctx.interpolant is None")
        size = math.prod(ctx.data_shape) if ctx.data_shape else None
        params = {}
        for name in ("mean", "std"):
            values = torch.tensor(getattr(config, name), dtype=torch.float64)
            if size is None:
                params[name] = values
            elif values.numel() == 1:
                params[name] = values.expand(size).reshape(ctx.data_shape)
            elif values.numel() == size:
                params[name] = values.reshape(ctx.data_shape)
            else:
                raise SpecValueError(
                    name, f"has {values.numel()} entries but data points have {size} coordinates; give 1 or {size}"
                )
        return GaussianFlowMap(ctx.interpolant, params["mean"], params["std"])


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("gaussian", GaussianTeacher)
