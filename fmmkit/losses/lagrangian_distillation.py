"""``lagrangian_distillation`` (LMD): distill a flow map from a frozen teacher velocity.

L(theta) = E_{s<t, I_s} |d/dt X_{s,t}(I_s) - b^_t(X_{s,t}(I_s))|^2      (Boffi et al. 2024, eq. 3.8)

b^ is the frozen teacher (guided with ``[loss.guidance] scale`` for labelled data); d/dt X_{s,t} is one
forward-mode JVP in t with tangent 1, which also returns X_{s,t}(I_s). ``semigradient = true`` stops
the gradient through the teacher's input: b^_t(sg X_{s,t}(I_s)). At the exact flow map of b^ the
residual vanishes, so the minimum is 0.
"""

from __future__ import annotations

import attrs

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.core.validators import one_of
from fmmkit.core.derivatives import DERIVATIVE_METHODS, time_derivative
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term


@attrs.define(frozen=True)
class LagrangianDistillationConfig(LossTables):
    """semigradient: stop-gradient on X inside the teacher; derivative: jvp or finite_difference."""

    semigradient: bool = False
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))


class LagrangianDistillation(FlowMapLoss):
    """|d/dt X_{s,t}(I_s) - b^_t(X_{s,t}(I_s))|^2 against a frozen teacher b^."""

    Config = LagrangianDistillationConfig
    requires_teacher = True

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s, t = self.sample_pairs(len(batch), batch.x1)
        x_s = self.draw(batch, s).x_t
        x_st, dt_x_st = time_derivative(model, x_s, s, t, y=batch.y, method=self.config.derivative)
        teacher_input = x_st.detach() if self.config.semigradient else x_st
        target = self.teacher_velocity(teacher, teacher_input, t, batch.y)
        return [Term("lagrangian", mean_squares(dt_x_st - target), s, t)]


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("lagrangian_distillation", LagrangianDistillation)
