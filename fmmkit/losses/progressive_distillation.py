"""``progressive_distillation`` (PFMM): progressive flow map matching (Boffi, Albergo & Vanden-Eijnden
2024, 2406.07507).

L(theta) = E |X_{s,t}(I_s) - X'_{u,t}(X'_{s,u}(I_s))|^2,   u = (s + t) / 2,   0 <= t - s <= h_r,

with X' a frozen map. Training runs in rounds of ``steps_per_round`` steps; round r allows gaps up to
h_r = 2^(r - rounds + 1) (so the last of ``rounds`` rounds reaches h = 1, and later rounds keep h = 1).
In round 0, X' is one Euler step of the (guided) teacher, X'_{a,b}(x) = x + (b - a) b^_a(x), so the
first student learns two Euler steps of size <= h_0 / 2; at the end of every round X' becomes a frozen
copy of the student, which then learns to do in one jump what X' does in two, doubling the reach.
The frozen copy is part of :meth:`state_dict`. Gaps are drawn as h_r times the gap of a pair from
``times`` (uniform on the triangle by default), with s uniform on the interval left over.

At the exact flow map (as both student and X', any round >= 1) the residual vanishes by the semigroup
law; in round 0 it is the O(h^2) error of two Euler steps.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import positive
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term, frozen_copy, prefixed, unprefixed


@attrs.define(frozen=True)
class ProgressiveDistillationConfig(LossTables):
    """rounds: gap doublings until h = 1; steps_per_round: optimiser steps per round."""

    rounds: int = attrs.field(default=4, validator=positive)
    steps_per_round: int = attrs.field(default=500, validator=positive)


class ProgressiveDistillation(FlowMapLoss):
    """|X_{s,t}(I_s) - X'_{u,t}(X'_{s,u}(I_s))|^2 with a frozen X' refreshed every round."""

    Config = ProgressiveDistillationConfig
    requires_teacher = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frozen: FlowMap | None = None
        self._pending: dict[str, Tensor] = {}

    def round(self, step: int) -> int:
        """The round of training step ``step``."""
        return step // self.config.steps_per_round

    def max_gap(self, step: int) -> float:
        """h_r = 2^(r - rounds + 1), at most 1."""
        return 2.0 ** min(0, self.round(step) - self.config.rounds + 1)

    def _snapshot(self, model: FlowMap) -> None:
        if self.frozen is None:
            self.frozen = frozen_copy(model)  # type: ignore[assignment]
        else:
            self.frozen.load_state_dict(model.state_dict())

    def _frozen_map(self, model: FlowMap, step: int) -> FlowMap | None:
        """X' for this step: restored from a checkpoint, or the student copied at the last round's end
        (taken now if this loss never saw that moment); None in round 0 (the teacher's Euler step)."""
        if self._pending:
            self.frozen = frozen_copy(model)  # type: ignore[assignment]
            self.frozen.load_state_dict(self._pending)
            self._pending = {}
        if self.frozen is None and self.round(step) >= 1:
            self._snapshot(model)
        return self.frozen

    def _pairs(self, n: int, like: Tensor, h: float) -> tuple[Tensor, Tensor]:
        times = self.times
        s0, t0 = self.sample_pairs(n, like)
        span = times.t_max - times.t_min
        gap = (t0 - s0).abs() * min(1.0, h / span) if span > 0 else torch.zeros_like(s0)
        s = times.t_min + (span - gap) * torch.rand_like(s0)
        return s, s + gap

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        frozen = self._frozen_map(model, step)
        s, t = self._pairs(len(batch), batch.x1, self.max_gap(step))
        u = (s + t) / 2
        x_s = self.draw(batch, s).x_t
        y = batch.y
        with torch.no_grad():
            if frozen is None:
                first = x_s + broadcast_time(u - s, x_s) * self.teacher_velocity(teacher, x_s, s, y)
                target = first + broadcast_time(t - u, x_s) * self.teacher_velocity(teacher, first, u, y)
            else:
                target = frozen(frozen(x_s, s, u, y), u, t, y)
        return [Term("progressive", mean_squares(model(x_s, s, t, y) - target), s, t)]

    def on_step_end(self, model: FlowMap, step: int) -> None:
        if (step + 1) % self.config.steps_per_round == 0:
            self._snapshot(model)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        frozen = self.frozen.state_dict() if self.frozen is not None else self._pending
        return {**state, **prefixed("frozen.", frozen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = unprefixed("frozen.", state)
        self.frozen = None


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("progressive_distillation", ProgressiveDistillation)
