"""``freeflow``: flow-map distillation without data (FreeFlow, Tong, Ma, Xie & Jaakkola 2025, arXiv 2511.19428).

No data set is read: every state comes from the prior x0 ~ N(0, I) pushed by the student itself (a
spec needs no ``[data]`` table, or ``kind = "prior"``; ``needs_data = False``). FreeFlow's f(z, delta) =
z + delta F(z, delta) maps the prior (its time tau = 1) to tau = 1 - delta, i.e. our X_{0,delta}(x0)
with F = v_{0,delta} (/work/notes/frontier.md Sec. 6; the official repository holds sampling code
only, so the corrector's weighting below is fmmkit's, in the style of DMD2 / rCM).

- **Predictor**: the student's generating velocity matches the teacher along the student's own path,

      P = |d/dt X_{0,t}(x0) - sg b^_t(sg X_{0,t}(x0))|^2,    d/dt X_{0,t} = v_{0,t} + t d/dt v_{0,t},

  one JVP in t (the LMD semigradient restricted to s = 0, started from the prior). With
  ``path_fraction`` > 0 that share of rows starts at s > 0 on the student's own path, x_s = sg X_{0,s}(x0)
  (still no data), so that the multi-step jumps X_{t_k, t_{k+1}} are trained too (fmmkit's extension;
  0 is the paper's prior-only form, a one-step generator).
- **Corrector**: the marginal of the student's samples x^ = X_{0,1}(x0) is aligned with the teacher's:
  noised x_r = alpha_r e + beta_r x^ (+ gamma_r z), r ~ U[``corrector_times``], and the direction
  g = k_r (b^fake_r(x_r) - b^_r(x_r)) / mean|x^ - D^_r(x_r)|, k_r = n_r^2 / (beta'_r n_r^2 - (alpha alpha'
  + gamma gamma')_r beta_r) (n_r^2 = alpha^2 + gamma^2: k_r (b^fake - b^) is the difference of the two
  data predictions E[x1 | x_r], D^ the teacher's), gives C = |x^ - sg(x^ - g)|^2 (value |g|^2, gradient
  2 g . dx^ / dtheta: the distribution-matching gradient). b^fake is an auxiliary velocity network that
  tracks the student's samples by flow matching on sg x^ (term F); it starts as a trainable copy of the
  teacher network (DMD's initialisation) or, for a teacher without parameters (the exact ``gaussian``
  teacher), as a small MLP; its parameters belong to the loss (``Loss.parameters()``, saved in its state).

L = mean over rows of [P] + ``corrector_weight`` [C] + [F] (each term a share of the batch:
``corrector_fraction`` of the rows go to the corrector). The corrector's weight is fmmkit's choice (the
paper's training code is not public): distilling the exact Gaussian teacher with no data for 600 steps
(``tests/test_frontier_methods.py::train_freeflow``), weight 1 left a relative map error of 4.9%, 0.3
1.9%, 0.1 (the default) 1.2%, the predictor alone 1.1% — an online fake that lags the student biases
the corrector, so it is kept a small correction. At the exact flow map of b^ the predictor
residual vanishes, the student's samples have the teacher's law, so (with a fake equal to the teacher)
C = 0 and F sits at the flow-matching floor; the predictor alone has the exact map as its only zero, so
FreeFlow with an exact teacher and no data converges to the exact map.
"""

from __future__ import annotations

import copy
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from fmmkit.core import Batch, BuildContext, FlowMap, VelocityField
from fmmkit.core.loss import LossBuildError
from fmmkit.core.shapes import broadcast_time, mean_squares
from fmmkit.core.validators import SpecValueError, non_negative, one_of, positive, unit_interval
from fmmkit.core.derivatives import DERIVATIVE_METHODS, time_derivative
from fmmkit.losses.guidance import labels_of
from fmmkit.hookspecs import hookimpl
from fmmkit.losses.base import FlowMapLoss, LossTables, Term, prefixed, split_batch, unprefixed


def _check_range(instance: Any, attribute: attrs.Attribute[Any], value: list[float]) -> None:
    if len(value) != 2 or not 0 <= value[0] < value[1] <= 1:
        raise SpecValueError(attribute.name, f"must be [lo, hi] with 0 <= lo < hi <= 1, got {value!r}")


def _corrector_times() -> list[float]:
    return [0.02, 0.98]


@attrs.define(frozen=True)
class FreeFlowConfig(LossTables):
    """path_fraction: share of predictor rows starting on the student's own path at s > 0 (0: the
    paper's prior-only form); corrector_weight (0: predictor only); corrector_fraction: share of the
    batch for the corrector; corrector_times: [lo, hi] of its noise times r; fake_width, fake_depth:
    the fake velocity MLP when the teacher has no parameters; derivative: jvp or finite_difference."""

    path_fraction: float = attrs.field(default=0.0, validator=unit_interval)
    corrector_weight: float = attrs.field(default=0.1, validator=non_negative)
    corrector_fraction: float = attrs.field(default=0.25, validator=unit_interval)
    corrector_times: list[float] = attrs.field(factory=_corrector_times, validator=_check_range)
    fake_width: int = attrs.field(default=128, validator=positive)
    fake_depth: int = attrs.field(default=3, validator=positive)
    derivative: str = attrs.field(default="jvp", validator=one_of(DERIVATIVE_METHODS))

    def __attrs_post_init__(self) -> None:
        if self.guidance.variable and self.corrector_weight > 0:
            raise SpecValueError("guidance.scale", "the corrector's fake velocity is not conditioned on the guidance "
                                 "scale: with variable guidance set corrector_weight = 0")


def fake_velocity_network(teacher: VelocityField | None, ctx: BuildContext, config: FreeFlowConfig) -> nn.Module | None:
    """A trainable copy of the teacher network, or a small MLP flow map for a parameter-free teacher."""
    if config.corrector_weight <= 0:
        return None
    if isinstance(teacher, nn.Module) and any(True for _ in teacher.parameters()):
        fake = copy.deepcopy(teacher).train()
        for p in fake.parameters():
            p.requires_grad_(True)
        return fake
    if len(ctx.data_shape) != 1:
        raise LossBuildError("freeflow's corrector needs a teacher network to start its fake velocity from (this "
                             "teacher has no parameters and the data are not vectors); set corrector_weight = 0")
    from fmmkit.nets.mlp import MLP, MLPConfig

    backbone = MLP(MLPConfig(width=config.fake_width, depth=config.fake_depth), tuple(ctx.data_shape), ctx.num_classes)
    return FlowMap(backbone)


class FreeFlow(FlowMapLoss):
    """Predictor |d/dt X_{0,t}(x0) - sg b^_t(X)|^2 from the prior, plus the distribution-matching corrector."""

    Config = FreeFlowConfig
    requires_teacher = True
    needs_data = False

    def __init__(self, config: FreeFlowConfig, interpolant: Any, num_classes: int | None = None,
                 fake: nn.Module | None = None) -> None:
        super().__init__(config, interpolant, num_classes)
        self.fake = fake

    @classmethod
    def build(cls, config: FreeFlowConfig, ctx: BuildContext) -> FreeFlow:
        assert ctx.interpolant is not None, "losses are built after the interpolant"
        return cls(config, ctx.interpolant, ctx.num_classes, fake_velocity_network(ctx.teacher, ctx, config))

    # ---- the terms
    def terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None, step: int) -> list[Term]:
        use_corrector = self.fake is not None and self.config.corrector_weight > 0
        corrector_rows, predictor_rows = split_batch(batch, self.config.corrector_fraction if use_corrector else 0.0)
        out = []
        if len(predictor_rows):
            out.append(self.predictor_term(model, predictor_rows, teacher))
        if len(corrector_rows):
            out.extend(self.corrector_terms(model, corrector_rows, teacher))
        return out

    def prior(self, batch: Batch) -> Tensor:
        """x0 ~ N(0, I) shaped like the batch's points (their values are never read)."""
        return torch.randn_like(batch.x1)

    def predictor_term(self, model: FlowMap, batch: Batch, teacher: VelocityField | None) -> Term:
        """|d/dt X_{s,t}(x_s) - sg b^_t(sg X_{s,t}(x_s))|^2 with x_s = x0 (s = 0) or sg X_{0,s}(x0)."""
        n, y = len(batch), batch.y
        x0 = self.prior(batch)
        s, t = self.sample_pairs(n, x0)
        on_path = torch.rand(n, device=x0.device) < self.config.path_fraction
        t = torch.where(on_path, t, self.sample_times(n, x0))  # from the prior: t from the time law itself
        s = torch.where(on_path, s, torch.zeros_like(s))
        if bool(on_path.any()):
            with self.target_pass(model):
                x_s = torch.where(broadcast_time(on_path, x0), model(x0, torch.zeros_like(s), s, y), x0)
        else:
            x_s = x0
        x_st, dt_x_st = time_derivative(model, x_s, s, t, y=y, method=self.config.derivative)
        with torch.no_grad():
            target = self.teacher_velocity(teacher, x_st.detach(), t, y)
        return Term("predictor", mean_squares(dt_x_st - target), s, t)

    def corrector_terms(self, model: FlowMap, batch: Batch, teacher: VelocityField | None) -> list[Term]:
        """The distribution-matching term C on x^ = X_{0,1}(x0) and the fake velocity's flow matching F."""
        assert self.fake is not None
        n, y = len(batch), batch.y
        labels = labels_of(y)
        x0 = self.prior(batch)
        zeros = torch.zeros(n, device=x0.device, dtype=torch.float64 if x0.dtype == torch.float64 else torch.float32)
        sample = model(x0, zeros, zeros + 1, y)
        self._to_device(x0.device, x0.dtype)
        lo, hi = self.config.corrector_times
        r = lo + (hi - lo) * torch.rand_like(zeros)
        noised = self.interpolant.draw(sample.detach(), r)
        with torch.no_grad():
            fake_v = self.fake.velocity(noised.x_t, r, labels)
            real_v = self.teacher_velocity(teacher, noised.x_t, r, y)
            k, c = self.data_prediction_coefficients(r, sample)
            real_d = k * real_v - c * noised.x_t
            g = k * (fake_v - real_v)
            norm = (sample.detach() - real_d).abs().flatten(1).mean(1).clamp_min(1e-5)
            g = g / broadcast_time(norm, g)
        corrector = self.config.corrector_weight * mean_squares(sample - (sample - g).detach())
        path = self.interpolant.draw(sample.detach(), r)
        fake_fm = mean_squares(self.fake.velocity(path.x_t, r, labels) - path.dx_t)
        return [Term("corrector", corrector, zeros, zeros + 1), Term("fake", fake_fm, r, r)]

    def data_prediction_coefficients(self, r: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(k, c) with E[x1 | x_r = x] = k b_r(x) - c x: k = n^2 / (beta' n^2 - (alpha alpha' + gamma gamma') beta),
        c = (alpha alpha' + gamma gamma') / (beta' n^2 - (alpha alpha' + gamma gamma') beta), n^2 = alpha^2 + gamma^2."""
        ip, rb = self.interpolant, broadcast_time(r, like)
        alpha, beta, d_alpha, d_beta = ip.alpha(rb), ip.beta(rb), ip.d_alpha(rb), ip.d_beta(rb)
        n2 = alpha**2 + ip.gamma(rb) ** 2
        cross = alpha * d_alpha + ip.gamma_d_gamma(rb)
        denominator = (d_beta * n2 - cross * beta).clamp_min(1e-12)
        return (n2 / denominator).to(like.dtype), (cross / denominator).to(like.dtype)

    # ---- the fake network's parameters and state
    def _to_device(self, device: torch.device, dtype: torch.dtype) -> None:
        """The fake on the data's device and in its floating dtype (parameters keep their identity)."""
        assert self.fake is not None
        first = next(self.fake.parameters(), None)
        if first is not None and (first.device != device or first.dtype != dtype):
            self.fake.to(device=device, dtype=dtype)

    def parameters(self) -> list[nn.Parameter]:
        fake = list(self.fake.parameters()) if self.fake is not None else []
        return [*super().parameters(), *fake]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.fake is not None:
            state.update(prefixed("fake.", self.fake.state_dict()))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        fake = unprefixed("fake.", state)
        if self.fake is not None and fake:
            self.fake.load_state_dict(fake)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("freeflow", FreeFlow)
