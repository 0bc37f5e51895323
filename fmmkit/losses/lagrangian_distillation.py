"""``lagrangian_distillation`` (LMD): distill a flow map from a frozen teacher velocity.

L(theta) = E_{s<t, I_s} |d/dt X_{s,t}(I_s) - b^_t(X_{s,t}(I_s))|^2      (Boffi et al. 2024, eq. 3.8)

b^ is the frozen teacher (guided with ``[loss.guidance] scale`` for labelled data); d/dt X_{s,t} is one
forward-mode JVP in t with tangent 1, which also returns X_{s,t}(I_s). ``semigradient = true`` stops
the gradient through the teacher's input: b^_t(sg X_{s,t}(I_s)). At the exact flow map of b^ the
residual vanishes, so the minimum is 0. Rows that ``[loss.times] diagonal_fraction`` puts on s = t
(none by default) take no JVP: there X_{t,t} = x and the residual is v_{t,t}(x) - b^_t(x).
"""

from __future__ import annotations

import torch

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import DistillationConfig, DistillationLoss, Term
from fmmkit.moved import moved_getattr


class LagrangianDistillation(DistillationLoss):
    """|d/dt X_{s,t}(I_s) - b^_t(X_{s,t}(I_s))|^2 against a frozen teacher b^."""

    Config = DistillationConfig

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s, t, x_s = self.start(batch)
        n = self.diagonal_rows(len(batch))  # s = t rows: X_{t,t} = x, no JVP (lagrangian_parts)
        x_st, dt_x_st = self.lagrangian_parts(model, x_s, s, t, batch.y, diagonal=n)
        teacher_input = x_st.detach() if self.config.semigradient else x_st
        diag, off = batch.split([n, len(batch) - n])
        targets = []
        if n:  # the teacher at X_{t,t} = x: no gradient, so a call of its own keeps these rows out of its backward
            with torch.no_grad():
                targets.append(self.teacher_velocity(teacher, x_s[:n], s[:n], diag.y))
        if len(off):
            targets.append(self.teacher_velocity(teacher, teacher_input[n:], t[n:], off.y))
        return [Term("lagrangian", mean_squares(dt_x_st - torch.cat(targets)), s, t)]


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("lagrangian_distillation", LagrangianDistillation)


__getattr__ = moved_getattr(__name__)  # former names (fmmkit.moved)
