"""``shortcut``: shortcut models (Frans et al. 2024, 2410.12557), a flow map on a dyadic step grid.

Shortcut models use fmmkit's convention (noise at 0, data at 1); their s(x_t, t, d) is our
v_{t,t+d}(x_t). A share ``bootstrap_fraction`` of each batch (1/8 in the paper) learns the
self-consistency of two half steps,

    v_{t,t+2d}(x) vs sg( 1/2 [v_{t,t+d}(x) + v_{t+d,t+2d}(x + d v_{t,t+d}(x))] ),   x = I_t,

with full steps 2d = 2^-j, j uniform in {0, ..., levels - 1}, and t uniform on the grid
{0, 2d, ..., 1 - 2d}; the rest of the batch does flow matching on the diagonal, v_{t,t}(I_t) vs dI_t/dt.
At the finest level the half steps (d = 2^-levels) query the flow-matching velocity v_{t,t} (the
paper's d = 0), unless ``finest_uses_velocity = false``. The target comes from the current parameters
under no_grad, or from an EMA of them with ``ema_decay > 0`` (saved in :meth:`state_dict`);
``intermediate_clip > 0`` clips x + d v_{t,t+d} elementwise, as the paper does for images.

At the exact map the bootstrap residual is 0 (semigroup law) except at the finest level with
``finest_uses_velocity``, where it is the O(d) error of two Euler steps; the flow-matching part sits at
the conditional variance.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.flow_map import time_dtype
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import in_range, non_negative, positive, unit_interval
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term, frozen_copy, prefixed, split_batch, unprefixed


@attrs.define(frozen=True)
class ShortcutConfig(LossTables):
    """levels: dyadic levels (finest full step 2^-(levels-1)); bootstrap_fraction; ema_decay (0: no EMA);
    finest_uses_velocity; intermediate_clip (0: off); times: of the flow-matching part."""

    levels: int = attrs.field(default=7, validator=positive)
    bootstrap_fraction: float = attrs.field(default=0.125, validator=unit_interval)
    ema_decay: float = attrs.field(default=0.0, validator=in_range(0.0, 0.99999))
    finest_uses_velocity: bool = True
    intermediate_clip: float = attrs.field(default=0.0, validator=non_negative)


class Shortcut(FlowMapLoss):
    """Flow matching plus the dyadic self-consistency target of shortcut models."""

    Config = ShortcutConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ema: FlowMap | None = None
        self._pending: dict[str, torch.Tensor] = {}

    def target_model(self, model: FlowMap) -> FlowMap:
        """The map that builds targets: the EMA (created from the model on first use) or the model."""
        if self.config.ema_decay <= 0:
            return model
        if self.ema is None:
            self.ema = frozen_copy(model)  # type: ignore[assignment]
            if self._pending:
                self.ema.load_state_dict(self._pending)
                self._pending = {}
        return self.ema

    def bootstrap_term(self, model: FlowMap, batch: Batch) -> Term:
        """Per-sample |v_{t,t+2d}(I_t) - sg(1/2 [v_{t,t+d} + v_{t+d,t+2d}(x + d v_{t,t+d})])|^2."""
        n, x1, levels = len(batch), batch.x1, self.config.levels
        j = torch.randint(0, levels, (n,), device=x1.device)
        full = torch.pow(2.0, -j.to(time_dtype(x1)))
        half = full / 2
        sections = torch.pow(2, j)
        t = (torch.rand(n, device=x1.device, dtype=full.dtype) * sections).floor() * full
        x = self.draw(batch, t).x_t
        finest = (j == levels - 1) & self.config.finest_uses_velocity
        reach = torch.where(finest, torch.zeros_like(half), half)  # the end of each half step's query
        teacher, y = self.target_model(model), batch.y
        with torch.no_grad():
            first = teacher.average_velocity(x, t, t + reach, y)
            mid = x + broadcast_time(half, x).to(x.dtype) * first
            if self.config.intermediate_clip > 0:
                mid = mid.clamp(-self.config.intermediate_clip, self.config.intermediate_clip)
            second = teacher.average_velocity(mid, t + half, t + half + reach, y)
            target = (first + second) / 2
        return Term("bootstrap", mean_squares(model.average_velocity(x, t, t + full, y) - target), t, t + full)

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        boot, flow = split_batch(batch, self.config.bootstrap_fraction)
        out = []
        if len(flow):
            out.append(self.flow_matching_term(model, flow, "flow_matching"))
        if len(boot):
            out.append(self.bootstrap_term(model, boot))
        return out

    def on_step_end(self, model: FlowMap, step: int) -> None:
        if self.config.ema_decay <= 0:
            return
        ema = self.target_model(model)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - self.config.ema_decay)
            for e, b in zip(ema.buffers(), model.buffers()):
                e.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        ema = self.ema.state_dict() if self.ema is not None else self._pending
        return {**super().state_dict(), **prefixed("ema.", ema)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = unprefixed("ema.", state)
        self.ema = None


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("shortcut", Shortcut)
