"""ODE samplers: integrate dx/dt = b_t(x) from t0 = 0 (noise) to t1 = 1 (data) with ``model.velocity``.

``euler``, ``heun``, ``midpoint`` and ``rk4`` are one explicit Runge-Kutta integrator driven by a
Butcher tableau (a, b, c): with stages k_i = b_{t + c_i h}(x + h sum_{j<i} a_ij k_j), one step is
x <- x + h sum_i b_i k_i; NFE = steps * stages. ``dopri5`` is the adaptive Dormand-Prince 5(4) pair
(Hairer, Norsett & Wanner, Solving ODEs I, II.5) with first-same-as-last, error control in the RMS
norm over the whole batch, and an NFE that counts every velocity evaluation, rejected steps included.

Gradients are the caller's business: wrap calls in ``torch.no_grad()`` for sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import SampleResult, Sampler, VelocityField
from fmmkit.core.errors import UserError
from fmmkit.core.flow_map import time_dtype
from fmmkit.core.shapes import broadcast_time
from fmmkit.core.validators import SpecValueError, positive, unit_interval
from fmmkit.hookspecs import hookimpl

#: f(x, t) -> b_t(x), with per-sample times t of shape (B,).
VectorField = Callable[[Tensor, Tensor], Tensor]


class ODEError(UserError, RuntimeError):
    """An adaptive solve could not reach the end time (too many steps, or a step size underflow); one line."""


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method: lower-triangular a, weights b, nodes c (and b_err = b - b_hat)."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    b_err: tuple[float, ...] | None = None  # for embedded pairs: weights of the error estimate

    @property
    def stages(self) -> int:
        return len(self.b)


EULER_TABLEAU = ButcherTableau(a=((),), b=(1.0,), c=(0.0,))
HEUN_TABLEAU = ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0))
MIDPOINT_TABLEAU = ButcherTableau(a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5))
RK4_TABLEAU = ButcherTableau(
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 0.5, 0.5, 1.0),
)
_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5_TABLEAU = ButcherTableau(
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:6],  # the last stage is evaluated at the 5th-order solution (FSAL)
    ),
    b=_DOPRI5_B,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    b_err=tuple(b - bh for b, bh in zip(_DOPRI5_B, _DOPRI5_B_HAT)),
)


def _combine(x: Tensor, h: Tensor, weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """x + h sum_j w_j k_j, skipping zero weights; h is (B,)."""
    acc = None
    for w, k in zip(weights, ks):
        if w != 0.0:
            acc = w * k if acc is None else acc + w * k
    return x if acc is None else x + broadcast_time(h, x).to(x.dtype) * acc


def rk_stages(f: VectorField, x: Tensor, t: Tensor, h: Tensor, tab: ButcherTableau, k1: Tensor | None = None) -> list[Tensor]:
    """The stage velocities k_1..k_s of one step from (t, x) of size h (t, h of shape (B,)).

    A given ``k1`` (first-same-as-last reuse) saves one evaluation.
    """
    ks: list[Tensor] = []
    for i in range(tab.stages):
        if i == 0 and k1 is not None:
            ks.append(k1)
            continue
        ks.append(f(_combine(x, h, tab.a[i], ks), t + tab.c[i] * h))
    return ks


def rk_step(f: VectorField, x: Tensor, t: Tensor, h: Tensor, tab: ButcherTableau) -> Tensor:
    """One explicit Runge-Kutta step x_{n+1} = x_n + h sum_i b_i k_i."""
    return _combine(x, h, tab.b, rk_stages(f, x, t, h, tab))


def integrate_fixed(
    f: VectorField, x: Tensor, t0: Tensor, t1: Tensor, steps: int, tab: ButcherTableau, keep: bool = False
) -> tuple[Tensor, list[Tensor] | None]:
    """Integrate dx/dt = f(x, t) from t0 to t1 (per-sample (B,) tensors) with ``steps`` equal steps."""
    h = (t1 - t0) / steps
    trajectory = [x] if keep else None
    for n in range(steps):
        x = rk_step(f, x, t0 + n * h, h, tab)
        if trajectory is not None:
            trajectory.append(x)
    return x, trajectory


def _velocity_fn(model: VelocityField, y: Tensor | None) -> VectorField:
    return lambda x, t: model.velocity(x, t, y)


def _check_span(config: Any) -> None:
    if config.t0 == config.t1:
        raise SpecValueError("t1", f"must differ from t0, both are {config.t0!r}")


@attrs.define(frozen=True)
class FixedStepConfig:
    """steps: number of equal steps from t0 to t1; keep_trajectory: also return every intermediate x."""

    steps: int = attrs.field(default=100, validator=positive)
    t0: float = attrs.field(default=0.0, validator=unit_interval)
    t1: float = attrs.field(default=1.0, validator=unit_interval)
    keep_trajectory: bool = False

    def __attrs_post_init__(self) -> None:
        _check_span(self)


class FixedStepSampler(Sampler):
    """Explicit Runge-Kutta with ``steps`` equal steps; subclasses choose the ``tableau``."""

    Config = FixedStepConfig
    tableau: ButcherTableau = EULER_TABLEAU
    name: str = "rk"

    def __init__(self, config: FixedStepConfig = FixedStepConfig()) -> None:
        self.config = config

    @property
    def nfe(self) -> int:
        """Velocity evaluations per sample: steps * stages."""
        return self.config.steps * self.tableau.stages

    @property
    def label(self) -> str:
        return f"{self.name}({self.config.steps})"

    def __call__(self, model: VelocityField, x0: Tensor, y: Tensor | None = None) -> SampleResult:  # type: ignore[override]
        dtype = time_dtype(x0)
        t0 = torch.full((x0.shape[0],), self.config.t0, dtype=dtype, device=x0.device)
        t1 = torch.full_like(t0, self.config.t1)
        x, traj = integrate_fixed(
            _velocity_fn(model, y), x0, t0, t1, self.config.steps, self.tableau, self.config.keep_trajectory
        )
        return SampleResult(x=x, nfe=self.nfe, trajectory=traj)


def fixed_step_sampler(class_name: str, name: str, tableau: ButcherTableau, doc: str) -> type[FixedStepSampler]:
    """A FixedStepSampler subclass running ``tableau``, registered as ``name``."""
    return type(class_name, (FixedStepSampler,), {"tableau": tableau, "name": name, "__doc__": doc,
                                                  "__module__": __name__})


Euler = fixed_step_sampler("Euler", "euler", EULER_TABLEAU, "x <- x + h b_t(x): first order, 1 evaluation per step.")
Heun = fixed_step_sampler("Heun", "heun", HEUN_TABLEAU,
                          "Explicit trapezoid (Heun's method): second order, 2 evaluations per step.")
Midpoint = fixed_step_sampler("Midpoint", "midpoint", MIDPOINT_TABLEAU, "Explicit midpoint: x <- x + h b_{t+h/2}(x + "
                              "h/2 b_t(x)); second order, 2 evaluations per step.")
RK4 = fixed_step_sampler("RK4", "rk4", RK4_TABLEAU, "Classical Runge-Kutta: fourth order, 4 evaluations per step.")
FIXED_STEP_SAMPLERS = (Euler, Heun, Midpoint, RK4)


@attrs.define(frozen=True)
class Dopri5Config:
    """rtol, atol: error tolerances; max_steps: attempted-step budget; first_step: initial |h| (None: automatic)."""

    rtol: float = attrs.field(default=1e-5, validator=positive)
    atol: float = attrs.field(default=1e-5, validator=positive)
    max_steps: int = attrs.field(default=10000, validator=positive)
    first_step: float | None = attrs.field(default=None, validator=positive)
    t0: float = attrs.field(default=0.0, validator=unit_interval)
    t1: float = attrs.field(default=1.0, validator=unit_interval)
    keep_trajectory: bool = False

    def __attrs_post_init__(self) -> None:
        _check_span(self)


def _rms(x: Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


class Dopri5(Sampler):
    """Adaptive Dormand-Prince 5(4): 5th-order solution, 4th-order embedded error estimate.

    A step of size h is accepted when err = RMS(h sum_i e_i k_i / (atol + rtol max(|x|, |x_new|))) <= 1
    (RMS over every element of the batch); the next size is h * clip(0.9 err^(-1/5), 0.2, 10).
    """

    Config = Dopri5Config
    SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0

    def __init__(self, config: Dopri5Config = Dopri5Config()) -> None:
        self.config = config

    @property
    def label(self) -> str:
        return f"dopri5({self.config.rtol:g})"

    def _step_factor(self, err: float) -> float:
        """clip(0.9 err^(-1/5), 0.2, 10); the smallest factor for a non-finite error."""
        if not math.isfinite(err):
            return self.MIN_FACTOR
        if err == 0.0:
            return self.MAX_FACTOR
        return min(self.MAX_FACTOR, max(self.MIN_FACTOR, self.SAFETY * err ** (-1 / 5)))

    def _times(self, x: Tensor, t: float) -> Tensor:
        return torch.full((x.shape[0],), t, dtype=time_dtype(x), device=x.device)

    def _initial_step(self, f: VectorField, x: Tensor, t: float, k1: Tensor, direction: float) -> float:
        """Hairer's starting step (Solving ODEs I, II.4): one extra evaluation."""
        cfg = self.config
        scale = cfg.atol + cfg.rtol * x.abs()
        d0, d1 = _rms(x / scale), _rms(k1 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        x1 = x + direction * h0 * k1
        k2 = f(x1, self._times(x, t + direction * h0))
        d2 = _rms((k2 - k1) / scale) / h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
        return min(100 * h0, h1)

    def __call__(self, model: VelocityField, x0: Tensor, y: Tensor | None = None) -> SampleResult:  # type: ignore[override]
        cfg, tab = self.config, DOPRI5_TABLEAU
        f = _velocity_fn(model, y)
        nfe = 0

        def counted(x: Tensor, t: Tensor) -> Tensor:
            nonlocal nfe
            nfe += 1
            return f(x, t)

        t, t_end = cfg.t0, cfg.t1
        direction = math.copysign(1.0, t_end - t)
        span = abs(t_end - t)
        x = x0
        k1 = counted(x, self._times(x, t))
        h = cfg.first_step if cfg.first_step is not None else self._initial_step(counted, x, t, k1, direction)
        h = min(h, span)
        trajectory = [x] if cfg.keep_trajectory else None
        for _ in range(cfg.max_steps):
            remaining = abs(t_end - t)
            if remaining <= 1e-12 * span:
                break
            if h >= remaining or remaining - h <= 1e-12 * span:
                h = remaining  # land exactly on t_end
            hb = self._times(x, direction * h)
            ks = rk_stages(counted, x, self._times(x, t), hb, tab, k1=k1)
            x_new = _combine(x, hb, tab.a[-1], ks[:-1])  # 5th-order solution (FSAL: ks[-1] = b(x_new))
            err_vec = _combine(torch.zeros_like(x), hb, tab.b_err or (), ks)
            scale = cfg.atol + cfg.rtol * torch.maximum(x.abs(), x_new.abs())
            err = _rms(err_vec / scale)
            if math.isfinite(err) and err <= 1.0:
                t = t_end if h == remaining else t + direction * h
                x, k1 = x_new, ks[-1]
                if trajectory is not None:
                    trajectory.append(x)
            h = h * self._step_factor(err)
            if h < 1e-14 * span:
                raise ODEError(f"dopri5: step size underflow at t = {t:.6g}; the velocity may be non-finite or stiff")
        else:
            if abs(t_end - t) > 1e-12 * span:
                raise ODEError(
                    f"dopri5 reached only t = {t:.6g} of {t_end:g} in max_steps = {cfg.max_steps} steps; "
                    "raise max_steps or loosen rtol/atol"
                )
        return SampleResult(x=x, nfe=nfe, trajectory=trajectory)


@hookimpl
def register_samplers(register) -> None:  # type: ignore[no-untyped-def]
    for sampler in FIXED_STEP_SAMPLERS:
        register(sampler.name, sampler)
    register("dopri5", Dopri5)
