"""``shortcut``: shortcut models (Frans et al. 2024, 2410.12557), a flow map on a dyadic step grid.

Shortcut models use fmmkit's convention (noise at 0, data at 1); their s(x_t, t, d) is our
v_{t,t+d}(x_t). A share ``bootstrap_fraction`` of each batch (1/8 in the paper) learns the
self-consistency of two half steps,

    v_{t,t+2d}(x) vs sg( 1/2 [v_{t,t+d}(x) + v_{t+d,t+2d}(x + d v_{t,t+d}(x))] ),   x = I_t,

with full steps 2d = 2^-j, j uniform in {0, ..., levels - 1}, and t uniform on the grid
{0, 2d, ..., 1 - 2d}; the rest of the batch does flow matching on the diagonal, v_{t,t}(I_t) vs dI_t/dt.
At the finest level the half steps (d = 2^-levels) query the flow-matching velocity v_{t,t} (the
paper's d = 0), unless ``finest_uses_velocity = false``. Official defaults (kvfrans/shortcut-models
``targets_shortcut.py``, ``train.py``; /work/notes/frontier.md Sec. 3): the target comes from an EMA of
the parameters, ``ema_decay = 0.999`` (``bootstrap_ema = 1``, ``target_update_rate = 0.999``; 0 uses the
current parameters, saved in :meth:`state_dict` either way), evaluated with dropout off; the half
step x + d v_{t,t+d} and the target itself are clipped elementwise to [-4, 4] (``intermediate_clip``,
``target_clip``; 0 turns a clip off); label dropout hits only the flow-matching rows (the bootstrap
rows keep their labels, ``targets_shortcut.py:39, :80``).

At the exact map the bootstrap residual is 0 (semigroup law) except at the finest level with
``finest_uses_velocity``, where it is the O(d) error of two Euler steps; the flow-matching part sits at
the conditional variance.
"""

from __future__ import annotations


import attrs
import torch

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.flow_map import time_dtype
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import in_range, non_negative, positive, unit_interval
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term, split_batch, terms_of_parts
from fmmkit.losses.times import diagonal_count


@attrs.define(frozen=True)
class ShortcutConfig(LossTables):
    """levels: dyadic levels (finest full step 2^-(levels-1)); bootstrap_fraction; ema_decay of the
    target network (0: the current parameters); finest_uses_velocity; intermediate_clip, target_clip
    (0: off); times: of the flow-matching part."""

    levels: int = attrs.field(default=7, validator=positive)
    bootstrap_fraction: float = attrs.field(default=0.125, validator=unit_interval)
    ema_decay: float = attrs.field(default=0.999, validator=in_range(0.0, 0.99999))
    finest_uses_velocity: bool = True
    intermediate_clip: float = attrs.field(default=4.0, validator=non_negative)
    target_clip: float = attrs.field(default=4.0, validator=non_negative)


class Shortcut(FlowMapLoss):
    """Flow matching plus the dyadic self-consistency target of shortcut models."""

    Config = ShortcutConfig
    held_prefix = "ema."

    def target_model(self, model: FlowMap) -> FlowMap:
        """The map that builds targets: the EMA (created from the model on first use) or the model."""
        return model if self.config.ema_decay <= 0 else self.held.get(model)  # type: ignore[union-attr]

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
        clip, target_clip = self.config.intermediate_clip, self.config.target_clip
        with self.target_pass(teacher):
            first = teacher.average_velocity(x, t, t + reach, y)
            mid = x + broadcast_time(half, x).to(x.dtype) * first
            if clip > 0:
                mid = mid.clamp(-clip, clip)
            second = teacher.average_velocity(mid, t + half, t + half + reach, y)
            target = (first + second) / 2
            if target_clip > 0:
                target = target.clamp(-target_clip, target_clip)
        return Term("bootstrap", mean_squares(model.average_velocity(x, t, t + full, y) - target), t, t + full)

    def label_dropout_span(self, n: int) -> tuple[int, int]:
        """Label dropout only on the flow-matching rows (after the bootstrap share), as the official code."""
        return diagonal_count(n, self.config.bootstrap_fraction), n

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        boot, flow = split_batch(batch, self.config.bootstrap_fraction)
        return terms_of_parts([(flow, lambda rows: self.flow_matching_term(model, rows, "flow_matching")),
                               (boot, lambda rows: self.bootstrap_term(model, rows))])

    def on_step_end(self, model: FlowMap, step: int) -> None:
        if self.config.ema_decay <= 0:
            return
        ema = self.target_model(model)
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - self.config.ema_decay)
            for e, b in zip(ema.buffers(), model.buffers()):
                e.copy_(b)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("shortcut", Shortcut)
