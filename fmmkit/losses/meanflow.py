"""``meanflow``: MeanFlow (Geng et al. 2025, 2505.13447) in fmmkit's convention.

MeanFlow runs time from data at 0 to noise at 1 and learns u(z, r, t) with r < t; its u is -v after
t -> 1 - t. Here noise is at 0, the map runs s -> t with s < t, and the average velocity v_{s,t} obeys
the Eulerian (MeanFlow) identity

    v_{s,t}(x) = b_s(x) + (t - s) (d/ds v_{s,t}(x) + grad_x v_{s,t}(x) b_s(x)).

MeanFlow replaces b_s by the conditional velocity dI_s/ds and regresses on the stop-gradient target

    v_tgt = dI_s/ds + (t - s) JVP(v)(I_s, s, t)[dI_s/ds, 1, 0],    L = E w |v_{s,t}(I_s) - sg(v_tgt)|^2,

one JVP of v in (x, s, t) with tangent (dI_s/ds, 1, 0), computed with the prediction in the same pass.
(The tangent matters: the paper's ImageNet ablation gives FID 61 with it and 268 / 329 with two wrong
ones.) With guidance, dI_s/ds becomes the guided target (:func:`fmmkit.losses.guidance.guided_target`) in
both the target and the tangent (MeanFlow's CFG).

Defaults are the official code's (Gsunshine/meanflow ``meanflow.py``, ``configs/default.py``;
/work/notes/frontier.md Sec. 1), converted to this convention:
- times: logit-normal with ``logit_mean = +0.4``, ``logit_std = 1.0`` — the paper's P_mean = -0.4 in
  its time tau = 1 - t: t = 1 - sigmoid(-0.4 + n) = sigmoid(0.4 - n) —, both times drawn independently
  and sorted; the first 75% of rows have s = t (``diagonal_fraction = 0.75``, 25% of s != t).
- weighting: adaptive, p = 1, eps = 0.01 on the loss *summed* over dimensions (``reduction = "sum"``).
- guidance: label dropout 0.1 on the first k ~ Binomial(B, 0.1) rows (the s = t rows; those rows get
  the unguided target), mixing coefficient ``kappa = 0.5`` (``scale`` is the effective w = omega / (1 -
  kappa)), ``interval = [0, 1]`` (MeanFlow's [t_start, t_end] is [1 - t_end, 1 - t_start] here).
- the guidance passes run with dropout off (``train=False``).

At the exact map E[v_tgt | I_s] = v_{s,t}: the exact map is the fixed point of this semigradient
scheme, and the residual there is -grad_x X_{s,t}(I_s) (dI_s/ds - b_s(I_s)), so the unweighted loss
equals E (S_t / S_s) Var(dI_s/ds | I_s) for Gaussian data. The loss value is not itself minimised
there along every direction (the target moves with the parameters); the update is what vanishes.
"""

from __future__ import annotations

import attrs

from fmmkit.core import Batch, FlowMap, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.core.validators import non_negative, one_of, positive, unit_interval
from fmmkit.losses.guidance import GuidanceConfig
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import DerivativeTables, FlowMapLoss, Term
from fmmkit.losses.times import TIME_DISTRIBUTIONS, DiagonalHeavyTimes
from fmmkit.losses.weighting import REDUCTIONS, WEIGHTINGS, WeightingConfig

#: MeanFlow's P_mean = -0.4 (noise at tau = 1) is logit_mean = +0.4 here (noise at t = 0).
OFFICIAL_LOGIT_MEAN = 0.4


@attrs.define(frozen=True)
class MeanFlowTimes(DiagonalHeavyTimes):
    """MeanFlow's time sampling: logit-normal(+0.4, 1.0) in this convention, 75% of rows s = t
    (``diagonal_fraction`` of :class:`DiagonalHeavyTimes`)."""

    distribution: str = attrs.field(default="logit_normal", validator=one_of(TIME_DISTRIBUTIONS))
    logit_mean: float = OFFICIAL_LOGIT_MEAN
    logit_std: float = attrs.field(default=1.0, validator=positive)


@attrs.define(frozen=True)
class MeanFlowWeighting(WeightingConfig):
    """MeanFlow's adaptive weight: p = 1, eps = 0.01 on the loss summed over dimensions."""

    kind: str = attrs.field(default="adaptive", validator=one_of(WEIGHTINGS))
    eps: float = attrs.field(default=0.01, validator=positive)
    reduction: str = attrs.field(default="sum", validator=one_of(REDUCTIONS))


@attrs.define(frozen=True)
class MeanFlowGuidance(GuidanceConfig):
    """MeanFlow's guidance defaults: label dropout 0.1, kappa 0.5."""

    label_dropout: float = attrs.field(default=0.1, validator=unit_interval)
    kappa: float = attrs.field(default=0.5, validator=non_negative)


@attrs.define(frozen=True)
class MeanFlowConfig(DerivativeTables):
    """derivative: jvp or finite_difference; times, weighting and guidance with the official defaults."""

    times: MeanFlowTimes = attrs.field(factory=MeanFlowTimes)
    weighting: MeanFlowWeighting = attrs.field(factory=MeanFlowWeighting)
    guidance: MeanFlowGuidance = attrs.field(factory=MeanFlowGuidance)


class MeanFlow(FlowMapLoss):
    """|v_{s,t}(I_s) - sg(dI_s/ds + (t - s) (d/ds v + grad_x v dI_s/ds))|^2 with an adaptive weight."""

    Config = MeanFlowConfig
    label_dropout_rows = "first"

    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        s, t = self.sample_pairs(len(batch), batch.x1)
        path = self.draw(batch, s)
        velocity = self.velocity_target(model, path, batch.y).detach()
        v, transport = self.eulerian_parts(model, path.x_t, s, t, velocity, batch.y,
                                           diagonal=self.diagonal_rows(len(batch)))
        return [Term("meanflow", mean_squares(v - (velocity + transport).detach()), s, t)]



@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("meanflow", MeanFlow)
