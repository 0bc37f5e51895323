"""``eulerian_distillation`` (EMD): distill a flow map from a frozen teacher with the Eulerian equation.

L(theta) = E_{s<t, I_s} |d/ds X_{s,t}(I_s) + grad_x X_{s,t}(I_s) b^_s(I_s)|^2      (Boffi et al. 2024, 2406.07507)

The residual is one forward-mode JVP in (s, x) with tangent (1, b^_s(I_s)). It is taken on the average
velocity, since with X = x + (t - s) v

    R = d/ds X + grad_x X b^ = b^_s - v_{s,t} + (t - s) (d/ds v_{s,t} + grad_x v_{s,t} b^_s),

and the full form minimises |R|^2 with gradients through the JVP. ``semigradient = true`` stops the
gradient through the derivative: |v_{s,t}(I_s) - sg(b^_s + (t - s) D v_{s,t})|^2, the same value with
gradient -2 R . dv/dtheta (one backward through the forward pass only; MeanFlow's update with the
teacher in place of dI/ds). The seed paper found the Lagrangian schemes more stable. At the exact flow
map of b^ the residual vanishes.
"""

from __future__ import annotations

import attrs

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.core.validators import one_of
from fmmkit.core.derivatives import DERIVATIVE_METHODS
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term, semigradient_squares


@attrs.define(frozen=True)
class EulerianDistillationConfig(LossTables):
    """semigradient: stop-gradient on the JVP term; derivative: jvp or finite_difference."""

    semigradient: bool = False
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))


class EulerianDistillation(FlowMapLoss):
    """|d/ds X_{s,t}(I_s) + grad_x X_{s,t}(I_s) b^_s(I_s)|^2 against a frozen teacher b^."""

    Config = EulerianDistillationConfig
    requires_teacher = True

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s, t, x_s, b = self.teacher_start(batch, teacher)
        v, transport = self.eulerian_parts(model, x_s, s, t, b, batch.y)
        if self.config.semigradient:
            values = semigradient_squares(v, b - v + transport.detach())
        else:
            values = mean_squares(b - v + transport)
        return [Term("eulerian", values, s, t)]


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("eulerian_distillation", EulerianDistillation)
