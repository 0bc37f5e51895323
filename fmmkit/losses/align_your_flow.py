"""``ayf_eulerian`` and ``ayf_lagrangian``: Align Your Flow distillation (Sabour et al. 2025, 2506.14603).

AYF trains the average velocity with a stop-gradient target built from the map's tangent, normalised
and warmed up. In fmmkit's convention (noise at t = 0; AYF runs time from noise at 1 to data at 0 and
its F is our v after t -> 1 - t, up to sign) with X_{s,t} = x + (t - s) v_{s,t}, s < t:

  Eulerian   g = b^_s(I_s) - v_{s,t}(I_s) + r (t - s) (d/ds v_{s,t} + grad_x v_{s,t} b^_s)(I_s)
             (the EMD residual d/ds X + grad_x X b^; one JVP in (x, s) with tangent (b^_s, 1))
  Lagrangian g = b^_t(sg X_{s,t}(I_s)) - v_{s,t}(I_s) - r (t - s) d/dt v_{s,t}(I_s)
             (minus the LMD residual d/dt X - b^_t(X); one JVP in t)

  L = E |v_{s,t}(I_s) - sg(v_{s,t}(I_s) + g / (|g| + c))|^2
  (2506.14603, with the tangent normalisation of sCM, 2410.11081)

The gradient is -2 g / (|g| + c) . dv/dtheta: the JVP is never differentiated. ``tangent_norm`` is c
(0.1; 0 turns normalisation off) and r ramps linearly from 0 to 1 over ``warmup_steps`` (the
regularised tangent warm-up: at r = 0 the update is flow-matching-like distillation of b^). With r = 1
the residual, and the loss, vanish at the exact flow map of b^.
"""

from __future__ import annotations

import torch

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import broadcast_time
from fmmkit.core.derivatives import lagrangian_velocity_derivative
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, TangentConfig, Term, normalized, ramp, semigradient_squares


class AlignYourFlowEulerian(FlowMapLoss):
    """AYF-EMD: normalised, warmed-up Eulerian tangent as a stop-gradient target for v_{s,t}."""

    Config = TangentConfig
    requires_teacher = True

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s, t, x_s, b = self.teacher_start(batch, teacher)
        v, transport = self.eulerian_parts(model, x_s, s, t, b, batch.y)
        g = (b - v + ramp(step, self.config.warmup_steps) * transport).detach()
        return [Term("eulerian", semigradient_squares(v, normalized(g, self.config.tangent_norm)), s, t)]


class AlignYourFlowLagrangian(FlowMapLoss):
    """AYF-LMD: normalised, warmed-up Lagrangian tangent as a stop-gradient target for v_{s,t}."""

    Config = TangentConfig
    requires_teacher = True

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s, t = self.sample_pairs(len(batch), batch.x1)
        x_s = self.draw(batch, s).x_t
        v, dt_v = lagrangian_velocity_derivative(model, x_s, s, t, y=batch.y, method=self.config.derivative)
        gap = broadcast_time(t - s, v).to(v.dtype)
        with torch.no_grad():
            b = self.teacher_velocity(teacher, (x_s + gap * v).detach(), t, batch.y)
        g = (b - v - ramp(step, self.config.warmup_steps) * gap * dt_v).detach()
        return [Term("lagrangian", semigradient_squares(v, normalized(g, self.config.tangent_norm)), s, t)]


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("ayf_eulerian", AlignYourFlowEulerian)
    register("ayf_lagrangian", AlignYourFlowLagrangian)
