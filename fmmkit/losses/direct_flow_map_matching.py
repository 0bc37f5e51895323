"""``direct_flow_map_matching``: flow map matching on the interpolant, no teacher (Boffi, Albergo &
Vanden-Eijnden 2024, 2406.07507).

L(theta) = E_{s,t} [ |d_2 X_{s,t}(y) - dI_t/dt|^2 + lambda |X_{s,t}(y) - I_t|^2 ],   y = X_{t,s}(I_t),

where d_2 is the partial derivative in the second time with y held fixed (one JVP in t), and the second
term enforces invertibility X_{s,t}(X_{t,s}(x)) = x. Pairs (s, t) are drawn in both orders
(``times.order = "both"``) since the objective needs the backward map X_{t,s}. Gradients reach both
maps. At the exact map the invertibility term is 0 and d_2 X_{s,t}(y) = b_t(I_t), so the loss equals
the conditional variance E_t |dI_t/dt - b_t(I_t)|^2 (the flow-matching floor). ``invertibility_weight``
is lambda (1 in the paper).
"""

from __future__ import annotations

import attrs

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.core.validators import non_negative, one_of
from fmmkit.core.derivatives import DERIVATIVE_METHODS, time_derivative
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term
from fmmkit.losses.times import PAIR_ORDERS, TimeSampling


@attrs.define(frozen=True)
class BothOrders(TimeSampling):
    """Time sampling with pairs in both orders by default (the objective needs X_{t,s} and X_{s,t})."""

    order: str = attrs.field(default="both", validator=one_of(PAIR_ORDERS))


@attrs.define(frozen=True)
class DirectFlowMapMatchingConfig(LossTables):
    """invertibility_weight: lambda; derivative: jvp or finite_difference; times (both orders by default)."""

    times: BothOrders = attrs.field(factory=BothOrders)
    invertibility_weight: float = attrs.field(default=1.0, validator=non_negative)
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))


class DirectFlowMapMatching(FlowMapLoss):
    """|d_2 X_{s,t}(X_{t,s}(I_t)) - dI_t/dt|^2 + lambda |X_{s,t}(X_{t,s}(I_t)) - I_t|^2."""

    Config = DirectFlowMapMatchingConfig

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s, t = self.sample_pairs(len(batch), batch.x1)
        path = self.draw(batch, t)
        y = batch.y
        back = model(path.x_t, t, s, y)
        x_st, dt_x_st = time_derivative(model, back, s, t, y=y, method=self.config.derivative)
        lagrangian = mean_squares(dt_x_st - self.velocity_target(model, path, y))
        invertibility = mean_squares(x_st - path.x_t)
        values = lagrangian + self.config.invertibility_weight * invertibility
        return [Term("direct", values, s, t, parts={"lagrangian": lagrangian, "invertibility": invertibility})]


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("direct_flow_map_matching", DirectFlowMapMatching)
