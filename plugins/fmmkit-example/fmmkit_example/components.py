"""The example plugin's components, written against fmmkit's public interfaces only."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, DataSource, FlowMap, Interpolant, Loss, LossOutput, VelocityField
from fmmkit.core.validators import non_negative, positive
from fmmkit.losses.times import TimeSampling


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
class PseudoHuberConfig:
    """delta: the scale below which the loss is quadratic."""

    delta: float = attrs.field(default=0.1, validator=positive)
    times: TimeSampling = attrs.field(factory=TimeSampling)


class PseudoHuberFlowMatching(Loss):
    """E sqrt(|v_{t,t}(I_t) - dI_t/dt|^2 + delta^2) - delta: flow matching, robust to outliers."""

    Config = PseudoHuberConfig
    trains_flow_map = False

    def __call__(
        self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None, step: int = 0
    ) -> LossOutput:
        t = self.config.times.sample(len(batch), batch.x1.device)
        path = self.interpolant.draw(batch.x1, t)
        sq = (model.velocity(path.x_t, t, batch.y) - path.dx_t).pow(2).flatten(1).sum(dim=1)
        delta = self.config.delta
        loss = (torch.sqrt(sq + delta**2) - delta).mean()
        return LossOutput(loss, {"pseudo_huber": loss.detach()})
