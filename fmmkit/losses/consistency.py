"""``consistency_training`` and ``consistency_distillation``: continuous-time consistency models (sCM,
Lu & Song 2024, 2410.11081) as the special case of a flow map with a fixed end time.

A consistency model maps a point at any time to data. The papers run time from data at 0 to noise at
T and learn f(x_t, t) = X_{t -> 0}, "the s = 0 flow map"; in fmmkit's convention (noise at 0, data at
1) that is X_{s,1}, so here the end time is t = 1 and the start time s is drawn from ``times``. Samples
come from X_{0,1} in one step (multi-step flow-map sampling is not trained: set ``[sample] steps = [1]``).

With X_{s,1} = x + (1 - s) v_{s,1} and a velocity b (the guided teacher b^_s(I_s) for distillation,
dI_s/ds for training) the consistency condition d/ds X_{s,1}(x_s) = 0 along the ODE has the residual

    g = d/ds X_{s,1} + grad_x X_{s,1} b = b - v_{s,1} + r (1 - s) (d/ds v_{s,1} + grad_x v_{s,1} b),

one JVP in (x, s) with tangent (b, 1) (sCM's tangent in this convention; NOTES: CD is the EMD
semigradient restricted to t = 1, CT with the Monte-Carlo dI/ds is the MeanFlow update at t = 1). The
loss is |v_{s,1} - sg(v_{s,1} + g / (|g| + c))|^2: sCM's tangent normalisation (c = ``tangent_norm``)
and tangent warm-up (r ramps 0 -> 1 over ``warmup_steps``). At the exact map with r = 1 the CD residual
vanishes; the CT residual is -grad_x X_{s,1} (dI_s/ds - b_s), zero in conditional mean (a fixed point).

sCM options (/work/notes/frontier.md Sec. 4): ``parameterization = "trigflow"`` builds the model as
sCM's TrigFlow map X_{s,t}(x) = cos(h) x + sin(h) sigma_d F_{s,t}(x), h = (pi / 2)(t - s)
(:class:`fmmkit.core.flow_map.TrigFlowMap`; meant for the ``trig`` interpolant with data of standard
deviation ``sigma_data``); ``prior_weighting = true`` multiplies each sample's loss by sCM's prior
weighting 1 / (sigma_d tan tau) = tan(pi s / 2) / sigma_d (tau = (pi / 2)(1 - s) is TrigFlow's time).
Consistency training with guidance (scale != 1) is refused: its guided tangent would need v_{s,s},
which this loss never trains (it learns X_{s,1} only). Multi-step samples use the ``consistency``
sampler (jump to data, re-noise), the loss's ``default_sampler``.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.flow_map import PARAMETERIZATIONS
from fmmkit.core.validators import SpecValueError, one_of, positive
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, TangentConfig, Term, normalized, ramp, semigradient_squares


@attrs.define(frozen=True)
class ConsistencyConfig(TangentConfig):
    """parameterization of the model ("average_velocity": X = x + (t - s) v; "trigflow": sCM's);
    sigma_data of TrigFlow; prior_weighting: sCM's 1 / (sigma_d tan tau) per sample."""

    parameterization: str = attrs.field(default="average_velocity", validator=one_of(PARAMETERIZATIONS))
    sigma_data: float = attrs.field(default=1.0, validator=positive)
    prior_weighting: bool = False


@attrs.define(frozen=True)
class ConsistencyTrainingConfig(ConsistencyConfig):
    """As :class:`ConsistencyConfig`; guidance.scale must stay 1 (no v_{s,s} to guide with)."""

    def __attrs_post_init__(self) -> None:
        if self.guidance.guides:
            raise SpecValueError("guidance.scale", "consistency_training learns only X_(s,1), so it has no velocity "
                                 "v_(s,s) to build a guided target from; use scale = 1, or distil a guided teacher "
                                 "with kind = \"consistency_distillation\"")


class ConsistencyTraining(FlowMapLoss):
    """Continuous-time consistency training of X_{s,1}: the tangent is dI_s/ds (no teacher)."""

    Config = ConsistencyTrainingConfig
    default_sampler = "consistency"

    def prior_weight(self, s: Tensor) -> Tensor | float:
        """sCM's prior weighting tan(pi s / 2) / sigma_d (1 when off)."""
        if not self.config.prior_weighting:
            return 1.0
        return torch.tan(math.pi / 2 * s) / self.config.sigma_data

    def tangent(self, model: FlowMap, batch: Batch, s: Tensor, teacher: VelocityField | None) -> tuple[Tensor, Tensor]:
        """(I_s, b): the start points and the velocity along which X_{s,1} must stay constant."""
        path = self.draw(batch, s)
        return path.x_t, self.velocity_target(model, path, batch.y).detach()

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s = self.sample_times(len(batch), batch.x1)
        t = torch.ones_like(s)
        x_s, b = self.tangent(model, batch, s, teacher)
        v, transport = self.eulerian_parts(model, x_s, s, t, b, batch.y)
        g = (b - v + ramp(step, self.config.warmup_steps) * transport).detach()
        values = self.prior_weight(s) * semigradient_squares(v, normalized(g, self.config.tangent_norm))
        return [Term("consistency", values, s, t)]


class ConsistencyDistillation(ConsistencyTraining):
    """Continuous-time consistency distillation of X_{s,1}: the tangent is the teacher b^_s(I_s)."""

    Config = ConsistencyConfig
    requires_teacher = True

    def tangent(self, model: FlowMap, batch: Batch, s: Tensor, teacher: VelocityField | None) -> tuple[Tensor, Tensor]:
        x_s = self.draw(batch, s).x_t
        with torch.no_grad():
            return x_s, self.teacher_velocity(teacher, x_s, s, batch.y)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("consistency_training", ConsistencyTraining)
    register("consistency_distillation", ConsistencyDistillation)
