"""``progressive_distillation`` (PFMM): progressive flow map matching (Boffi, Albergo & Vanden-Eijnden
2024, 2406.07507).

L(theta) = E |X_{s,t}(I_s) - (X'_{u_{K-1},t} o ... o X'_{s,u_1})(I_s)|^2,   u_k = s + k (t - s) / K,
0 <= t - s <= h_r,

with X' a frozen map and K = ``substeps`` (2 in the paper's doubling scheme). Training runs in rounds of
``steps_per_round`` steps; round r allows gaps up to h_r = K^(r - rounds + 1) (so the last of
``rounds`` rounds reaches h = 1, and later rounds keep h = 1). In round 0, X' is one Euler step of the
(guided) teacher, X'_{a,b}(x) = x + (b - a) b^_a(x), so the first student learns K Euler steps of
size <= h_0 / K; or, with ``init = "teacher_map"``, X' is the teacher itself taken as a flow map (a
trained flow-map run, or an exact map): PFMM then starts from a trained flow map and the student
learns in one jump what the teacher does in K. At the end of every round X' becomes a frozen copy of
the student, which then learns to do in one jump what X' does in K, multiplying the reach by K.
The frozen copy is part of :meth:`state_dict`. Gaps are drawn as h_r times the gap of a pair from
``times`` (uniform on the triangle by default), with s uniform on the interval left over.

At the exact flow map (as both student and X', any round >= 1, or round 0 from an exact teacher map)
the residual vanishes by the semigroup law; from Euler steps in round 0 it is their O(h^2) error.
"""

from __future__ import annotations


import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.loss import LossBuildError
from fmmkit.core.validators import at_least, one_of, positive
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import DistillationLoss, LossTables, Term


@attrs.define(frozen=True)
class ProgressiveDistillationConfig(LossTables):
    """rounds: gap multiplications until h = 1; steps_per_round: optimiser steps per round; substeps: K
    jumps of X' per target; init: X' of round 0 ("euler": Euler steps of the teacher velocity;
    "teacher_map": the teacher's own flow map)."""

    rounds: int = attrs.field(default=4, validator=positive)
    steps_per_round: int = attrs.field(default=500, validator=positive)
    substeps: int = attrs.field(default=2, validator=at_least(2))
    init: str = attrs.field(default="euler", validator=one_of(("euler", "teacher_map")))


class ProgressiveDistillation(DistillationLoss):
    """|X_{s,t}(I_s) - X'_{u,t}(X'_{s,u}(I_s))|^2 with a frozen X' refreshed every round."""

    Config = ProgressiveDistillationConfig
    held_prefix = "frozen."

    def round(self, step: int) -> int:
        """The round of training step ``step``."""
        return step // self.config.steps_per_round

    def max_gap(self, step: int) -> float:
        """h_r = K^(r - rounds + 1), at most 1."""
        return float(self.config.substeps) ** min(0, self.round(step) - self.config.rounds + 1)

    def check_model(self, model: FlowMap, teacher: VelocityField | None = None) -> None:
        super().check_model(model, teacher)
        trained_map = callable(teacher) and getattr(teacher, "trains_flow_map", True)
        if self.config.init == "teacher_map" and not trained_map:
            raise LossBuildError("init = \"teacher_map\" starts from the teacher's flow map X_(s,t), but this teacher "
                                 "trained only a velocity; use a flow-map run (or an exact map) as the teacher, or "
                                 "init = \"euler\"")

    def _frozen_map(self, model: FlowMap, step: int) -> FlowMap | None:
        """X' for this step: restored from a checkpoint, or the student copied at the last round's end
        (taken now if this loss never saw that moment); None in round 0 (the teacher's Euler step)."""
        frozen = self.held.restored(model)
        if frozen is None and self.round(step) >= 1:
            frozen = self.held.snapshot(model)
        return frozen

    def _pairs(self, n: int, like: Tensor, h: float) -> tuple[Tensor, Tensor]:
        times = self.times
        s0, t0 = self.sample_pairs(n, like)
        span = times.t_max - times.t_min
        gap = (t0 - s0).abs() * min(1.0, h / span) if span > 0 else torch.zeros_like(s0)
        s = times.t_min + (span - gap) * torch.rand_like(s0)
        return s, s + gap

    def jump(self, frozen: FlowMap | None, teacher: VelocityField | None, x: Tensor, a: Tensor, b: Tensor,
             y: Tensor | None) -> Tensor:
        """One jump of X' from a to b: the frozen copy, the teacher's map, or a teacher Euler step."""
        if frozen is not None:
            return frozen(x, a, b, y)
        if self.config.init == "teacher_map":
            return teacher(x, a, b, y)  # type: ignore[misc,operator]
        return x + broadcast_time(b - a, x).to(x.dtype) * self.teacher_velocity(teacher, x, a, y)

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        frozen = self._frozen_map(model, step)
        s, t = self._pairs(len(batch), batch.x1, self.max_gap(step))
        x_s = self.draw(batch, s).x_t
        y, k = batch.y, self.config.substeps
        with torch.no_grad():
            target = x_s
            for i in range(k):
                a, b = s + (t - s) * (i / k), s + (t - s) * ((i + 1) / k)
                target = self.jump(frozen, teacher, target, a, t if i == k - 1 else b, y)
        return [Term("progressive", mean_squares(model(x_s, s, t, y) - target), s, t)]

    def on_step_end(self, model: FlowMap, step: int) -> None:
        if (step + 1) % self.config.steps_per_round == 0:
            self.held.snapshot(model)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("progressive_distillation", ProgressiveDistillation)
