"""Every registered built-in loss at the exact Gaussian flow map (fmmkit.exact.GaussianFlowMap).

The model is a real :class:`FlowMap` around a backbone whose average velocity is the exact one plus
eps * P(x, s, t), P a fixed smooth perturbation and eps a parameter; the teacher is the exact velocity.
For data N(m, diag(std^2)) under the linear and trig interpolants, with and without gamma noise:

1. value at eps = 0, of the loss and of each named term: residuals ~0 (< 1e-12), terms that regress
   on dI/dt at their closed-form floor (the conditional variance, integrated over the loss's own time
   law by Gauss-Legendre quadrature), within 2.5% relative (Monte Carlo over 2^15 samples; the standard error is ~0.6%);
2. the value rises along eps in either direction (objectives only; see ``SEMIGRADIENT_ONLY``);
3. the training update vanishes at the exact map and points back to it along eps in either direction:
   d loss / d eps (stop-gradients as in training) has the sign of eps at eps = +-0.3, and at eps = 0 it
   is below 1e-9 for residual losses, and for the others below a tenth of its mean size at +-0.3 (the
   update a perturbation of 0.03 would cause; the Monte Carlo noise of the gradient is ~2% of it).

Times are drawn on [0.05, 0.95] so that the conditional variance stays bounded with gamma > 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fmmkit.core import Backbone, Batch, BuildContext, FlowMap, Interpolant
from fmmkit.exact import GaussianFlowMap, gaussian_moments
from fmmkit.registry import get_registry
from fmmkit.spec.loader import _component

LO, HI = 0.05, 0.95
TIMES = {"t_min": LO, "t_max": HI}
#: for the losses whose default time law is not uniform (MeanFlow's logit-normal): the closed forms integrate U
UNIFORM = {**TIMES, "distribution": "uniform"}
#: shortcut's official clips (+-4) cut the Gaussian's tails: off for the exact residual
NO_CLIP = {"intermediate_clip": 0.0, "target_clip": 0.0}
N = 2**15
EPS = 0.3
MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
STD = torch.tensor([0.6, 1.3], dtype=torch.float64)
NODES, WEIGHTS = np.polynomial.legendre.leggauss(96)


class ExactPlusPerturbation(Backbone):
    """v_{s,t}(x) = exact v_{s,t}(x) + eps * P(x, s, t), P = tanh(A [x, s, t] + c) B, fixed, float64."""

    def __init__(self, exact: GaussianFlowMap, dim: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.exact = exact
        self.eps = nn.Parameter(torch.zeros((), dtype=torch.float64))
        g = torch.Generator().manual_seed(7)
        self.register_buffer("a", torch.randn(dim + 2, hidden, generator=g, dtype=torch.float64))
        self.register_buffer("c", torch.randn(hidden, generator=g, dtype=torch.float64))
        self.register_buffer("b", torch.randn(hidden, dim, generator=g, dtype=torch.float64) / hidden**0.5)

    def perturbation(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return torch.tanh(torch.cat([x, s[:, None], t[:, None]], dim=1) @ self.a + self.c) @ self.b

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.exact.average_velocity(x, s, t) + self.eps * self.perturbation(x, s, t)


# ---- closed forms -------------------------------------------------------------------------------

def per_dim_moments(ip: Interpolant, t: Tensor) -> tuple[Tensor, Tensor]:
    """(S_t, Var(dI_t/dt | I_t)) per dimension, shape (len(t), dim)."""
    cv = torch.stack([GaussianFlowMap(ip, MEAN[i:i + 1], STD[i:i + 1]).conditional_variance(t) for i in range(2)], 1)
    _, s, _, _ = gaussian_moments(ip, t[:, None], MEAN, STD**2)
    return s, cv


def gauss(lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights for the mean over U[lo, hi]."""
    x = torch.tensor(lo + (hi - lo) * (NODES + 1) / 2)
    return x, torch.tensor(WEIGHTS / 2)


def fm_floor(ip: Interpolant) -> float:
    """E_{t ~ U[LO, HI]} Var(dI_t/dt | I_t), averaged over dimensions."""
    t, w = gauss(LO, HI)
    return float((w * per_dim_moments(ip, t)[1].mean(1)).sum())


def start_floor(ip: Interpolant) -> float:
    """E Var(dI_s/ds | I_s) averaged over dimensions for the start s of a pair uniform on the triangle (the
    minimum of two U[LO, HI] draws, density 2 (HI - s) / (HI - LO)^2): the s = t rows of a time law with a
    diagonal share, which keep the pair's start time."""
    t, w = gauss(LO, HI)
    density = 2 * (HI - t) / (HI - LO)
    return float((w * density * per_dim_moments(ip, t)[1].mean(1)).sum())


def meanflow_floor(ip: Interpolant) -> float:
    """E_{s<t uniform on the triangle} mean_i (S_t / S_s)_i Var_i(dI_s/ds | I_s)."""
    s, ws = gauss(LO, HI)
    total = 0.0
    for si, wi in zip(s, ws):
        t, wt = gauss(float(si), HI)
        st, _ = per_dim_moments(ip, t)
        ss, cv = per_dim_moments(ip, si.reshape(1))
        inner = (wt[:, None] * st).sum(0) * (HI - float(si))  # int_s^HI S_t dt per dim
        total += float(wi) * float((inner / ss[0] * cv[0]).mean()) * (HI - LO)
    return 2 * total / (HI - LO) ** 2


def consistency_floor(ip: Interpolant) -> float:
    """E_{s ~ U[LO, HI]} mean_i (S_1 / S_s)_i Var_i(dI_s/ds | I_s)."""
    s, w = gauss(LO, HI)
    ss, cv = per_dim_moments(ip, s)
    s1, _ = per_dim_moments(ip, torch.ones(1, dtype=torch.float64))
    return float((w[:, None] * s1 / ss * cv).mean(1).sum())


def ZERO(ip: Interpolant) -> float:  # noqa: N802 - a closed form, like the others
    """The value of a residual at the exact map."""
    return 0.0


def share(fraction: float) -> float:
    """The exact share of the batch a split of ``fraction`` gives (round(fraction * N) rows)."""
    return round(fraction * N) / N


# ---- the oracle table -----------------------------------------------------------------------------

@dataclass
class Oracle:
    """How to set a loss up at the exact map, and its value there."""

    config: dict[str, Any] = field(default_factory=dict)
    floor: Callable[[Interpolant], float] = lambda ip: 0.0
    #: per-term values there (metric name -> closed form), checked like ``floor``
    terms: dict[str, Callable[[Interpolant], float]] = field(default_factory=dict)
    step: int = 0
    #: the loss value is an objective minimised at the exact map (False: a semigradient fixed point only)
    objective: bool = True


ORACLES: dict[str, list[Oracle]] = {
    "flow_matching": [Oracle({"times": TIMES}, fm_floor)],
    "lagrangian_distillation": [Oracle({"times": TIMES}), Oracle({"times": TIMES, "semigradient": True})],
    "eulerian_distillation": [Oracle({"times": TIMES}), Oracle({"times": TIMES, "semigradient": True})],
    "ayf_eulerian": [Oracle({"times": TIMES, "warmup_steps": 100}, step=100)],
    "ayf_lagrangian": [Oracle({"times": TIMES, "warmup_steps": 100}, step=100)],
    "progressive_distillation": [Oracle({"times": TIMES, "rounds": 3, "steps_per_round": 10}, step=20),
                                 Oracle({"times": TIMES, "rounds": 3, "steps_per_round": 10}, step=10),
                                 Oracle({"times": TIMES, "rounds": 3, "steps_per_round": 10, "substeps": 3}, step=20),
                                 # PFMM from a trained flow map: round 0 composes K jumps of the teacher's map
                                 Oracle({"times": TIMES, "rounds": 3, "steps_per_round": 10, "substeps": 4,
                                         "init": "teacher_map"}, step=0)],
    "direct_flow_map_matching": [Oracle({"times": TIMES}, fm_floor, {"lagrangian": fm_floor, "invertibility": ZERO})],
    "lagrangian_self_distillation": [Oracle({"times": TIMES}, lambda ip: share(0.75) * fm_floor(ip),
                                            {"diagonal": fm_floor, "lagrangian": ZERO})],
    "eulerian_self_distillation": [Oracle({"times": TIMES}, lambda ip: share(0.75) * fm_floor(ip),
                                          {"diagonal": fm_floor, "eulerian": ZERO}),
                                   Oracle({"times": TIMES, "stopgrad": "convex"}, lambda ip: share(0.75) * fm_floor(ip),
                                          {"diagonal": fm_floor, "eulerian": ZERO})],
    "progressive_self_distillation": [
        Oracle({"times": TIMES, "split": "uniform"}, lambda ip: share(0.75) * fm_floor(ip),
               {"diagonal": fm_floor, "progressive": ZERO}),
        Oracle({"times": {**TIMES, "diagonal_fraction": 0.5}, "split": "midpoint"}, lambda ip: share(0.5) * fm_floor(ip),
               {"diagonal": fm_floor, "progressive": ZERO}),
    ],
    "meanflow": [
        Oracle({"times": {**UNIFORM, "diagonal_fraction": 0.25}, "weighting": {"kind": "none"}},
               lambda ip: share(0.25) * start_floor(ip) + (1 - share(0.25)) * meanflow_floor(ip), objective=False),
        Oracle({"times": {**UNIFORM, "diagonal_fraction": 0.75}}, lambda ip: float("nan"), objective=False),
        Oracle({"times": TIMES}, lambda ip: float("nan"), objective=False),  # the official defaults
    ],
    "shortcut": [Oracle({"times": TIMES, "finest_uses_velocity": False, "ema_decay": 0.0, **NO_CLIP},
                        lambda ip: (1 - share(0.125)) * fm_floor(ip), {"flow_matching": fm_floor, "bootstrap": ZERO}),
                 Oracle({"times": TIMES, "finest_uses_velocity": False, "ema_decay": 0.9, "levels": 4, **NO_CLIP},
                        lambda ip: (1 - share(0.125)) * fm_floor(ip), {"flow_matching": fm_floor, "bootstrap": ZERO})],
    "consistency_distillation": [Oracle({"times": TIMES, "warmup_steps": 10}, step=10),
                                 Oracle({"times": TIMES, "warmup_steps": 10, "prior_weighting": True}, step=10)],
    "improved_meanflow": [
        # s = t rows and s != t rows all start at the pair's start time: every term at the start-time floor
        Oracle({"times": UNIFORM, "weighting": {"kind": "none"}}, start_floor,
               {"diagonal": start_floor, "imf": start_floor, "velocity": start_floor}),
        Oracle({"times": {**UNIFORM, "diagonal_fraction": 0.25}, "velocity_weight": 0.0}, lambda ip: float("nan"),
               {"diagonal": start_floor, "imf": start_floor}),
    ],
    "freeflow": [Oracle({"times": TIMES, "corrector_weight": 0.0}, terms={"predictor": ZERO}),
                 Oracle({"times": TIMES, "corrector_weight": 0.0, "path_fraction": 0.5}, terms={"predictor": ZERO})],
    "consistency_training": [
        Oracle({"times": TIMES, "warmup_steps": 10, "tangent_norm": 0.0}, consistency_floor, step=10, objective=False),
        Oracle({"times": TIMES, "warmup_steps": 10}, lambda ip: float("nan"), step=10, objective=False),
    ],
}
#: Losses whose target moves with the parameters through a Monte-Carlo dI/ds inside a JVP: the exact
#: map is the fixed point of their update (test 3) but their value can fall along some directions.
SEMIGRADIENT_ONLY = {"meanflow", "consistency_training"}

INTERPOLANTS = [("linear", 0.0), ("linear", 0.5), ("trig", 0.0), ("trig", 0.5)]
CASES = [(name, i) for name, oracles in ORACLES.items() for i in range(len(oracles))]


pytestmark = pytest.mark.usefixtures("one_thread")


def builtin_losses() -> list[str]:
    registry = get_registry()
    return [n for n in registry.names("loss") if registry.get("loss", n).plugin.startswith("fmmkit.")]


def test_every_builtin_loss_has_an_oracle() -> None:
    assert sorted(builtin_losses()) == sorted(ORACLES)
    assert all(not o.objective for name in SEMIGRADIENT_ONLY for o in ORACLES[name])


def make_interpolant(kind: str, noise: float) -> Interpolant:
    registry = get_registry()
    spec = _component({"kind": kind, "noise": noise}, "interpolant", "interpolant", "test", registry)
    return registry.build("interpolant", kind, spec.config, BuildContext())


def make_loss(name: str, config: dict[str, Any], ip: Interpolant) -> Any:
    registry = get_registry()
    spec = _component({"kind": name, **config}, "loss", "loss", "test", registry)
    return registry.build("loss", name, spec.config, BuildContext(data_shape=(2,), interpolant=ip))


@pytest.fixture(scope="module", params=INTERPOLANTS, ids=[f"{k}-noise{a}" for k, a in INTERPOLANTS])
def setting(request: pytest.FixtureRequest) -> tuple[Interpolant, GaussianFlowMap, FlowMap, Batch]:
    ip = make_interpolant(*request.param)
    exact = GaussianFlowMap(ip, MEAN, STD)
    model = FlowMap(ExactPlusPerturbation(exact))
    batch = Batch(exact.sample(N, torch.Generator().manual_seed(3), dtype=torch.float64))
    return ip, exact, model, batch


def evaluate(loss: Any, oracle: Oracle, setting: tuple, eps: float, seed: int = 11) -> tuple[float, float, dict]:
    """(loss value, d loss / d eps, metrics) at perturbation eps, with the loss's RNG fixed by ``seed``.

    The same loss object serves every eps of a test: a frozen copy or EMA it takes on its first call
    (at eps = 0) stays the exact map, as within a round of progressive distillation.
    """
    ip, exact, model, batch = setting
    with torch.no_grad():
        model.backbone.eps.fill_(eps)
    model.zero_grad()
    torch.manual_seed(seed)
    out = loss(model, batch, teacher=exact, step=oracle.step)
    out.loss.backward()
    return out.loss.item(), model.backbone.eps.grad.item(), {k: float(v) for k, v in out.metrics.items()}


@pytest.mark.parametrize(("name", "index"), CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_exact_map_is_the_minimiser(name: str, index: int, setting: tuple) -> None:
    oracle = ORACLES[name][index]
    ip = setting[0]
    loss = make_loss(name, oracle.config, ip)
    value, grad0, metrics = evaluate(loss, oracle, setting, 0.0)
    floor = oracle.floor(ip)
    for label, got, want in [("loss", value, floor), *((k, metrics[k], f(ip)) for k, f in oracle.terms.items())]:
        if want == 0.0:
            assert abs(got) < 1e-12, f"{name}: {label} = {got:.3g} at the exact map, want 0"
        elif not np.isnan(want):
            assert got == pytest.approx(want, rel=0.025), f"{name}: {label} = {got:.5g}, closed form {want:.5g}"

    plus, grad_plus, _ = evaluate(loss, oracle, setting, EPS)
    minus, grad_minus, _ = evaluate(loss, oracle, setting, -EPS)
    if oracle.objective:
        assert plus > value + 1e-8 and minus > value + 1e-8, f"{name}: {minus:.6g} / {value:.6g} / {plus:.6g}"
    assert grad_plus > 0 > grad_minus, f"{name}: update at eps = +-{EPS} is {grad_plus:.3g}, {grad_minus:.3g}"
    bound = 1e-9 if floor == 0.0 else 0.1 * (grad_plus - grad_minus) / 2
    assert abs(grad0) < bound, f"{name}: d loss / d eps = {grad0:.3g} at the exact map (bound {bound:.3g})"


# ---- dropout in the backbone (issue 11) ------------------------------------------------------------

class DropoutPerturbation(ExactPlusPerturbation):
    """ExactPlusPerturbation with dropout (p = 0.1, global generator, train mode) on the perturbation's hidden layer."""

    p = 0.1

    def perturbation(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        h = torch.tanh(torch.cat([x, s[:, None], t[:, None]], dim=1) @ self.a + self.c)
        if self.training:
            h = h * (torch.rand(h.shape, dtype=h.dtype) >= self.p) / (1 - self.p)
        return h @ self.b


def derivative_losses() -> list[tuple[str, int, str]]:
    """(loss, oracle, method) for every residual oracle (value 0) of a loss that takes a derivative."""
    registry = get_registry()
    cases = []
    for name, oracles in ORACLES.items():
        fields = {f.name for f in registry.get("loss", name).config.__attrs_attrs__}
        if "derivative" not in fields:
            continue
        for i, oracle in enumerate(oracles):
            zero_terms = [k for k, f in oracle.terms.items() if f is ZERO]
            if oracle.floor is not ZERO and not zero_terms:
                continue
            cases += [(name, i, method) for method in ("jvp", "finite_difference")]
    return cases


DROPOUT_CASES = derivative_losses()


@pytest.mark.parametrize(("name", "index", "method"), DROPOUT_CASES, ids=[f"{n}-{i}-{m}" for n, i, m in DROPOUT_CASES])
def test_residuals_vanish_at_the_exact_map_with_dropout(name: str, index: int, method: str) -> None:
    """Dropout 0.1 in the backbone (train mode): every residual vanishes at the exact map, and along the
    perturbation the loss stays of the dropout-free size and points back (a derivative whose passes saw
    different masks would be off by O(1 / h) for finite differences)."""
    ip = make_interpolant("trig", 0.5)
    exact = GaussianFlowMap(ip, MEAN, STD)
    batch = Batch(exact.sample(N // 4, torch.Generator().manual_seed(3), dtype=torch.float64))
    oracle = ORACLES[name][index]
    config = {**oracle.config, "derivative": method}
    values = {}
    for label, backbone in (("dropout", DropoutPerturbation(exact)), ("plain", ExactPlusPerturbation(exact))):
        model = FlowMap(backbone).train()
        loss = make_loss(name, config, ip)
        setting = (ip, exact, model, batch)
        value, _, metrics = evaluate(loss, oracle, setting, 0.0)
        if oracle.floor is ZERO:
            assert abs(value) < 1e-12, f"{name} ({label}): {value:.3g} at the exact map"
        for term, closed_form in oracle.terms.items():
            if closed_form is ZERO:
                assert abs(metrics[term]) < 1e-12, f"{name} ({label}): {term} = {metrics[term]:.3g}"
        plus, grad_plus, _ = evaluate(loss, oracle, setting, EPS)
        minus, grad_minus, _ = evaluate(loss, oracle, setting, -EPS)
        assert grad_plus > 0 > grad_minus, f"{name} ({label}): update {grad_plus:.3g}, {grad_minus:.3g}"
        values[label] = (plus, minus)
    for got, plain in zip(values["dropout"], values["plain"]):
        assert plain / 3 < got < 3 * plain, f"{name}: loss {got:.4g} with dropout, {plain:.4g} without"
