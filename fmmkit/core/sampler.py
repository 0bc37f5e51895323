"""Samplers: turn noise x0 ~ N(0, I) at t = 0 into samples at t = 1."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor

from fmmkit.core.component import Component
from fmmkit.core.velocity import FlowMapLike, VelocityField


@dataclass
class SampleResult:
    """Samples x at t = 1 and the number of network evaluations (NFE) per sample spent on them."""

    x: Tensor
    nfe: int
    trajectory: list[Tensor] | None = None


class Sampler(Component, ABC):
    """``sampler(model, x0, y) -> SampleResult``.

    ``uses_flow_map`` is True when the sampler jumps with X_{s,t}; otherwise it integrates the ODE
    dx/dt = b_t(x) with the model's (or a teacher's) velocity.
    """

    uses_flow_map: bool = False

    @abstractmethod
    def __call__(self, model: FlowMapLike | VelocityField, x0: Tensor, y: Tensor | None = None) -> SampleResult:
        """Map noise x0 (B, ...) at t = 0 to samples at t = 1."""

    @property
    def label(self) -> str:
        """A short name for tables, e.g. ``flow_map(4)``."""
        return type(self).__name__
