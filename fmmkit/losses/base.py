"""Machinery shared by fmmkit's losses: per-sample terms, times, weighting, guidance, the diagonal split.

A loss here subclasses :class:`FlowMapLoss` and returns named :class:`Term` s of per-sample squared
residuals (averaged over dimensions) with their times (s, t); the base class draws label dropout,
reduces all terms together with the configured :mod:`fmmkit.losses.weighting` (so a term's share of the loss
is its share of the batch), and logs each term's unweighted mean. Configs may carry ``times``
(:class:`fmmkit.losses.times.TimeSampling`), ``weighting`` and ``guidance`` tables.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from fmmkit.core import Batch, BuildContext, FlowMap, Interpolant, InterpolantSample, Loss, LossOutput, VelocityField
from fmmkit.core.flow_map import time_dtype
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import non_negative, one_of, unit_interval
from fmmkit.core.derivatives import DERIVATIVE_METHODS, eulerian_velocity_derivative
from fmmkit.losses.guidance import GuidanceConfig, drop_labels, guided_regression_target, guided_velocity
from fmmkit.losses.times import TimeSampling, diagonal_count, stochastic_time_bounds
from fmmkit.losses.weighting import Weighting, WeightingConfig


@attrs.define(frozen=True)
class LossTables:
    """The nested tables every loss config has: ``[loss.times]``, ``[loss.weighting]``, ``[loss.guidance]``."""

    times: TimeSampling = attrs.field(factory=TimeSampling)
    weighting: WeightingConfig = attrs.field(factory=WeightingConfig)
    guidance: GuidanceConfig = attrs.field(factory=GuidanceConfig)


@attrs.define(frozen=True)
class TangentConfig(LossTables):
    """A normalised, warmed-up tangent (AYF, sCM): tangent_norm c of g / (|g| + c) (0: off); warmup_steps
    of the ramp r; derivative: jvp or finite_difference."""

    tangent_norm: float = attrs.field(default=0.1, validator=non_negative)
    warmup_steps: int = attrs.field(default=1000, validator=non_negative)
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))


@dataclass
class Term:
    """Per-sample losses ``values`` (B_k,) of one named term at times s, t (B_k,); ``parts`` are
    per-sample sub-terms logged separately."""

    name: str
    values: Tensor
    s: Tensor
    t: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


def split_batch(batch: Batch, fraction: float) -> tuple[Batch, Batch]:
    """(first round(fraction * B) rows, the rest) of a batch."""
    n = diagonal_count(len(batch), fraction)
    first, rest = batch.split([n, len(batch) - n])
    return first, rest


#: Kept under its first name for callers of the foundation code.
split_diagonal = split_batch


def _rows(y: Tensor | None, rows: slice) -> Tensor | None:
    """The rows of per-sample labels or conditioning (None passes through)."""
    return None if y is None else y[rows]


def normalized(g: Tensor, c: float) -> Tensor:
    """g / (|g| + c) per sample, |.| the Euclidean norm over all non-batch dimensions; g when c = 0."""
    if c <= 0:
        return g
    norm = g.flatten(1).norm(dim=1)
    return g / broadcast_time(norm + c, g)


def ramp(step: int, warmup_steps: int) -> float:
    """r = min(1, step / warmup_steps): the tangent warm-up of sCM and AYF (1 when warmup_steps = 0)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def semigradient_squares(v: Tensor, direction: Tensor) -> Tensor:
    """Per-sample |v - sg(v + direction)|^2: value |direction|^2, gradient -2 direction . dv/dtheta."""
    return mean_squares(v - (v + direction).detach())


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off (a frozen teacher or EMA)."""
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """{prefix + key: value}."""
    return {prefix + k: v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class FlowMapLoss(Loss):
    """A loss made of per-sample terms: times, label dropout, guidance and weighting handled here."""

    def __init__(self, config: Any, interpolant: Interpolant, num_classes: int | None = None) -> None:
        super().__init__(config, interpolant)
        self.num_classes = num_classes
        self.weighting = Weighting(getattr(config, "weighting", WeightingConfig()))
        self.needs_forward_ad = getattr(config, "derivative", None) == "jvp"
        # resolved once: a compiled step must not build config objects on every call
        self.times = stochastic_time_bounds(getattr(config, "times", TimeSampling()), interpolant.stochastic)
        self.guidance: GuidanceConfig = getattr(config, "guidance", GuidanceConfig())

    @classmethod
    def build(cls, config: Any, ctx: BuildContext) -> FlowMapLoss:
        assert ctx.interpolant is not None, "losses are built after the interpolant"
        return cls(config, ctx.interpolant, ctx.num_classes)

    # ---- times and paths (``self.times``: the configured sampling, kept off {0, 1} when gamma' is singular)
    def sample_times(self, n: int, like: Tensor) -> Tensor:
        """n times (n,) on ``like``'s device, float64 for float64 data."""
        return self.times.sample(n, like.device, time_dtype(like))

    def sample_pairs(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """n pairs (s, t) (see :meth:`TimeSampling.sample_pairs`)."""
        return self.times.sample_pairs(n, like.device, time_dtype(like))

    def draw(self, batch: Batch, t: Tensor) -> InterpolantSample:
        """I_t and dI_t/dt for the data batch at per-sample times t."""
        return self.interpolant.draw(batch.x1, t)

    # ---- guidance (``self.guidance``)
    def teacher_velocity(self, teacher: VelocityField | None, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """The (guided) teacher velocity b^w_t(x | y)."""
        assert teacher is not None, f"loss {type(self).__name__} needs a teacher velocity"
        return guided_velocity(teacher, x, t, y, self.guidance.scale)

    def velocity_target(self, model: FlowMap, path: InterpolantSample, y: Tensor | None) -> Tensor:
        """The regression target for v_{t,t}(I_t): dI_t/dt, guided when labels and a scale are given."""
        return guided_regression_target(model, path.x_t, path.t, path.dx_t, y, self.guidance.scale, self.num_classes)

    def teacher_start(self, batch: Batch, teacher: VelocityField | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(s, t, I_s, b^_s(I_s)) for a batch: pairs s <= t, start points, the (guided) teacher there (no grad)."""
        s, t = self.sample_pairs(len(batch), batch.x1)
        x_s = self.draw(batch, s).x_t
        with torch.no_grad():
            return s, t, x_s, self.teacher_velocity(teacher, x_s, s, batch.y)

    def diagonal_rows(self, n: int) -> int:
        """How many of the n pairs from :meth:`sample_pairs` have s = t: they come first."""
        return diagonal_count(n, self.times.diagonal_fraction)

    def eulerian_parts(
        self, model: FlowMap, x: Tensor, s: Tensor, t: Tensor, b: Tensor, y: Tensor | None, *, diagonal: int = 0
    ) -> tuple[Tensor, Tensor]:
        """(v, T) = (v_{s,t}(x), (t - s) (d/ds v_{s,t} + grad_x v_{s,t} b)(x)), one JVP with tangent (b, 1, 0)
        by ``config.derivative``; the Eulerian residual d/ds X + grad_x X b equals b - v + T.

        The first ``diagonal`` rows have s = t (:meth:`diagonal_rows`): there T = 0 whatever the JVP, so
        they take a plain pass and only the others the JVP (MeanFlow's 75% of s = t rows cost no JVP). The
        value and gradient are those of one JVP over every row; with dropout, its masks are drawn in two
        passes instead of one (the same distribution, other draws)."""
        if diagonal:
            v_diag = model.average_velocity(x[:diagonal], s[:diagonal], t[:diagonal], _rows(y, slice(0, diagonal)))
            off = slice(diagonal, None)
            v_off, t_off = self.eulerian_parts(model, x[off], s[off], t[off], b[off], _rows(y, off))
            return torch.cat([v_diag, v_off]), torch.cat([torch.zeros_like(v_diag), t_off])
        v, total = eulerian_velocity_derivative(model, x, s, t, b, y=y, method=self.config.derivative)
        return v, broadcast_time(t - s, v).to(v.dtype) * total

    def flow_matching_term(self, model: FlowMap, batch: Batch, name: str) -> Term:
        """|v_{t,t}(I_t) - dI_t/dt|^2 per sample (guided target with labels)."""
        t = self.sample_times(len(batch), batch.x1)
        path = self.draw(batch, t)
        target = self.velocity_target(model, path, batch.y)
        return Term(name, mean_squares(model.velocity(path.x_t, t, batch.y) - target), t, t)

    # ---- the loss
    @abstractmethod
    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        """The per-sample terms of the loss on ``batch`` (labels already dropped)."""

    def __call__(
        self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None, step: int = 0
    ) -> LossOutput:
        if batch.y is not None:
            batch = Batch(batch.x1, drop_labels(batch.y, self.guidance.label_dropout, self.num_classes))
        terms = [term for term in self.terms(model, batch, teacher, step) if term.values.numel()]
        assert terms, f"loss {type(self).__name__} produced no terms for a batch of {len(batch)}"
        values = torch.cat([term.values for term in terms])
        s = torch.cat([term.s.to(values.dtype) for term in terms])
        t = torch.cat([term.t.to(values.dtype) for term in terms])
        loss, metrics = self.weighting(values, s, t)
        for term in terms:
            metrics[term.name] = term.values.mean().detach()
            metrics.update({name: part.mean().detach() for name, part in term.parts.items()})
        return LossOutput(loss, metrics)

    # ---- state
    def parameters(self) -> list[nn.Parameter]:
        return self.weighting.parameters()

    def state_dict(self) -> dict[str, Any]:
        return prefixed("weighting.", self.weighting.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = unprefixed("weighting.", state)
        if weights:
            self.weighting.load_state_dict(weights)


@attrs.define(frozen=True)
class SelfDistillationConfig(LossTables):
    """diagonal_fraction: eta, the share of the batch on s = t; derivative: jvp or finite_difference."""

    diagonal_fraction: float = attrs.field(default=0.75, validator=unit_interval)
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))


class SelfDistillationLoss(FlowMapLoss):
    """eta * flow matching on the diagonal + (1 - eta) * an off-diagonal self-distillation term
    (2505.18825, eq. 4.3): a fraction eta of each batch goes to the diagonal."""

    Config = SelfDistillationConfig

    @abstractmethod
    def off_diagonal_term(self, model: FlowMap, batch: Batch) -> Term:
        """The self-distillation residual on the off-diagonal part of the batch."""

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        diag, off = split_batch(batch, self.config.diagonal_fraction)
        out = []
        if len(diag):
            out.append(self.flow_matching_term(model, diag, "diagonal"))
        if len(off):
            out.append(self.off_diagonal_term(model, off))
        return out
