"""``eulerian_self_distillation`` (ESD): the Eulerian equation with the model as its own teacher (2505.18825).

L = eta * E_t |v_{t,t}(I_t) - dI_t/dt|^2
  + (1 - eta) * E_{s<t} |d/ds X_{s,t}(I_s) + sg(grad_x X_{s,t}(I_s) v_{s,s}(I_s))|^2

The gradient flows through d/ds X only (a JVP in s, differentiated); the transport term grad_x X v_{s,s}
is a second JVP in x with tangent sg(v_{s,s}(I_s)), under stop-gradient. The paper reports it unstable
on images. At the exact map the residual vanishes and the loss is eta times the conditional variance.
"""

from __future__ import annotations

import torch

from fmmkit.core import Batch, FlowMap
from fmmkit.core.shapes import mean_squares
from fmmkit.core.derivatives import directional_derivative
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import SelfDistillationConfig, SelfDistillationLoss, Term


class EulerianSelfDistillation(SelfDistillationLoss):
    """Flow matching on the diagonal plus the self-distilled Eulerian residual off it."""

    Config = SelfDistillationConfig

    def off_diagonal_term(self, model: FlowMap, batch: Batch) -> Term:
        """Per-sample |d/ds X_{s,t}(I_s) + sg(grad_x X_{s,t}(I_s) v_{s,s}(I_s))|^2 (B,)."""
        s, t = self.sample_pairs(len(batch), batch.x1)
        x_s = self.draw(batch, s).x_t
        method = self.config.derivative
        _, ds_x = directional_derivative(model, x_s, s, t, (None, torch.ones_like(s), None), y=batch.y, method=method)
        with torch.no_grad():
            b = model.velocity(x_s, s, batch.y)
            _, transport = directional_derivative(model, x_s, s, t, (b, None, None), y=batch.y, method=method)
        return Term("eulerian", mean_squares(ds_x + transport), s, t)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("eulerian_self_distillation", EulerianSelfDistillation)
