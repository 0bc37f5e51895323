"""``improved_meanflow`` (iMF): improved MeanFlow (Geng, Lu et al. 2025, arXiv 2512.02012) in fmmkit's convention.

iMF recasts MeanFlow as a regression of the *instantaneous* velocity, re-parameterised through the
average-velocity network, with the JVP tangent taken from the network's own marginal velocity instead
of the conditional dI/ds (which makes MeanFlow's target depend on the network and on the noise):

    V_{s,t}(x) = v_{s,t}(x) - (t - s) sg[ d/ds v_{s,t}(x) + grad_x v_{s,t}(x) b_s(x) ],   x = I_s,
    b_s(x) = sg v_{s,s}(x | y, w'),
    L = E adp|V_{s,t}(I_s) - v_g|^2 + lambda E_{s != t} adp|v_{s,s}(I_s | y, w') - v_g|^2,
    v_g = dI_s/ds + (1 - 1/w') sg[ v_{s,s}(I_s | y, w') - v_{s,s}(I_s | null, 1) ],

one JVP of v in (x, s, t) with tangent (dx, ds, dt) = (b_s, 1, 0). w' is the sample's guidance scale w
inside its guidance interval and 1 outside (v_g = dI_s/ds there, and on null-label rows); adp is the
adaptive weight 1 / (|.|^2_sum + 0.01). Conversion from the official code (Lyy-iiis/imeanflow
``imf.py``; /work/notes/frontier.md Sec. 2): its u(z, t, r) with noise at tau = 1 is -v_{s,t} with
s = 1 - t, t' = 1 - r, and its d/dt u along (v_c, 1, 0) is d/ds v + grad_x v b along (b, 1, 0),
b = -v_c; V = u + (t - r) sg(du/dt) becomes V = v - (t - s) sg(...). iMF's auxiliary v-head is, with
fmmkit's single network, the diagonal v_{s,s} (the boundary condition of the average velocity): its
loss is flow matching on v_{s,s}, the same as the main term on the s = t rows, so it is added on the
s != t rows (``velocity_weight``, 1 as the official loss_u + loss_v); that pass, with gradient, also
gives the tangent b.

Defaults follow the official code: times logit-normal(+0.4, 1.0) (its P_mean = -0.4, time reversed),
half the rows s = t; adaptive weight p = 1, eps = 0.01 on the summed loss; label dropout 0.1 on the
first rows (the s = t rows); guidance as an input of the model: w log-uniform on [1, 8]
(``sample_cfg_scale``, s_max = 7) and a random interval [start ~ U[0, 1/2], end ~ U[1/2, 1]] per sample
(``sample_cfg_interval``, [0, 1] on the s = t rows), so one model samples at any w (``guidance =
W`` at sampling). On unlabelled data there is nothing to guide and these are inert.

At the exact map with exact velocity (no guidance) the MeanFlow identity gives V_{s,t} = b_s exactly,
so both terms are regressions whose floor is E Var(dI_s/ds | I_s), minimised there and rising along
any perturbation P as eps^2 E|P - (t - s) (d/ds P + grad_x P b)|^2.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import SpecValueError, non_negative, one_of, unit_interval
from fmmkit.core.derivatives import DERIVATIVE_METHODS, eulerian_velocity_derivative
from fmmkit.losses.guidance import (
    END,
    INTERVAL_SAMPLINGS,
    SCALE_DISTRIBUTIONS,
    START,
    GuidanceConfig,
    effective_scale,
    is_condition,
    labels_of,
    null_condition,
)
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term
from fmmkit.losses.meanflow import MeanFlowTimes, MeanFlowWeighting
from fmmkit.losses.times import diagonal_count


@attrs.define(frozen=True)
class ImprovedMeanFlowTimes(MeanFlowTimes):
    """iMF's time sampling: MeanFlow's logit-normal(+0.4, 1.0) here (P_mean = -0.4 in its time), half the rows s = t."""

    diagonal_fraction: float = attrs.field(default=0.5, validator=unit_interval)


def _imf_scale() -> list[float]:
    return [1.0, 8.0]


@attrs.define(frozen=True)
class ImprovedMeanFlowGuidance(GuidanceConfig):
    """iMF's guidance: w log-uniform on [1, 8], random intervals, label dropout 0.1 (all inputs of the model)."""

    scale: float | list[float] = attrs.field(factory=_imf_scale, validator=GuidanceConfig.__attrs_attrs__.scale.validator)  # type: ignore[attr-defined]
    scale_distribution: str = attrs.field(default="log_uniform", validator=one_of(SCALE_DISTRIBUTIONS))
    label_dropout: float = attrs.field(default=0.1, validator=unit_interval)
    interval_sampling: str = attrs.field(default="random", validator=one_of(INTERVAL_SAMPLINGS))


@attrs.define(frozen=True)
class ImprovedMeanFlowConfig(LossTables):
    """velocity_weight: lambda of the auxiliary flow-matching term on v_{s,s} (0: off); derivative: jvp
    or finite_difference; times, weighting and guidance with the official defaults."""

    times: ImprovedMeanFlowTimes = attrs.field(factory=ImprovedMeanFlowTimes)
    weighting: MeanFlowWeighting = attrs.field(factory=MeanFlowWeighting)
    guidance: ImprovedMeanFlowGuidance = attrs.field(factory=ImprovedMeanFlowGuidance)
    velocity_weight: float = attrs.field(default=1.0, validator=non_negative)
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))

    def __attrs_post_init__(self) -> None:
        if self.guidance.kappa > 0:
            raise SpecValueError("guidance.kappa", "iMF's target has no kappa (it is MeanFlow's); leave it at 0")


def full_interval(y: Tensor | None, rows: int) -> Tensor | None:
    """y with the guidance interval of its first ``rows`` rows set to [0, 1] (iMF: the s = t rows)."""
    if not is_condition(y) or rows == 0:
        return y
    assert y is not None
    y = y.clone()
    y[:rows, START], y[:rows, END] = 0.0, 1.0
    return y


def instantaneous_condition(y: Tensor | None, scale: Tensor | float) -> Tensor | None:
    """The conditioning of iMF's v-head query: the interval-masked scale w' and the interval [0, 1]."""
    if not is_condition(y):
        return y
    assert y is not None and isinstance(scale, Tensor)
    out = y.clone()
    out[:, 1], out[:, START], out[:, END] = scale.to(y.dtype), 0.0, 1.0
    return out


class ImprovedMeanFlow(FlowMapLoss):
    """|v_{s,t} - (t - s) sg(D_b v) - v_g|^2 with b the model's own velocity, plus flow matching on v_{s,s}."""

    Config = ImprovedMeanFlowConfig
    label_dropout_rows = "first"

    def guided_target(self, model: FlowMap, x: Tensor, s: Tensor, dx: Tensor, y: Tensor | None,
                      scale: Tensor | float, v_cond: Tensor) -> Tensor:
        """v_g = dI_s/ds + (1 - 1/w') (sg v(x | y, w') - sg v(x | null, 1)) on labelled rows, dI_s/ds elsewhere."""
        labels = labels_of(y)
        if labels is None or self.num_classes is None or not bool((torch.as_tensor(scale) != 1).any()):
            return dx
        with self.target_pass(model):
            v_uncond = model.velocity(x, s, null_condition(y, self.num_classes) if is_condition(y) else None)
        w = broadcast_time(torch.as_tensor(scale, dtype=dx.dtype, device=dx.device).expand(len(s)), dx)
        guided = dx + (1 - 1 / w) * (v_cond.detach() - v_uncond)
        labelled = (labels != self.num_classes).reshape(-1, *([1] * (dx.ndim - 1)))
        return torch.where(labelled, guided, dx)

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        n = len(batch)
        s, t = self.sample_pairs(n, batch.x1)  # the first n_diag rows have s = t (and lead the label dropout)
        n_diag = diagonal_count(n, self.times.diagonal_fraction)
        y = full_interval(batch.y, n_diag)
        path = self.draw(batch, s)
        scale = effective_scale(y, s, self.guidance)
        rows = {"diag": slice(0, n_diag), "off": slice(n_diag, n)}
        out = []
        if n_diag:
            out.append(self.diagonal_term(model, path.x_t[rows["diag"]], s[rows["diag"]], path.dx_t[rows["diag"]],
                                          _rows(y, rows["diag"]), _rows(scale, rows["diag"])))
        if n_diag < n:
            out.extend(self.off_diagonal_terms(model, path.x_t[rows["off"]], s[rows["off"]], t[rows["off"]],
                                               path.dx_t[rows["off"]], _rows(y, rows["off"]), _rows(scale, rows["off"])))
        return out

    def diagonal_term(self, model: FlowMap, x: Tensor, s: Tensor, dx: Tensor, y: Tensor | None,
                      scale: Tensor | float) -> Term:
        """s = t: V = v_{s,s}, so the term is flow matching against the guided v_g."""
        v = model.velocity(x, s, y)
        target = self.guided_target(model, x, s, dx, y, scale, v)
        return Term("diagonal", mean_squares(v - target), s, s)

    def off_diagonal_terms(self, model: FlowMap, x: Tensor, s: Tensor, t: Tensor, dx: Tensor, y: Tensor | None,
                           scale: Tensor | float) -> list[Term]:
        """s < t: the iMF regression |V_{s,t}(I_s) - v_g|^2 and the auxiliary |v_{s,s}(I_s) - v_g|^2."""
        y_velocity = instantaneous_condition(y, scale)
        if self.config.velocity_weight > 0:
            v_cond = model.velocity(x, s, y_velocity)
        else:
            with self.target_pass(model):
                v_cond = model.velocity(x, s, y_velocity)
        target = self.guided_target(model, x, s, dx, y, scale, v_cond).detach()
        v, total = eulerian_velocity_derivative(model, x, s, t, dx=v_cond.detach(), y=y, method=self.config.derivative)
        compound = v - broadcast_time(t - s, v).to(v.dtype) * total.detach()
        out = [Term("imf", mean_squares(compound - target), s, t)]
        if self.config.velocity_weight > 0:
            out.append(Term("velocity", self.config.velocity_weight * mean_squares(v_cond - target), s, s))
        return out


def _rows(value: Tensor | float | None, rows: slice) -> Any:
    """value[rows] for a per-sample tensor; floats and None pass through."""
    return value[rows] if isinstance(value, Tensor) else value


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("improved_meanflow", ImprovedMeanFlow)
