"""Machinery shared by fmmkit's losses: per-sample terms, times, weighting, guidance, the diagonal split.

A loss here subclasses :class:`FlowMapLoss` and returns named :class:`Term` s of per-sample squared
residuals (averaged over dimensions) with their times (s, t); the base class draws label dropout
(and, for variable guidance, each sample's guidance scale and interval, packed into the conditioning
matrix y: :mod:`fmmkit.losses.guidance`), reduces all terms together with the configured
:mod:`fmmkit.losses.weighting` (so a term's share of the loss is its share of the batch), and logs each
term's unweighted mean. Configs may carry ``times`` (:class:`fmmkit.losses.times.TimeSampling`),
``weighting`` and ``guidance`` tables.

Target passes — stop-gradient evaluations of the model itself that build a target (LSD's
v_{t,t}(sg X), PSD's two jumps, shortcut's half steps, ESD's v_{s,s}, the guided regression target's
unconditional velocity) — run in eval mode, dropout off, as the official codes do (``train=False``
in MeanFlow, shortcut models and the self-distillation paper's code); ``target_dropout = true``
keeps the model's mode (independent dropout masks, fmmkit's behaviour before issue 11). Passes that
belong to the differentiated residual share one dropout mask (one JVP, or replayed RNG state).
"""

from __future__ import annotations

import contextlib
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from fmmkit.core import Batch, BuildContext, FlowMap, Interpolant, InterpolantSample, Loss, LossOutput, VelocityField
from fmmkit.core.flow_map import frozen_copy, time_dtype  # noqa: F401 (frozen_copy was defined here)
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import non_negative, one_of
from fmmkit.core.derivatives import DERIVATIVE_METHODS, eulerian_velocity_derivative, time_derivative
from fmmkit.losses.held import HeldCopy, prefixed, unprefixed
from fmmkit.losses.stable_target import VELOCITY_TARGETS, stable_velocity
from fmmkit.losses.guidance import (
    GuidanceConfig,
    condition,
    drop_labels,
    effective_scale,
    guided_target,
    guided_velocity,
    is_guided,
    labels_of,
    null_condition,
)
from fmmkit.losses.times import DiagonalHeavyTimes, TimeSampling, diagonal_count, stochastic_time_bounds
from fmmkit.losses.weighting import Weighting, WeightingConfig
from fmmkit.moved import moved_getattr

__getattr__ = moved_getattr(__name__)  # split_diagonal is split_batch


@attrs.define(frozen=True)
class LossTables:
    """The nested tables every loss config has: ``[loss.times]``, ``[loss.weighting]``, ``[loss.guidance]``;
    target_dropout: run the loss's target passes (stop-gradient evaluations of the model) in the
    model's mode, dropout on (false: eval mode, dropout off, as the official codes do)."""

    times: TimeSampling = attrs.field(factory=TimeSampling)
    weighting: WeightingConfig = attrs.field(factory=WeightingConfig)
    guidance: GuidanceConfig = attrs.field(factory=GuidanceConfig)
    target_dropout: bool = False
    #: what the loss regresses the velocity on: "conditional" (dI_t/dt) or "stable" (the batch estimate of
    #: E[dI_t/dt | I_t], :mod:`fmmkit.losses.stable_target`)
    velocity_target: str = attrs.field(default="conditional", validator=one_of(VELOCITY_TARGETS))


@attrs.define(frozen=True)
class DerivativeTables(LossTables):
    """The tables plus ``derivative``: how a loss differentiates the map, ``jvp`` (exact, forward-mode AD)
    or ``finite_difference`` (float64 central differences)."""

    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))


@attrs.define(frozen=True)
class DistillationConfig(DerivativeTables):
    """The config of the distillation losses (LMD, EMD): semigradient puts the stop-gradient on the part
    of the residual through the teacher (X inside the teacher for LMD, the JVP term for EMD)."""

    semigradient: bool = False


@attrs.define(frozen=True)
class TangentConfig(DerivativeTables):
    """A normalised, warmed-up tangent (AYF, sCM): tangent_norm c of g / (|g| + c) (0: off); warmup_steps
    of the ramp r."""

    tangent_norm: float = attrs.field(default=0.1, validator=non_negative)
    warmup_steps: int = attrs.field(default=1000, validator=non_negative)


@dataclass
class Term:
    """Per-sample losses ``values`` (B_k,) of one named term at times s, t (B_k,); ``parts`` are
    per-sample sub-terms logged separately."""

    name: str
    values: Tensor
    s: Tensor
    t: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


def terms_of_parts(parts: list[tuple[Batch, Callable[[Batch], Term]]]) -> list[Term]:
    """``make(part)`` for each (part, make), in order, skipping empty parts (a batch split in two)."""
    return [make(part) for part, make in parts if len(part)]


def split_batch(batch: Batch, fraction: float) -> tuple[Batch, Batch]:
    """(first round(fraction * B) rows, the rest) of a batch."""
    n = diagonal_count(len(batch), fraction)
    first, rest = batch.split([n, len(batch) - n])
    return first, rest


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


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` (and every submodule) in eval mode inside the block; each one's mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training



class FlowMapLoss(Loss):
    """A loss made of per-sample terms: times, label dropout, guidance and weighting handled here.

    ``held_prefix``: a subclass that keeps a frozen copy of the model (``self.held``, a
    :class:`HeldCopy`) names the prefix of its tensors in the loss's state.
    """

    held_prefix: str | None = None

    #: which rows label dropout may hit: "all" (each row with probability p) or "first" (the first
    #: k ~ Binomial(B, p) rows: MeanFlow / iMF, where the s = t rows lead the batch)
    label_dropout_rows: str = "all"

    def __init__(self, config: Any, interpolant: Interpolant, num_classes: int | None = None) -> None:
        super().__init__(config, interpolant)
        self.num_classes = num_classes
        self.weighting = Weighting(getattr(config, "weighting", WeightingConfig()))
        self.needs_forward_ad = getattr(config, "derivative", None) == "jvp"
        # resolved once: a compiled step must not build config objects on every call
        self.times = stochastic_time_bounds(getattr(config, "times", TimeSampling()), interpolant.stochastic)
        self.guidance: GuidanceConfig = getattr(config, "guidance", GuidanceConfig())
        #: the frozen model copy the loss keeps as state, saved and restored with it (see ``held_prefix``)
        self.held: HeldCopy | None = HeldCopy(self.held_prefix) if self.held_prefix else None
        #: ``[loss.times] gap_warmup_steps``: the curriculum's factor on the gaps at the current optimiser step, a
        #: 0-dim tensor that :meth:`begin_step` fills, so that a compiled step reads it without recompiling (a Python
        #: step inside the traced loss made three compiles of ~20 s each on the main job)
        self.gap_scale = torch.ones((), dtype=torch.float64)

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
        return self.times.sample_pairs(n, like.device, time_dtype(like), gap_scale=self.curriculum())

    def draw(self, batch: Batch, t: Tensor) -> InterpolantSample:
        """I_t and dI_t/dt for the data batch at per-sample times t."""
        return self.interpolant.draw(batch.x1, t)

    def label_dropout_span(self, n: int) -> tuple[int, int]:
        """The rows [start, stop) of a batch of n that label dropout may hit (all of them by default)."""
        return 0, n

    # ---- target passes (``config.target_dropout``)
    @contextlib.contextmanager
    def target_pass(self, model: nn.Module) -> Iterator[None]:
        """No gradients, and eval mode (dropout off) unless ``target_dropout``: a pass that builds a target."""
        mode = contextlib.nullcontext() if getattr(self.config, "target_dropout", False) else eval_mode(model)
        with torch.no_grad(), mode:
            yield

    # ---- guidance (``self.guidance``)
    def teacher_velocity(self, teacher: VelocityField | None, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """The (guided) teacher velocity b^w_t(x | y); w per sample for variable guidance, 1 outside the interval."""
        assert teacher is not None, f"loss {type(self).__name__} needs a teacher velocity"
        return guided_velocity(teacher, x, t, labels_of(y), effective_scale(y, t, self.guidance))

    def velocity_target(self, model: FlowMap, path: InterpolantSample, y: Tensor | None,
                        reference: Batch | None = None) -> Tensor:
        """The regression target for v_{t,t}(I_t): dI_t/dt (or its batch estimate of E[dI_t/dt | I_t] with
        ``velocity_target = "stable"``, over the data points of ``reference``, the whole batch, when the
        loss splits it; else the rows' own), guided when labels and a scale are given
        (the model's own velocities from target passes; see :func:`fmmkit.losses.guidance.guided_target`)."""
        scale = effective_scale(y, path.t, self.guidance)
        if getattr(self.config, "velocity_target", "conditional") == "stable":
            ref_x1, ref_y = (None, None) if reference is None else (reference.x1, reference.y)
            path = replace(path, dx_t=stable_velocity(self.interpolant, path, y, self.num_classes, ref_x1, ref_y))
        if not is_guided(y, scale):
            return path.dx_t
        kappa = self.guidance.kappa
        with self.target_pass(model):
            unconditional = model.velocity(path.x_t, path.t, null_condition(y, self.num_classes))
            conditional = model.velocity(path.x_t, path.t, y) if kappa > 0 else None
        return guided_target(path.dx_t, y, scale, self.num_classes, unconditional, conditional, kappa)

    def prepare_labels(self, batch: Batch) -> Batch:
        """Label dropout (``label_dropout_rows``), then, for variable guidance, each row's w and interval
        packed with its label into the conditioning matrix (:func:`fmmkit.losses.guidance.condition`)."""
        if batch.y is None:
            return batch
        start, stop = self.label_dropout_span(len(batch))
        y = batch.y
        dropped = drop_labels(y[start:stop], self.guidance.label_dropout, self.num_classes, self.label_dropout_rows)
        assert dropped is not None
        y = torch.cat([y[:start], dropped, y[stop:]])
        if self.guidance.variable:
            assert y is not None
            y = condition(y, *self.guidance.draw(len(batch), y.device))
        return Batch(batch.x1, y)

    def start(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """(s, t, I_s) for a batch: pairs from :meth:`sample_pairs` and the start points I_s."""
        s, t = self.sample_pairs(len(batch), batch.x1)
        return s, t, self.draw(batch, s).x_t

    def teacher_start(self, batch: Batch, teacher: VelocityField | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(s, t, I_s, b^_s(I_s)) for a batch: pairs s <= t, start points, the (guided) teacher there (no grad)."""
        s, t, x_s = self.start(batch)
        with torch.no_grad():
            return s, t, x_s, self.teacher_velocity(teacher, x_s, s, batch.y)

    def teacher_eulerian_parts(self, model: FlowMap, batch: Batch,
                               teacher: VelocityField | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(s, t, b, v, T): :meth:`teacher_start`, then :meth:`eulerian_parts` along the teacher's b = b^_s(I_s)
        (the s = t rows that ``[loss.times] diagonal_fraction`` puts first take no JVP: T = 0 there)."""
        s, t, x_s, b = self.teacher_start(batch, teacher)
        v, transport = self.eulerian_parts(model, x_s, s, t, b, batch.y, diagonal=self.diagonal_rows(len(batch)))
        return s, t, b, v, transport

    def diagonal_rows(self, n: int) -> int:
        """How many of the n pairs from :meth:`sample_pairs` have s = t: they come first."""
        return diagonal_count(n, self.times.diagonal_fraction)

    def lagrangian_parts(
        self, model: FlowMap, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None, *, diagonal: int = 0
    ) -> tuple[Tensor, Tensor]:
        """(X_{s,t}(x), d/dt X_{s,t}(x)): one JVP in t with tangent 1 by ``config.derivative``.

        The first ``diagonal`` rows have s = t (:meth:`diagonal_rows`): there X_{t,t}(x) = x and, since
        X = x + (t - s) v_{s,t} gives d/dt X = v_{s,t} + (t - s) d/dt v_{s,t}, d/dt X = v_{t,t}(x); they take
        a plain velocity pass and only the others the JVP. The value and gradient are those of one JVP over
        every row (X_{t,t} = x carries no gradient either way); with dropout, its masks are drawn in two
        passes instead of one (the same distribution, other draws)."""
        if diagonal:
            on = slice(0, diagonal)
            v_diag = model.velocity(x[on], s[on], _rows(y, on))
            off = slice(diagonal, None)
            x_off, dt_off = self.lagrangian_parts(model, x[off], s[off], t[off], _rows(y, off))
            return torch.cat([x[on].to(x_off.dtype), x_off]), torch.cat([v_diag.to(dt_off.dtype), dt_off])
        return time_derivative(model, x, s, t, y=y, method=self.config.derivative)

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
        v, total = eulerian_velocity_derivative(model, x, s, t, dx=b, y=y, method=self.config.derivative)
        return v, broadcast_time(t - s, v).to(v.dtype) * total

    def flow_matching_term(self, model: FlowMap, batch: Batch, name: str, reference: Batch | None = None) -> Term:
        """|v_{t,t}(I_t) - dI_t/dt|^2 per sample (guided target with labels; ``reference``: the whole batch
        when ``batch`` is a part of it, the data points of the stable target)."""
        t = self.sample_times(len(batch), batch.x1)
        path = self.draw(batch, t)
        target = self.velocity_target(model, path, batch.y, reference)
        return Term(name, mean_squares(model.velocity(path.x_t, t, batch.y) - target), t, t)

    # ---- the gap curriculum (``[loss.times] gap_warmup_steps``)
    def begin_step(self, step: int) -> None:
        """The gap factor min(1, step / gap_warmup_steps) of optimiser step ``step`` into :attr:`gap_scale`
        (the trainer calls this before each step, outside a compiled loss; an eager call fills it itself)."""
        if self.times.gap_warmup_steps:
            self.gap_scale.fill_(self.times.gap_scale(step))

    def curriculum(self) -> Tensor | None:
        """:attr:`gap_scale` when a gap curriculum is configured, else None (pairs as drawn)."""
        return self.gap_scale if self.times.gap_warmup_steps else None

    # ---- the loss
    @abstractmethod
    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        """The per-sample terms of the loss on ``batch`` (labels already dropped)."""

    def __call__(
        self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None, step: int = 0
    ) -> LossOutput:
        if self.times.gap_warmup_steps and not torch.compiler.is_compiling():
            self.begin_step(step)  # compiled, the trainer has filled it before the traced call
        batch = self.prepare_labels(batch)
        terms = [term for term in self.terms(model, batch, teacher, step) if term.values.numel()]
        assert terms, f"loss {type(self).__name__} produced no terms for a batch of {len(batch)}"
        values = torch.cat([term.values for term in terms])
        s = torch.cat([term.s.to(values.dtype) for term in terms])
        t = torch.cat([term.t.to(values.dtype) for term in terms])
        loss, metrics = self.weighting(values, s, t, dims=math.prod(batch.x1.shape[1:]))
        for term in terms:
            metrics[term.name] = term.values.mean().detach()
            metrics.update({name: part.mean().detach() for name, part in term.parts.items()})
        return LossOutput(loss, metrics)

    # ---- state
    def parameters(self) -> list[nn.Parameter]:
        return self.weighting.parameters()

    def state_dict(self) -> dict[str, Any]:
        held = self.held.state_dict() if self.held is not None else {}
        return {**prefixed("weighting.", self.weighting.state_dict()), **held}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = unprefixed("weighting.", state)
        if weights:
            self.weighting.load_state_dict(weights)
        if self.held is not None:
            self.held.load_state_dict(state)


class DistillationLoss(FlowMapLoss):
    """A loss that distils a frozen teacher velocity b^ (``[teacher]`` is required)."""

    requires_teacher = True


@attrs.define(frozen=True)
class SelfDistillationTables(LossTables):
    """The tables of a self-distillation loss: eta, the share of the batch on s = t, is
    ``[loss.times] diagonal_fraction`` (0.75 by default), as for every loss."""

    times: DiagonalHeavyTimes = attrs.field(factory=DiagonalHeavyTimes)

    @classmethod
    def migrate(cls, params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The former ``[loss] diagonal_fraction`` key, moved into ``[loss.times]`` with the share it
        gave: eta on the diagonal plus ``times.diagonal_fraction`` of the rest (which used to stack)."""
        if "diagonal_fraction" not in params:
            return params, []
        params = dict(params)
        eta = params.pop("diagonal_fraction")
        times = params.get("times", {})
        if isinstance(times, dict):
            inner = times.get("diagonal_fraction", 0.0)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (eta, inner))
            params["times"] = {**times, "diagonal_fraction": eta + (1 - eta) * inner if numbers else eta}
        return params, ["diagonal_fraction is deprecated; it is now [loss.times] diagonal_fraction, the one key for "
                        "the share of the batch on s = t"]


@attrs.define(frozen=True)
class SelfDistillationConfig(SelfDistillationTables, DerivativeTables):
    """times.diagonal_fraction: eta, the share of the batch on s = t; derivative: jvp or finite_difference."""


class SelfDistillationLoss(FlowMapLoss):
    """eta * flow matching on the diagonal + (1 - eta) * an off-diagonal self-distillation term
    (2505.18825, eq. 4.3): a fraction eta = ``times.diagonal_fraction`` of each batch goes to the
    diagonal; the off-diagonal rows draw pairs with :meth:`sample_off_diagonal_pairs`."""

    Config = SelfDistillationConfig

    @abstractmethod
    def off_diagonal_term(self, model: FlowMap, batch: Batch) -> Term:
        """The self-distillation residual on the off-diagonal part of the batch."""

    def sample_off_diagonal_pairs(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """n pairs (s, t) for the off-diagonal rows (the diagonal share is already split off)."""
        return self.times.sample_pairs(n, like.device, time_dtype(like), off_diagonal=True,
                                       gap_scale=self.curriculum())

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        diag, off = split_batch(batch, self.times.diagonal_fraction)
        return terms_of_parts([(diag, lambda rows: self.flow_matching_term(model, rows, "diagonal", batch)),
                               (off, lambda rows: self.off_diagonal_term(model, rows))])
