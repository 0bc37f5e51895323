"""``progressive_self_distillation`` (PSD): the semigroup law with the model as its own teacher (2505.18825).

L = eta * E_t |v_{t,t}(I_t) - dI_t/dt|^2
  + (1 - eta) * E_{s<t} |v_{s,t}(I_s) - sg[(1 - g) v_{s,u}(I_s) + g v_{u,t}(X_{s,u}(I_s))]|^2,
  u = g s + (1 - g) t,

which is X_{s,t} = X_{u,t} o X_{s,u} written for v (u - s = (1 - g)(t - s), t - u = g (t - s)).
``split = "uniform"`` draws g ~ U[0, 1] per sample (PSD-U); ``split = "midpoint"`` fixes g = 1/2
(PSD-M). No derivative is taken: one differentiated pass and two under no_grad (~1.5 passes). At the
exact map the residual vanishes and the loss is eta times the conditional variance.
"""

from __future__ import annotations

import attrs
import torch

from fmmkit.core import Batch, FlowMap
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import one_of, unit_interval
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import LossTables, SelfDistillationLoss, Term

SPLITS = ("uniform", "midpoint")


@attrs.define(frozen=True)
class ProgressiveSelfDistillationConfig(LossTables):
    """diagonal_fraction: eta; split: "uniform" (PSD-U, g ~ U[0, 1]) or "midpoint" (PSD-M, g = 1/2)."""

    diagonal_fraction: float = attrs.field(default=0.75, validator=unit_interval)
    split: str = attrs.field(default="uniform", validator=one_of(SPLITS))


class ProgressiveSelfDistillation(SelfDistillationLoss):
    """Flow matching on the diagonal plus the self-distilled two-jump composition off it."""

    Config = ProgressiveSelfDistillationConfig

    def off_diagonal_term(self, model: FlowMap, batch: Batch) -> Term:
        """Per-sample |v_{s,t}(I_s) - sg[(1 - g) v_{s,u}(I_s) + g v_{u,t}(X_{s,u}(I_s))]|^2 (B,)."""
        s, t = self.sample_pairs(len(batch), batch.x1)
        x_s = self.draw(batch, s).x_t
        g = torch.rand_like(s) if self.config.split == "uniform" else torch.full_like(s, 0.5)
        u = g * s + (1 - g) * t
        y = batch.y
        with torch.no_grad():
            first = model.average_velocity(x_s, s, u, y)
            x_u = x_s + broadcast_time(u - s, x_s).to(first.dtype) * first
            second = model.average_velocity(x_u, u, t, y)
            gb = broadcast_time(g, first).to(first.dtype)
            target = (1 - gb) * first + gb * second
        return Term("progressive", mean_squares(model.average_velocity(x_s, s, t, y) - target), s, t)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("progressive_self_distillation", ProgressiveSelfDistillation)
