"""``lagrangian_self_distillation`` (LSD): train a flow map with no teacher (2505.18825, Alg. 1).

L = eta * E_t |v_{t,t}(I_t) - dI_t/dt|^2
  + (1 - eta) * E_{s<t} |d/dt X_{s,t}(I_s) - sg(v_{t,t}(sg X_{s,t}(I_s)))|^2      (eq. 4.3, 4.6)

The diagonal term is flow matching on the model's own velocity b_t = v_{t,t}; the off-diagonal term
is the Lagrangian equation with the model's current parameters as teacher (no EMA), its target under
stop-gradient. A fraction eta of each batch (0.75 in the paper) goes to the diagonal. At the exact
map the off-diagonal residual is 0 and the loss equals eta times the conditional variance of dI_t/dt.
"""

from __future__ import annotations


import attrs
import torch

from fmmkit.core import Batch, FlowMap, Loss, LossOutput, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.core.validators import one_of, unit_interval
from fmmkit.derivatives import DERIVATIVE_METHODS, time_derivative
from fmmkit.hookspecs import hookimpl
from fmmkit.timesampling import TimeSampling, stochastic_time_bounds


@attrs.define(frozen=True)
class SelfDistillationConfig:
    """diagonal_fraction: eta, the share of the batch on s = t; derivative: jvp or finite_difference."""

    diagonal_fraction: float = attrs.field(default=0.75, validator=unit_interval)
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))
    times: TimeSampling = attrs.field(factory=TimeSampling)


def split_diagonal(batch: Batch, fraction: float) -> tuple[Batch, Batch]:
    """(diagonal part, off-diagonal part) of a batch; the diagonal gets round(fraction * B) points."""
    n_diag = min(len(batch), max(0, round(fraction * len(batch))))
    diag, off = batch.split([n_diag, len(batch) - n_diag])
    return diag, off


class LagrangianSelfDistillation(Loss):
    """Flow matching on the diagonal plus the self-distilled Lagrangian residual off it."""

    Config = SelfDistillationConfig

    def __init__(self, config: SelfDistillationConfig, interpolant) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, interpolant)
        self.needs_forward_ad = config.derivative == "jvp"

    def diagonal_term(self, model: FlowMap, batch: Batch) -> torch.Tensor:
        """Per-sample |v_{t,t}(I_t) - dI_t/dt|^2 (B,)."""
        times = stochastic_time_bounds(self.config.times, self.interpolant.stochastic)
        t = times.sample(len(batch), batch.x1.device)
        path = self.interpolant.draw(batch.x1, t)
        return mean_squares(model.velocity(path.x_t, t, batch.y) - path.dx_t)

    def off_diagonal_term(self, model: FlowMap, batch: Batch) -> torch.Tensor:
        """Per-sample |d/dt X_{s,t}(I_s) - sg(v_{t,t}(sg X_{s,t}(I_s)))|^2 (B,)."""
        times = stochastic_time_bounds(self.config.times, self.interpolant.stochastic)
        s, t = times.sample_pairs(len(batch), batch.x1.device)
        x_s = self.interpolant.draw(batch.x1, s).x_t
        x_st, dt_x_st = time_derivative(model, x_s, s, t, y=batch.y, method=self.config.derivative)
        with torch.no_grad():
            target = model.velocity(x_st.detach(), t, batch.y)
        return mean_squares(dt_x_st - target)

    def __call__(
        self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None, step: int = 0
    ) -> LossOutput:
        diag, off = split_diagonal(batch, self.config.diagonal_fraction)
        terms = []
        metrics: dict[str, float | torch.Tensor] = {}
        if len(diag):
            d = self.diagonal_term(model, diag)
            terms.append(d)
            metrics["diagonal"] = d.mean().detach()
        if len(off):
            o = self.off_diagonal_term(model, off)
            terms.append(o)
            metrics["lagrangian"] = o.mean().detach()
        loss = torch.cat(terms).mean()
        return LossOutput(loss, metrics)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("lagrangian_self_distillation", LagrangianSelfDistillation)
