"""Measure every flow-map law on a model: the engine of ``fmmkit verify RUN_DIR``.

Points are drawn where the model is used: x = I_s, the interpolant at the first time s, with data
from the run's data set. Each point gets its own random times (s <= u <= t for a run trained on
forward pairs, any order for one trained on both), then:

  identity, tangent, semigroup, invertibility, lagrangian, eulerian   against the model's own b = v_{t,t}
  velocity_teacher, lagrangian_teacher, eulerian_teacher              against the run's teacher b^
  map_exact, velocity_exact                                           against an exact reference map
  semigroup_worst                                                     the worst (s, u, t) hypothesis finds

(the exact reference is the teacher when it is an :class:`fmmkit.exact.ExactFlowMap`, or the data
set's ``exact_flow_map(interpolant)`` when it has one, e.g. ``gaussian``). A law passes when its
relative RMS (see :mod:`fmmkit.verification.report`) is at most its threshold. The growth table
measures the semigroup defect, the Lagrangian residual and the exact-map error in bands of |t - s|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fmmkit.core import Batch, FlowMapLike, Interpolant, VelocityField
from fmmkit.core.errors import UserError
from fmmkit.verification import laws as L
from fmmkit.verification.report import FAIL, PASS, SKIP, GrowthRow, LawResult, Report
from fmmkit.verification.search import worst_triple

#: Default thresholds on each law's relative RMS (rms / scale).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "identity": 1e-4,
    "tangent": 1e-3,
    "semigroup": 0.05,
    "semigroup_worst": 0.25,
    "invertibility": 0.05,
    "lagrangian": 0.1,
    "eulerian": 0.1,
    "velocity_teacher": 0.1,
    "lagrangian_teacher": 0.1,
    "eulerian_teacher": 0.1,
    "map_exact": 0.05,
    "velocity_exact": 0.1,
}

DESCRIPTIONS: dict[str, str] = {
    "identity": "X_{s,s}(x) - x",
    "tangent": "d/dt X_{s,t}(x) at t = s - b_s(x)",
    "semigroup": "X_{u,t}(X_{s,u}(x)) - X_{s,t}(x), random (s, u, t)",
    "semigroup_worst": "the same at the worst (s, u, t) found by hypothesis",
    "invertibility": "X_{t,s}(X_{s,t}(x)) - x",
    "lagrangian": "d/dt X_{s,t}(x) - b_t(X_{s,t}(x))",
    "eulerian": "d/ds X_{s,t}(x) + grad X_{s,t}(x) b_s(x)",
    "velocity_teacher": "b_t(x) - b^_t(x) (teacher)",
    "lagrangian_teacher": "d/dt X_{s,t}(x) - b^_t(X_{s,t}(x)) (teacher)",
    "eulerian_teacher": "d/ds X_{s,t}(x) + grad X_{s,t}(x) b^_s(x) (teacher)",
    "map_exact": "X_{s,t}(x) - X*_{s,t}(x) (exact map)",
    "velocity_exact": "b_t(x) - b*_t(x) (exact map)",
}

ORDERS = ("forward", "both")
GROWTH_EDGES = (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)


class VerifyError(UserError):
    """A verify option the user can fix (an unknown law in --threshold, a bad value)."""


@dataclass
class VerifySettings:
    """How many points, which times, how hard to search, and the thresholds (overriding the defaults).

    order: "forward" (s <= u <= t) or "both" (any order); None takes the run's own (its loss's
    ``times.order``). t_min, t_max: the time interval (None: the run's). derivative: "jvp" or
    "finite_difference" (None: jvp when the model supports forward-mode AD).
    """

    num_points: int = 2048
    search_points: int = 256
    search_examples: int = 200
    growth_points: int = 512
    seed: int = 0
    order: str | None = None
    t_min: float | None = None
    t_max: float | None = None
    derivative: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_points", "search_points", "search_examples", "growth_points"):
            if getattr(self, name) < 2:
                raise VerifyError(f"{name.replace('_', ' ')}: need at least 2, got {getattr(self, name)}")

    def threshold(self, name: str) -> float:
        """The threshold of one law: the user's, else the default."""
        return self.thresholds.get(name, DEFAULT_THRESHOLDS[name])


def parse_thresholds(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """{'semigroup': 0.1} from ['semigroup=0.1']; VerifyError for an unknown law or a bad number."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULT_THRESHOLDS:
            raise VerifyError(f"--threshold {item}: expected LAW=VALUE with LAW one of {', '.join(DEFAULT_THRESHOLDS)}")
        try:
            number = float(value)
        except ValueError:
            raise VerifyError(f"--threshold {item}: '{value}' is not a number") from None
        if not number >= 0:
            raise VerifyError(f"--threshold {item}: thresholds are relative RMS values >= 0")
        out[name] = number
    return out


@dataclass
class MarginalDraw:
    """Fixed draws x0, x1 (and z, labels y) from which I_s is formed at any time s."""

    x0: Tensor
    x1: Tensor
    z: Tensor | None
    y: Tensor | None


class Marginal:
    """Points I_s = alpha_s x0 + beta_s x1 + gamma_s z with x1 from a data source (``sample(n, generator)``)."""

    def __init__(self, data: Any, interpolant: Interpolant, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.data = data
        self.interpolant = interpolant
        self.dtype = dtype
        self.device = torch.device(device)

    def draw(self, n: int, generator: torch.Generator) -> MarginalDraw:
        """n data points and their noises."""
        batch: Batch = self.data.sample(n, generator)
        x1 = batch.x1.to(dtype=self.dtype)
        noise = lambda: torch.randn(x1.shape, generator=generator, dtype=self.dtype)  # noqa: E731
        x0 = noise()
        z = noise() if self.interpolant.stochastic else None
        move = lambda v: None if v is None else v.to(self.device)  # noqa: E731
        return MarginalDraw(move(x0), move(x1), move(z), move(batch.y))

    def at(self, draw: MarginalDraw, s: Tensor | float) -> Tensor:
        """I_s for every draw (s of shape (B,) or a number)."""
        s_b = torch.as_tensor(s, dtype=self.dtype, device=self.device).expand(draw.x1.shape[0])
        return self.interpolant.interpolate(draw.x0, draw.x1, s_b, draw.z).x_t


@dataclass(frozen=True)
class TimeDomain:
    """Times in [lo, hi]; ``forward`` keeps s <= u <= t."""

    lo: float = 0.0
    hi: float = 1.0
    order: str = "forward"

    def triples(self, n: int, generator: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """n random (s, u, t), each (n,)."""
        r = self.lo + (self.hi - self.lo) * torch.rand(3, n, generator=generator, dtype=torch.float64)
        if self.order == "forward":
            r = r.sort(dim=0).values
        return r[0].to(dtype), r[1].to(dtype), r[2].to(dtype)

    def pairs_with_gap(self, n: int, gap_lo: float, gap_hi: float, generator: torch.Generator,
                       dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """n (s, u, t) with |t - s| uniform in [gap_lo, gap_hi) and u uniform between s and t."""
        width = self.hi - self.lo
        gap = gap_lo + (min(gap_hi, width) - gap_lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        s = self.lo + (width - gap) * torch.rand(n, generator=generator, dtype=torch.float64)
        t = s + gap
        if self.order == "both":
            swap = torch.rand(n, generator=generator) < 0.5
            s, t = torch.where(swap, t, s), torch.where(swap, s, t)
        u = s + (t - s) * torch.rand(n, generator=generator, dtype=torch.float64)
        return s.to(dtype), u.to(dtype), t.to(dtype)


def _worst_point(residual: Tensor, **times: Tensor) -> dict[str, float]:
    i = int(L.per_point_rms(residual).argmax())
    return {name: float(v[i]) for name, v in times.items()}


def _row(name: str, residual: Tensor, scale: float, settings: VerifySettings, where: dict[str, float] | None = None,
         note: str = "") -> LawResult:
    value = L.rms(residual)
    law = LawResult(name, DESCRIPTIONS[name], value, scale, settings.threshold(name), PASS, note, where or {})
    law.status = PASS if law.relative <= law.threshold else FAIL  # NaN fails
    return law


def _skip(name: str, note: str, settings: VerifySettings) -> LawResult:
    return LawResult(name, DESCRIPTIONS[name], math.nan, math.nan, settings.threshold(name), SKIP, note)


def _fit_exponent(gaps: list[float], values: list[float]) -> float | None:
    pts = [(math.log(g), math.log(v)) for g, v in zip(gaps, values) if g > 0 and v > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var > 0 else None


def verify_flow_map(model: FlowMapLike, marginal: Marginal, *, teacher: VelocityField | None = None,
                    exact: FlowMapLike | None = None, settings: VerifySettings | None = None,
                    domain: TimeDomain | None = None, source: str = "") -> Report:
    """Measure every law of ``model`` (an nn.Module flow map with ``velocity``) on points of ``marginal``."""
    settings = settings or VerifySettings()
    domain = domain or TimeDomain(order=settings.order or "forward")
    method = settings.derivative or ("jvp" if getattr(model, "supports_forward_ad", True) else "finite_difference")
    dtype = marginal.dtype
    gen = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        laws, growth, exponents = _measure(model, marginal, teacher, exact, settings, domain, method, dtype, gen)
    info = {"num_points": settings.num_points, "seed": settings.seed, "order": domain.order,
            "times": [domain.lo, domain.hi], "derivative": method, "search_examples": settings.search_examples,
            "teacher": type(teacher).__name__ if teacher is not None else None,
            "exact": type(exact).__name__ if exact is not None else None}
    return Report(laws, growth, exponents, info, source)


def _measure(model: Any, marginal: Marginal, teacher: VelocityField | None, exact: FlowMapLike | None,
             settings: VerifySettings, domain: TimeDomain, method: Any, dtype: torch.dtype,
             gen: torch.Generator) -> tuple[list[LawResult], list[GrowthRow], dict[str, float]]:
    draw = marginal.draw(settings.num_points, gen)
    y = draw.y
    s, u, t = (v.to(marginal.device) for v in domain.triples(settings.num_points, gen, dtype))
    x = marginal.at(draw, s)
    disp_scale = L.rms(L.displacement(model, x, s, t, y))
    rows: list[LawResult] = []

    rows.append(_row("identity", L.identity_defect(model, x, s, y), L.rms(x), settings))
    res, b = L.tangent_defect(model, model, x, s, y, method)
    rows.append(_row("tangent", res, L.rms(b), settings))
    res = L.semigroup_defect(model, x, s, u, t, y)
    rows.append(_row("semigroup", res, disp_scale, settings, _worst_point(res, s=s, u=u, t=t)))
    rows.append(_search_row(model, marginal, domain, settings, disp_scale, gen))
    if domain.order == "both":
        res = L.inverse_defect(model, x, s, t, y)
        rows.append(_row("invertibility", res, disp_scale, settings, _worst_point(res, s=s, t=t)))
    else:
        rows.append(_skip("invertibility", "needs maps backwards in time; the run trains s <= t only "
                          "(measure anyway with --order both)", settings))
    for suffix, field_ in (("", model), ("_teacher", teacher)):
        if field_ is None:
            continue
        if suffix:
            b_hat = field_.velocity(x, s, y)
            rows.append(_row("velocity_teacher", model.velocity(x, s, y) - b_hat, L.rms(b_hat), settings))
        res, b = L.lagrangian_residual(model, field_, x, s, t, y, method)
        rows.append(_row("lagrangian" + suffix, res, L.rms(b), settings, _worst_point(res, s=s, t=t)))
        res, b = L.eulerian_residual(model, field_, x, s, t, y, method)
        rows.append(_row("eulerian" + suffix, res, L.rms(b), settings, _worst_point(res, s=s, t=t)))
    if exact is not None:
        ref = exact(x, s, t, y)
        res = model(x, s, t, y) - ref
        rows.append(_row("map_exact", res, L.rms(ref - x), settings, _worst_point(res, s=s, t=t)))
        b_star = exact.velocity(x, s, y)
        rows.append(_row("velocity_exact", model.velocity(x, s, y) - b_star, L.rms(b_star), settings))
    growth, exponents = _growth(model, marginal, exact, settings, domain, method, dtype, gen)
    return rows, growth, exponents


def _search_row(model: Any, marginal: Marginal, domain: TimeDomain, settings: VerifySettings, scale: float,
                gen: torch.Generator) -> LawResult:
    draw = marginal.draw(settings.search_points, gen)
    n = settings.search_points

    def defect(s: float, u: float, t: float) -> float:
        full = lambda v: torch.full((n,), v, dtype=marginal.dtype, device=marginal.device)  # noqa: E731
        x = marginal.at(draw, full(s))
        return L.rms(L.semigroup_defect(model, x, full(s), full(u), full(t), draw.y))

    order = "forward" if domain.order == "forward" else "any"
    worst = worst_triple(defect, order=order, lo=domain.lo, hi=domain.hi, examples=settings.search_examples,
                         random_seed=settings.seed)
    law = LawResult("semigroup_worst", DESCRIPTIONS["semigroup_worst"], worst.value, scale,
                    settings.threshold("semigroup_worst"), PASS, where={"s": worst.s, "u": worst.u, "t": worst.t})
    law.status = PASS if law.relative <= law.threshold else FAIL
    return law


def _growth(model: Any, marginal: Marginal, exact: FlowMapLike | None, settings: VerifySettings, domain: TimeDomain,
            method: Any, dtype: torch.dtype, gen: torch.Generator) -> tuple[list[GrowthRow], dict[str, float]]:
    width = domain.hi - domain.lo
    rows = []
    for lo, hi in zip(GROWTH_EDGES, GROWTH_EDGES[1:]):
        if lo >= width:
            break
        draw = marginal.draw(settings.growth_points, gen)
        s, u, t = (v.to(marginal.device) for v in domain.pairs_with_gap(settings.growth_points, lo, hi, gen, dtype))
        x = marginal.at(draw, s)
        defects = {"semigroup": L.rms(L.semigroup_defect(model, x, s, u, t, draw.y)),
                   "lagrangian": L.rms(L.lagrangian_residual(model, model, x, s, t, draw.y, method)[0])}
        if exact is not None:
            defects["map_exact"] = L.rms(model(x, s, t, draw.y) - exact(x, s, t, draw.y))
        rows.append(GrowthRow(lo, min(hi, width), float((t - s).abs().double().mean()), defects))
    exponents = {}
    for name in ("semigroup", "map_exact"):
        if rows and name in rows[0].defects:
            p = _fit_exponent([r.mean_gap for r in rows], [r.defects[name] for r in rows])
            if p is not None:
                exponents[name] = p
    return rows, exponents


def _run_domain(run: Any, settings: VerifySettings) -> TimeDomain:
    from fmmkit.losses.times import TimeSampling, stochastic_time_bounds

    times = getattr(run.spec.loss.config, "times", None)
    times = times if isinstance(times, TimeSampling) else TimeSampling()
    times = stochastic_time_bounds(times, run.interpolant.stochastic)
    order = settings.order or times.order
    if order not in ORDERS:
        raise VerifyError(f"--order {order}: use one of {', '.join(ORDERS)}")
    lo = times.t_min if settings.t_min is None else settings.t_min
    hi = times.t_max if settings.t_max is None else settings.t_max
    if not 0 <= lo < hi <= 1:
        raise VerifyError(f"times [{lo}, {hi}]: need 0 <= t_min < t_max <= 1")
    return TimeDomain(lo, hi, order)


def run_references(run: Any) -> tuple[VelocityField | None, FlowMapLike | None, list[str]]:
    """(teacher, exact reference map, notes) of a loaded run."""
    from fmmkit.exact import ExactFlowMap
    from fmmkit.runs.teacher import build_teacher

    notes = []
    teacher = None
    try:
        teacher = build_teacher(run.spec, run.interpolant, run.data, run.registry, run.device)
    except UserError as exc:
        notes.append(f"teacher not measured: {exc}")
    exact: Callable[..., Tensor] | None = teacher if isinstance(teacher, ExactFlowMap) else None
    if exact is None and hasattr(run.data, "exact_flow_map"):
        exact = run.data.exact_flow_map(run.interpolant)
    if not getattr(run.registry.get("loss", run.spec.loss.kind).component, "trains_flow_map", True):
        notes.append(f"loss '{run.spec.loss.kind}' trains only the velocity v_tt: its two-time map is untrained")
    return teacher, exact, notes  # type: ignore[return-value]


def verify_run(run: Any, settings: VerifySettings | None = None) -> Report:
    """Measure the laws of a trained run (a :class:`fmmkit.runs.Run` or its directory)."""
    from fmmkit.runs.run import load_run

    settings = settings or VerifySettings()
    if isinstance(run, (str, Path)):
        run = load_run(run)
    model = run.frozen_model()
    dtype = next(iter(model.parameters()), torch.empty(0)).dtype
    teacher, exact, notes = run_references(run)
    marginal = Marginal(run.data, run.interpolant, dtype, run.device)
    report = verify_flow_map(model, marginal, teacher=teacher, exact=exact, settings=settings,
                             domain=_run_domain(run, settings), source=str(run.path))
    report.notes += notes
    return report
