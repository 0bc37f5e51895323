"""``gaussian_mixture`` teacher: the exact velocity of a Gaussian mixture under the run's interpolant.

Data sum_k pi_k N(m_k, std_k^2 I); a spec gives ``weights`` (K entries, normalised), ``means`` (K
lists, each of one entry per data coordinate or a single entry for all), ``stds`` (K entries) and
``steps`` (RK4 steps of the flow map's ODE solve). ``build`` returns a
:class:`fmmkit.exact.GaussianMixtureFlowMap`.
"""

from __future__ import annotations

import attrs
import torch

from fmmkit.core import BuildContext, Component
from fmmkit.core.validators import SpecValueError, each, non_empty, positive
from fmmkit.exact import GaussianMixtureFlowMap, per_coordinate
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class GaussianMixtureTeacherConfig:
    """weights (K), means (K lists), stds (K): the mixture; steps: RK4 steps for X_{s,t}."""

    weights: list[float] = attrs.field(validator=[non_empty, each(positive)])
    means: list[list[float]] = attrs.field(validator=non_empty)
    stds: list[float] = attrs.field(validator=[non_empty, each(positive)])
    steps: int = attrs.field(default=200, validator=positive)

    def __attrs_post_init__(self) -> None:
        k = len(self.weights)
        for name in ("means", "stds"):
            if len(getattr(self, name)) != k:
                raise SpecValueError(name, f"has {len(getattr(self, name))} entries but weights has {k}; give one per component")


class GaussianMixtureTeacher(Component):
    """Builds the exact mixture velocity (and ODE-solved flow map) for the run's interpolant."""

    Config = GaussianMixtureTeacherConfig

    @classmethod
    def build(cls, config: GaussianMixtureTeacherConfig, ctx: BuildContext) -> GaussianMixtureFlowMap:
        if ctx.interpolant is None:
            raise ValueError("the gaussian_mixture teacher is built after the interpolant; ctx.interpolant is None")
        shape = tuple(ctx.data_shape)
        if not shape and len({len(m) for m in config.means}) != 1:
            raise SpecValueError("means", "entries must all have the same length")
        means = torch.stack([per_coordinate(m, f"means[{i}]", shape) for i, m in enumerate(config.means)])
        return GaussianMixtureFlowMap(torch.tensor(config.weights), means, torch.tensor(config.stds),
                                      steps=config.steps, interpolant=ctx.interpolant)


@hookimpl
def register_teachers(register) -> None:  # type: ignore[no-untyped-def]
    register("gaussian_mixture", GaussianMixtureTeacher)
