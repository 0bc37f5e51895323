"""Assertion helpers for plugin authors: one call each for a flow map, an interpolant and a loss.

- :func:`assert_flow_map_laws`: identity, semigroup, invertibility, tangent, Lagrangian and Eulerian laws
  of a two-time map at given points and times, each to |residual| <= atol + rtol |reference|.
- :func:`assert_interpolant_valid`: boundary conditions, derivatives against central differences,
  gamma gamma' consistency, I_0 = x0 and I_1 = x1, dI/dt against a difference quotient, dtypes.
- :func:`assert_loss_minimised_by_exact_map`: a Loss evaluated at the exact Gaussian map is below its
  value at perturbed maps (common random numbers), and equals a stated floor when one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fmmkit.core import Backbone, Batch, FlowMap, FlowMapLike, Interpolant, Loss, VelocityField
from fmmkit.core.derivatives import DerivativeMethod
from fmmkit.exact import GaussianFlowMap
from fmmkit.verification import laws as L

__all__ = ["assert_flow_map_laws", "assert_interpolant_valid", "assert_loss_minimised_by_exact_map"]


def _times(value: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]).clone() if t.ndim == 0 else t


def _where(i: int, **times: Tensor) -> str:
    return ", ".join(f"{k} = {float(v[i]):.6g}" for k, v in times.items())


def _check(name: str, residual: Tensor, reference: Tensor, atol: float, rtol: float, failures: list[str],
           **times: Tensor) -> None:
    """Record a failure unless |residual| <= atol + rtol |reference| everywhere (NaN fails)."""
    excess = residual.abs() - (atol + rtol * reference.abs())
    per_point = excess.flatten(1).amax(dim=1)
    bad = ~(per_point <= 0)
    if bool(bad.any()):
        i = int(torch.where(bad, per_point.nan_to_num(float("inf")), -torch.inf).argmax())
        worst = float(residual[i].abs().max())
        failures.append(f"{name}: |residual| = {worst:.3e} > {atol:g} + {rtol:g} |reference| at {_where(i, **times)} "
                        f"({int(bad.sum())} of {len(bad)} points)")


def assert_flow_map_laws(flow_map: FlowMapLike, x: Tensor, s: Tensor | float, u: Tensor | float, t: Tensor | float, *,
                         velocity: VelocityField | None = None, y: Tensor | None = None,
                         laws: Sequence[str] = L.LAW_NAMES, atol: float = 1e-8, rtol: float = 1e-8,
                         derivative: DerivativeMethod = "jvp") -> None:
    """Assert every law in ``laws`` for ``flow_map`` at points x (B, ...) and times s, u, t (numbers or (B,)).

    The velocity b defaults to the map's own (``flow_map.velocity``). The derivative laws (tangent,
    lagrangian, eulerian) need an nn.Module map through which ``derivative`` can differentiate.
    Raises AssertionError naming each failing law, its largest residual and the times where it occurs.
    """
    unknown = set(laws) - set(L.LAW_NAMES)
    if unknown:
        raise ValueError(f"unknown laws {sorted(unknown)}; choose from {L.LAW_NAMES}")
    field = velocity if velocity is not None else flow_map
    s_b, u_b, t_b = _times(s, x), _times(u, x), _times(t, x)
    failures: list[str] = []
    if "identity" in laws:
        _check("identity", L.identity_defect(flow_map, x, t_b, y), x, atol, rtol, failures, t=t_b)
    if "semigroup" in laws:
        res = L.semigroup_defect(flow_map, x, s_b, u_b, t_b, y)
        _check("semigroup", res, flow_map(x, s_b, t_b, y), atol, rtol, failures, s=s_b, u=u_b, t=t_b)
    if "invertibility" in laws:
        _check("invertibility", L.inverse_defect(flow_map, x, s_b, t_b, y), x, atol, rtol, failures, s=s_b, t=t_b)
    if "tangent" in laws:
        res, b = L.tangent_defect(flow_map, field, x, s_b, y, derivative)
        _check("tangent", res, b, atol, rtol, failures, s=s_b)
    if "lagrangian" in laws:
        res, b = L.lagrangian_residual(flow_map, field, x, s_b, t_b, y, derivative)
        _check("lagrangian", res, b, atol, rtol, failures, s=s_b, t=t_b)
    if "eulerian" in laws:
        res, b = L.eulerian_residual(flow_map, field, x, s_b, t_b, y, derivative)
        _check("eulerian", res, b, atol, rtol, failures, s=s_b, t=t_b)
    if failures:
        raise AssertionError(f"{type(flow_map).__name__} breaks the flow-map laws:\n  " + "\n  ".join(failures))


def _difference(f: Any, t: Tensor, h: float) -> Tensor:
    return (f(t + h) - f(t - h)) / (2 * h)


def assert_interpolant_valid(interpolant: Interpolant, *, times: Tensor | None = None, atol: float = 1e-6,
                             fd_step: float = 1e-6, dim: int = 3, seed: int = 0) -> None:
    """Assert that ``interpolant`` is a valid fmmkit interpolant (noise at t = 0, data at t = 1).

    Checks, in float64: alpha(0) = beta(1) = 1, alpha(1) = beta(0) = gamma(0) = gamma(1) = 0; alpha', beta',
    gamma' (inside (0, 1)) against central differences; gamma gamma' against their product; the variance
    alpha^2 + beta^2 + gamma^2 > 0 on [0, 1]; ``interpolate`` gives I_0 = x0, I_1 = x1 and a dI/dt that
    matches the difference quotient of I_t, shaped and typed like the data.
    """
    name = type(interpolant).__name__
    f64 = torch.float64
    failures: list[str] = []
    ends = torch.tensor([0.0, 1.0], dtype=f64)
    for coef, want in (("alpha", (1.0, 0.0)), ("beta", (0.0, 1.0)), ("gamma", (0.0, 0.0))):
        got = getattr(interpolant, coef)(ends)
        for end, g, w in zip((0, 1), got.tolist(), want):
            if not abs(g - w) <= atol:
                failures.append(f"{coef}({end}) = {g:.6g}, must be {w:g}")
    inner = times if times is not None else torch.linspace(0.01, 0.99, 49, dtype=f64)
    inner = inner.to(f64)
    h = fd_step
    for coef in ("alpha", "beta", "gamma"):
        f = getattr(interpolant, coef)
        got = getattr(interpolant, f"d_{coef}")(inner)
        fd = _difference(f, inner, h)
        err = (got - fd).abs() / (1 + fd.abs())
        if not bool((err <= atol).all()):
            i = int(err.nan_to_num(float("inf")).argmax())
            failures.append(f"d_{coef}({float(inner[i]):.4g}) = {float(got[i]):.8g} but the central difference "
                            f"gives {float(fd[i]):.8g}")
    gdg = interpolant.gamma_d_gamma(inner)
    product = interpolant.gamma(inner) * interpolant.d_gamma(inner)
    if not bool(((gdg - product).abs() <= atol * (1 + product.abs())).all()):
        failures.append("gamma_d_gamma(t) differs from gamma(t) * d_gamma(t)")
    grid = torch.linspace(0.0, 1.0, 101, dtype=f64)
    var = interpolant.alpha(grid) ** 2 + interpolant.beta(grid) ** 2 + interpolant.gamma(grid) ** 2
    if not bool((var > 0).all()):
        failures.append(f"alpha^2 + beta^2 + gamma^2 vanishes at t = {float(grid[int(var.argmin())]):.3g}")
    failures += _interpolate_failures(interpolant, inner, h, dim, seed, atol)
    if failures:
        raise AssertionError(f"interpolant {name} is not valid:\n  " + "\n  ".join(failures))


def _interpolate_failures(ip: Interpolant, inner: Tensor, h: float, dim: int, seed: int, atol: float) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    n = inner.shape[0]
    x0, x1, z = (torch.randn(n, dim, generator=g, dtype=torch.float64) for _ in range(3))
    z_arg = z if ip.stochastic else None
    failures = []
    for end, want, label in ((0.0, x0, "x0"), (1.0, x1, "x1")):
        got = ip.interpolate(x0, x1, torch.full((n,), end, dtype=torch.float64), z_arg).x_t
        if not torch.allclose(got, want, atol=atol, rtol=0):
            failures.append(f"interpolate at t = {end:g} does not return {label}")
    sample = ip.interpolate(x0, x1, inner, z_arg)
    if sample.x_t.shape != x1.shape or sample.dx_t.shape != x1.shape or sample.x_t.dtype != torch.float64:
        failures.append(f"interpolate returned shapes {tuple(sample.x_t.shape)}, {tuple(sample.dx_t.shape)} and "
                        f"dtype {sample.x_t.dtype} for float64 data of shape {tuple(x1.shape)}")
        return failures
    fd = _difference(lambda t: ip.interpolate(x0, x1, t, z_arg).x_t, inner, h)
    err = (sample.dx_t - fd).abs() / (1 + fd.abs())
    if not bool((err <= atol).all()):
        failures.append(f"dI/dt from interpolate differs from the difference quotient of I_t by {float(err.max()):.3e}")
    return failures


class PerturbedExact(Backbone):
    """v_{s,t}(x) = v*_{s,t}(x) + eps d(x, s, t): the exact average velocity of ``oracle`` plus a smooth
    random direction d (a fixed random sine feature map), scaled by the parameter ``eps``."""

    def __init__(self, oracle: GaussianFlowMap, dim: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.oracle = oracle
        self.eps = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("a", torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5)
        self.register_buffer("c", torch.randn(3, dim, generator=g, dtype=torch.float64))

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        phase = flat @ self.a.to(x) + s[:, None] * self.c[0].to(x) + t[:, None] * self.c[1].to(x) + self.c[2].to(x)
        return self.oracle.average_velocity(x, s, t) + self.eps.to(x) * torch.sin(phase).reshape(x.shape)


def assert_loss_minimised_by_exact_map(loss: Loss, oracle: GaussianFlowMap | None = None, *, batch_size: int = 4096,
                                       eps: float = 0.3, directions: int = 3, shift_tol: float = 0.1,
                                       check_value: bool = False,
                                       expected: float | None = None, expected_rtol: float = 0.05,
                                       step: int = 10**6, seed: int = 0) -> dict[str, float]:
    """Assert that gradient descent on ``loss`` is pulled back to the exact map of a Gaussian target.

    The model is a :class:`fmmkit.core.FlowMap` whose backbone is the exact average velocity of
    ``oracle`` (a Gaussian under ``loss.interpolant`` by default) plus eps_k d_k for ``directions`` random
    smooth directions d_k (|d_k| <= 1 per coordinate). At eps_k = +eps the loss's gradient in eps_k must be
    positive and at -eps negative, so a descent step moves back towards the exact map; and the zero of
    the gradient along d_k, estimated from g(0) and the slope (g(+eps) - g(-eps)) / (2 eps), must lie
    within ``shift_tol`` of 0 (a loss with a biased minimiser passes the first test but not this one).
    Both hold for plain objectives and for those whose targets carry stop-gradients (self-distillation,
    MeanFlow), whose value need not be smallest at the fixed point. ``check_value`` also asks L(+-eps d_k) > L(exact) (plain objectives only);
    ``expected`` is the known value at the exact map (0 for distillation, the conditional variance for
    flow matching). Every evaluation reuses the same data and torch seed (common random numbers), at
    training step ``step`` (past any warm-up ramp by default). A loss that needs a teacher gets the exact
    velocity. Returns the values and gradients measured.
    """
    if oracle is None:
        oracle = GaussianFlowMap(loss.interpolant, torch.tensor([1.0, -0.5]), torch.tensor([0.6, 1.4]))
    dim = int(oracle.mean.numel())
    x1 = oracle.sample(batch_size, torch.Generator().manual_seed(seed), dtype=torch.float64)
    batch = Batch(x1.reshape(batch_size, *oracle.mean.shape))
    teacher = oracle if loss.requires_teacher else None
    out: dict[str, float] = {}

    def evaluate(backbone: PerturbedExact, model: FlowMap, value: float) -> tuple[float, float]:
        with torch.no_grad():
            backbone.eps.fill_(value)
        backbone.eps.grad = None
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            result = loss(model, batch, teacher=teacher, step=step).loss
            result.backward()
        finally:
            torch.set_rng_state(state)
        grad = backbone.eps.grad
        return float(result.detach()), float(grad) if grad is not None else 0.0

    failures = []
    for k in range(directions):
        backbone = PerturbedExact(oracle, dim, seed + 1 + k)
        model = FlowMap(backbone)
        if k == 0:
            loss.check_model(model, teacher)
        base, out[f"grad{k}@0"] = evaluate(backbone, model, 0.0)
        out["exact"] = base
        for sign, mark in ((1.0, "+"), (-1.0, "-")):
            value, grad = evaluate(backbone, model, sign * eps)
            out[f"value{k}{mark}"], out[f"grad{k}{mark}"] = value, grad
            if not sign * grad > 0:
                failures.append(f"dL/de at e = {mark}{eps:g} along d_{k} is {grad:.4g}: a descent step moves away from the exact map")
            if check_value and not value > base:
                failures.append(f"L(exact {mark} {eps:g} d_{k}) = {value:.6g} is not above L(exact) = {base:.6g}")
        slope = (out[f"grad{k}+"] - out[f"grad{k}-"]) / (2 * eps)
        out[f"shift{k}"] = shift = -out[f"grad{k}@0"] / slope if slope > 0 else float("inf")
        if not abs(shift) <= shift_tol:
            failures.append(f"along d_{k} the gradient vanishes at e = {shift:.4g}, not at the exact map (e = 0; "
                            f"tolerance {shift_tol:g})")
    if expected is not None and not abs(out["exact"] - expected) <= expected_rtol * abs(expected) + 1e-9:
        failures.append(f"L(exact) = {out['exact']:.6g} but the stated minimum is {expected:.6g}")
    if failures:
        raise AssertionError(f"loss {type(loss).__name__} is not minimised by the exact map:\n  " + "\n  ".join(failures))
    return out
