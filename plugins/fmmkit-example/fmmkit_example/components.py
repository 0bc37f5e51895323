"""The example plugin's components, written against fmmkit's public interfaces only."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, DataSource, FlowMap, Interpolant, VelocityField
from fmmkit.core.validators import non_negative, positive
from fmmkit.losses import FlowMapLoss, LossTables, Term


@attrs.define(frozen=True)
class QuadraticConfig:
    """noise: the a of gamma(t) = a sqrt(t (1 - t))."""

    noise: float = attrs.field(default=0.0, validator=non_negative)


class QuadraticInterpolant(Interpolant):
    """alpha(t) = 1 - t^2, beta(t) = t^2: the linear path run on the clock t^2 (slow near the noise)."""

    Config = QuadraticConfig

    def __init__(self, config: QuadraticConfig = QuadraticConfig()) -> None:
        self.noise_scale = config.noise

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t**2

    def beta(self, t: Tensor) -> Tensor:
        return t**2

    def d_alpha(self, t: Tensor) -> Tensor:
        return -2 * t

    def d_beta(self, t: Tensor) -> Tensor:
        return 2 * t


@attrs.define(frozen=True)
class RingConfig:
    """A ring of the given radius with Gaussian radial noise of scale ``width``."""

    radius: float = attrs.field(default=1.5, validator=positive)
    width: float = attrs.field(default=0.1, validator=non_negative)


class Ring(DataSource):
    """Points r (cos a, sin a), a ~ U[0, 2 pi), r ~ N(radius, width^2)."""

    Config = RingConfig
    shape = (2,)

    def __init__(self, config: RingConfig = RingConfig()) -> None:
        self.config = config

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        angle = 2 * math.pi * torch.rand(n, generator=generator)
        radius = self.config.radius + self.config.width * torch.randn(n, generator=generator)
        return Batch(torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1))

    def bounds(self) -> tuple[float, float]:
        edge = self.config.radius + 4 * self.config.width + 0.5
        return (-edge, edge)


@attrs.define(frozen=True)
class PseudoHuberConfig(LossTables):
    """delta: the scale below which the loss is quadratic; ``[loss.times]``, ``[loss.weighting]`` and
    ``[loss.guidance]`` come from fmmkit's LossTables."""

    delta: float = attrs.field(default=0.1, validator=positive)


class PseudoHuberFlowMatching(FlowMapLoss):
    """E sqrt(|v_{t,t}(I_t) - dI_t/dt|^2 + delta^2) - delta: flow matching, robust to outliers.

    A :class:`fmmkit.losses.FlowMapLoss`: fmmkit draws the times (``[loss.times]``, kept off {0, 1}
    for a noisy interpolant), the label dropout and guidance target, and reduces the per-sample
    values with ``[loss.weighting]``; this class only says what one sample's loss is.
    """

    Config = PseudoHuberConfig
    trains_flow_map = False

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        t = self.sample_times(len(batch), batch.x1)
        path = self.draw(batch, t)
        target = self.velocity_target(model, path, batch.y)
        sq = (model.velocity(path.x_t, t, batch.y) - target).pow(2).flatten(1).sum(dim=1)
        delta = self.config.delta
        return [Term("pseudo_huber", torch.sqrt(sq + delta**2) - delta, t, t)]
