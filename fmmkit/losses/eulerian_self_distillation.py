"""``eulerian_self_distillation`` (ESD): the Eulerian equation with the model as its own teacher (2505.18825).

L = eta * E_t |v_{t,t}(I_t) - dI_t/dt|^2
  + (1 - eta) * E_{s<t} |d/ds X_{s,t}(I_s) + grad_x X_{s,t}(I_s) b_s(I_s)|^2,   b_s = sg v_{s,s},

with two stop-gradient placements (``stopgrad``):

- ``"transport"`` (default): |d/ds X_{s,t}(I_s) + sg(grad_x X_{s,t}(I_s) b_s(I_s))|^2 — the gradient flows
  through d/ds X only (a JVP in s, differentiated); the transport term is a second JVP in x with
  tangent b, under stop-gradient. The two JVPs run from one RNG state, so a backbone with dropout
  shows both the same mask.
- ``"convex"``: the official code's ``stopgrad_type = "convex"`` (nmboffi/flow-maps ``csd_term``): only
  b is stopped, and d/ds X + grad_x X b is one JVP with tangent (dx, ds) = (b, 1), differentiated
  through both derivatives; for fixed b the residual is linear in X, so the loss is convex in X.

b = v_{s,s}(I_s) is a target pass (dropout off unless ``target_dropout``). The paper reports ESD
unstable on images. At the exact map the residual vanishes and the loss is eta times the conditional
variance.
"""

from __future__ import annotations

import attrs
import torch

from fmmkit.core import Batch, FlowMap
from fmmkit.core.shapes import mean_squares
from fmmkit.core.validators import one_of
from fmmkit.core.derivatives import ReplayedRNG, directional_derivative, eulerian_derivative
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import SelfDistillationConfig, SelfDistillationLoss, Term

STOPGRADS = ("transport", "convex")


@attrs.define(frozen=True)
class EulerianSelfDistillationConfig(SelfDistillationConfig):
    """stopgrad: "transport" (sg on grad_x X b) or "convex" (sg on b only, one differentiated JVP)."""

    stopgrad: str = attrs.field(default="transport", validator=one_of(STOPGRADS))


class EulerianSelfDistillation(SelfDistillationLoss):
    """Flow matching on the diagonal plus the self-distilled Eulerian residual off it."""

    Config = EulerianSelfDistillationConfig

    def off_diagonal_term(self, model: FlowMap, batch: Batch) -> Term:
        """Per-sample |d/ds X_{s,t}(I_s) + grad_x X_{s,t}(I_s) sg v_{s,s}(I_s)|^2 (B,), sg as ``stopgrad``."""
        s, t = self.sample_off_diagonal_pairs(len(batch), batch.x1)
        x_s = self.draw(batch, s).x_t
        method, y = self.config.derivative, batch.y
        with self.target_pass(model):
            b = model.velocity(x_s, s, y)
        if self.config.stopgrad == "convex":
            _, residual = eulerian_derivative(model, x_s, s, t, dx=b, y=y, method=method)
            return Term("eulerian", mean_squares(residual), s, t)
        rng = ReplayedRNG(x_s.device)
        with rng.replay():
            _, ds_x = directional_derivative(model, x_s, s, t, ds=torch.ones_like(s), y=y, method=method)
        with torch.no_grad(), rng.replay():
            _, transport = directional_derivative(model, x_s, s, t, dx=b, y=y, method=method)
        return Term("eulerian", mean_squares(ds_x + transport), s, t)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("eulerian_self_distillation", EulerianSelfDistillation)
