"""``lagrangian_self_distillation`` (LSD): train a flow map with no teacher (2505.18825, Alg. 1).

L = eta * E_t |v_{t,t}(I_t) - dI_t/dt|^2
  + (1 - eta) * E_{s<t} |d/dt X_{s,t}(I_s) - sg(v_{t,t}(sg X_{s,t}(I_s)))|^2      (eq. 4.3, 4.6)

The diagonal term is flow matching on the model's own velocity b_t = v_{t,t}; the off-diagonal term
is the Lagrangian equation with the model's current parameters as teacher (no EMA), its target under
stop-gradient. A fraction eta of each batch (0.75 in the paper) goes to the diagonal. At the exact
map the off-diagonal residual is 0 and the loss equals eta times the conditional variance of dI_t/dt.
With guidance the diagonal learns the guided velocity (see :mod:`fmmkit.losses.guidance`), and the map follows it.
"""

from __future__ import annotations

import torch

from fmmkit.core import Batch, FlowMap
from fmmkit.core.shapes import mean_squares
from fmmkit.core.derivatives import time_derivative
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import SelfDistillationConfig, SelfDistillationLoss, Term, split_diagonal

__all__ = ["LagrangianSelfDistillation", "SelfDistillationConfig", "split_diagonal"]


class LagrangianSelfDistillation(SelfDistillationLoss):
    """Flow matching on the diagonal plus the self-distilled Lagrangian residual off it."""

    Config = SelfDistillationConfig

    def off_diagonal_term(self, model: FlowMap, batch: Batch) -> Term:
        """Per-sample |d/dt X_{s,t}(I_s) - sg(v_{t,t}(sg X_{s,t}(I_s)))|^2 (B,)."""
        s, t = self.sample_pairs(len(batch), batch.x1)
        x_s = self.draw(batch, s).x_t
        x_st, dt_x_st = time_derivative(model, x_s, s, t, y=batch.y, method=self.config.derivative)
        with torch.no_grad():
            target = model.velocity(x_st.detach(), t, batch.y)
        return Term("lagrangian", mean_squares(dt_x_st - target), s, t)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("lagrangian_self_distillation", LagrangianSelfDistillation)
