"""A second outside plugin, used by ``tests/test_plugin_path.py``: one component of each kind a plugin
author writes first (interpolant, backbone, loss, data set, metric), written against fmmkit's public
API only, and a few deliberately broken plugins for the error paths.

Installed in the tests by writing a ``fmmkit_outside_plugin-1.0.dist-info`` (distribution
``fmmkit-outside-plugin``, entry point ``outside = fmmkit_outside``) next to this folder on sys.path.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from fmmkit import hookimpl
from fmmkit.core import Backbone, Batch, BuildContext, DataSource, FlowMap, Interpolant, Loss, LossOutput, Metric
from fmmkit.core import VelocityField
from fmmkit.core.validators import non_negative, positive
from fmmkit.losses import FlowMapLoss, LossTables, Term

__version__ = "1.0"


@attrs.define(frozen=True)
class SmoothstepConfig:
    noise: float = attrs.field(default=0.0, validator=non_negative)


class SmoothstepInterpolant(Interpolant):
    """beta(t) = 3 t^2 - 2 t^3 (smoothstep), alpha = 1 - beta."""

    Config = SmoothstepConfig

    def __init__(self, config: SmoothstepConfig = SmoothstepConfig()) -> None:
        self.noise_scale = config.noise

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - self.beta(t)

    def beta(self, t: Tensor) -> Tensor:
        return 3 * t**2 - 2 * t**3

    def d_alpha(self, t: Tensor) -> Tensor:
        return -self.d_beta(t)

    def d_beta(self, t: Tensor) -> Tensor:
        return 6 * t - 6 * t**2


@attrs.define(frozen=True)
class TinyConfig:
    width: int = attrs.field(default=32, validator=positive)


class TinyMLP(Backbone):
    """v(x, s, t) = MLP([x, s, t]) for vector data."""

    Config = TinyConfig

    def __init__(self, config: TinyConfig, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 2, config.width), nn.SiLU(), nn.Linear(config.width, dim))

    @classmethod
    def build(cls, config: TinyConfig, ctx: BuildContext) -> TinyMLP:
        return cls(config, int(torch.tensor(ctx.data_shape).prod()))

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h = torch.cat([x.flatten(1), s[:, None].to(x.dtype), t[:, None].to(x.dtype)], dim=1)
        return self.net(h).reshape(x.shape)


@attrs.define(frozen=True)
class GapConfig(LossTables):
    """scale: a factor on the loss."""

    scale: float = attrs.field(default=1.0, validator=positive)


class ScaledFlowMatching(FlowMapLoss):
    """scale * |v_{t,t}(I_t) - dI_t/dt|^2: a plugin loss on fmmkit's loss kit ([loss.times] and all)."""

    Config = GapConfig
    trains_flow_map = False

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        t = self.sample_times(len(batch), batch.x1)
        path = self.draw(batch, t)
        residual = model.velocity(path.x_t, t, batch.y) - self.velocity_target(model, path, batch.y)
        return [Term("scaled_fm", self.config.scale * residual.pow(2).flatten(1).mean(1), t, t)]


class NoiseFirstFlowMatching(Loss):
    """Plain flow matching whose first random draw is its noise x0, shaped like the data."""

    trains_flow_map = False

    def __call__(self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None,
                 step: int = 0) -> LossOutput:
        x0 = torch.randn_like(batch.x1)
        t = torch.rand(len(batch), dtype=batch.x1.dtype)
        tb = t.reshape(-1, *([1] * (batch.x1.ndim - 1)))
        x_t = self.interpolant.alpha(tb) * x0 + self.interpolant.beta(tb) * batch.x1
        dx_t = self.interpolant.d_alpha(tb) * x0 + self.interpolant.d_beta(tb) * batch.x1
        loss = (model.velocity(x_t, t) - dx_t).pow(2).flatten(1).mean(1).mean()
        return LossOutput(loss, {"fm": loss.detach()})


@attrs.define(frozen=True)
class BlobConfig:
    center: list[float] = attrs.field(factory=lambda: [0.5, -0.5])
    scale: float = attrs.field(default=0.5, validator=positive)


class Blob(DataSource):
    """N(center, scale^2 I) in 2D."""

    Config = BlobConfig
    shape = (2,)

    def __init__(self, config: BlobConfig = BlobConfig()) -> None:
        self.config = config

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        noise = torch.randn(n, 2, generator=generator)
        return Batch(torch.tensor(self.config.center) + self.config.scale * noise)

    def bounds(self) -> tuple[float, float]:
        return (-3.0, 3.0)


@attrs.define(frozen=True)
class MeanGapConfig:
    """power p of the gap |mean(samples) - mean(reference)|^p (summed over coordinates)."""

    power: float = attrs.field(default=1.0, validator=positive)


class MeanGap(Metric):
    Config = MeanGapConfig

    def __init__(self, config: MeanGapConfig = MeanGapConfig()) -> None:
        self.config = config

    @classmethod
    def build(cls, config: MeanGapConfig, ctx: BuildContext) -> MeanGap:
        if config.power > 10:
            raise RuntimeError("power above 10 overflows")  # a plugin bug, on purpose
        return cls(config)

    def __call__(self, samples: Tensor, reference: Tensor, data: DataSource | None = None) -> float:
        gap = samples.double().flatten(1).mean(0) - reference.double().flatten(1).mean(0)
        return float(gap.abs().pow(self.config.power).sum())


@hookimpl
def register_interpolants(register) -> None:  # type: ignore[no-untyped-def]
    register("smoothstep", SmoothstepInterpolant)


@hookimpl
def register_backbones(register) -> None:  # type: ignore[no-untyped-def]
    register("tiny_mlp", TinyMLP)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("scaled_flow_matching", ScaledFlowMatching)
    register("noise_first_flow_matching", NoiseFirstFlowMatching)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("blob", Blob)


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    register("mean_gap", MeanGap)
