"""``flow_map``: K jumps of a learned flow map, x <- X_{t_k, t_{k+1}}(x) on a grid 0 = t_0 < ... < t_K = 1.

With an exact flow map every grid gives the same sample (the semigroup law
X_{u,t}(X_{s,u}(x)) = X_{s,t}(x)); with a learned one, more steps trade NFE = K for accuracy.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import FlowMapLike, SampleResult, Sampler
from fmmkit.core.flow_map import time_dtype
from fmmkit.core.validators import SpecValueError, positive
from fmmkit.hookspecs import hookimpl


def _check_grid(instance: Any, attribute: attrs.Attribute[Any], grid: list[float] | None) -> None:
    if grid is None:
        return
    if len(grid) < 2:
        raise SpecValueError(attribute.name, f"needs at least two times (0 and 1), got {grid!r}")
    if grid[0] != 0 or grid[-1] != 1:
        raise SpecValueError(attribute.name, f"must start at 0 and end at 1, got {grid!r}")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise SpecValueError(attribute.name, f"must be strictly increasing, got {grid!r}")


@attrs.define(frozen=True)
class FlowMapSamplerConfig:
    """steps: K jumps on the grid t_k = 1 - (1 - k/K)^grid_power (grid_power 1: equal jumps); grid: custom
    times [0, ..., 1] instead (then K = len(grid) - 1); keep_trajectory."""

    steps: int = attrs.field(default=1, validator=positive)
    grid: list[float] | None = attrs.field(default=None, validator=_check_grid)
    keep_trajectory: bool = False
    #: > 1 moves the grid's inner times towards the data (t = 1): for two steps t_1 = 1 - 2^-grid_power
    grid_power: float = attrs.field(default=1.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.grid is not None and self.steps not in (1, len(self.grid) - 1):
            raise SpecValueError(
                "steps", f"is {self.steps} but grid has {len(self.grid) - 1} intervals; drop steps or make them agree"
            )


class FlowMapSampler(Sampler):
    """x_{k+1} = X_{t_k, t_{k+1}}(x_k) from x_0 = noise; NFE = K."""

    Config = FlowMapSamplerConfig
    uses_flow_map = True

    def __init__(self, config: FlowMapSamplerConfig = FlowMapSamplerConfig()) -> None:
        self.config = config

    @property
    def times(self) -> list[float]:
        """The time grid t_0 = 0 < ... < t_K = 1."""
        if self.config.grid is not None:
            return [float(t) for t in self.config.grid]
        k, power = self.config.steps, self.config.grid_power
        if power == 1:
            return [i / k for i in range(k + 1)]
        return [0.0, *(1 - (1 - i / k) ** power for i in range(1, k)), 1.0]

    @property
    def label(self) -> str:
        k = len(self.times) - 1
        if self.config.grid is not None:
            return f"flow_map({k}, grid)"
        return f"flow_map({k})" if self.config.grid_power == 1 else f"flow_map({k}, power {self.config.grid_power:g})"

    def __call__(self, model: FlowMapLike, x0: Tensor, y: Tensor | None = None) -> SampleResult:  # type: ignore[override]
        grid = self.times
        x = x0
        trajectory = [x] if self.config.keep_trajectory else None
        for s, t in zip(grid, grid[1:]):
            s_b = torch.full((x.shape[0],), s, dtype=time_dtype(x), device=x.device)
            t_b = torch.full_like(s_b, t)
            x = model(x, s_b, t_b, y)
            if trajectory is not None:
                trajectory.append(x)
        return SampleResult(x=x, nfe=len(grid) - 1, trajectory=trajectory)


@hookimpl
def register_samplers(register) -> None:  # type: ignore[no-untyped-def]
    register("flow_map", FlowMapSampler)
