"""Directional derivatives of a flow map, by forward-mode AD or by central differences.

For X_{s,t}(x) (``model(x, s, t, y)``) and a tangent (ds, dt, dx) this returns X and
  dX = d/de X_{s + e ds, t + e dt}(x + e dx) at e = 0,
which gives every derivative the losses need in one pass:
  d/dt X_{s,t}(x)                         tangent (0, 1, 0)     (Lagrangian)
  d/ds X_{s,t}(x) + grad_x X_{s,t}(x) b   tangent (1, 0, b)     (Eulerian)
  d/ds v_{s,t}(x) + grad_x v_{s,t}(x) u   the same on ``model.average_velocity`` (MeanFlow)

``jvp`` is forward-mode AD (exact, parameters keep their gradients) by :func:`fmmkit.core.jvp.jvp`:
dual numbers, one extra product per linear layer for the tangent (the same values as torch.func.jvp,
fewer passes);
``finite_difference`` uses a central difference with step h = 1e-6 in float64 (truncation error
~ h^2 w^2 / 6 for time frequencies up to w: 1e-7 relative for the default sinusoidal embedding's
w = 1000, where h = 1e-4 gave 1e-3; round-off ~1e-16 / h) (parameters cast to
float64 by functional_call, so gradients still reach them): a check on the JVP, or a fallback for
backbones without forward-mode AD.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from fmmkit.core.flow_map import FlowMap
from fmmkit.core.jvp import jvp

# torch.func.jvp scripts a helper on first use and torch 2.14 warns about its own call; not ours to fix.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

DerivativeMethod = Literal["jvp", "finite_difference"]
DERIVATIVE_METHODS: tuple[str, ...] = ("jvp", "finite_difference")

#: fn(x, s, t) -> output; the model's flow map or average velocity with the label bound.
TimeSpaceFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def directional_derivative(
    model: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    tangent: tuple[Tensor | None, Tensor | None, Tensor | None],
    *,
    y: Tensor | None = None,
    output: Literal["map", "average_velocity"] = "map",
    method: DerivativeMethod = "jvp",
    fd_step: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """(f, df) for f = X_{s,t}(x) or v_{s,t}(x) along tangent (dx, ds, dt); None means zero.

    Shapes: x (B, ...), s and t (B,); dx like x, ds and dt like s.
    """
    dx, ds, dt = tangent
    dx = torch.zeros_like(x) if dx is None else dx
    ds = torch.zeros_like(s) if ds is None else ds
    dt = torch.zeros_like(t) if dt is None else dt
    assert dx.shape == x.shape, f"tangent dx {tuple(dx.shape)} must match x {tuple(x.shape)}"
    assert ds.shape == s.shape and dt.shape == t.shape, "time tangents must have shape (B,)"

    if method == "jvp":
        def fn(x_: Tensor, s_: Tensor, t_: Tensor) -> Tensor:
            return model(x_, s_, t_, y) if output == "map" else model.average_velocity(x_, s_, t_, y)

        with model.forward_ad_mode():
            return jvp(fn, (x, s, t), (dx, ds, dt))
    if method == "finite_difference":
        return _central_difference(model, x, s, t, (dx, ds, dt), y, output, fd_step)
    raise ValueError(f"unknown derivative method {method!r}; use one of {DERIVATIVE_METHODS}")


def _central_difference(
    model: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    tangent: tuple[Tensor, Tensor, Tensor],
    y: Tensor | None,
    output: str,
    h: float,
) -> tuple[Tensor, Tensor]:
    """(f(p), [f(p + h d) - f(p - h d)] / 2h) with the model evaluated in float64."""
    params = {name: p.double() for name, p in model.named_parameters()}
    buffers = {name: b.double() if b.is_floating_point() else b for name, b in model.named_buffers()}
    state = {**params, **buffers}
    dx, ds, dt = (v.double() for v in tangent)
    xd, sd, td = x.double(), s.double(), t.double()

    def f(x_: Tensor, s_: Tensor, t_: Tensor) -> Tensor:
        if output == "map":
            return torch.func.functional_call(model, state, (x_, s_, t_, y))
        return _average_velocity_call(model, state, x_, s_, t_, y)

    plus = f(xd + h * dx, sd + h * ds, td + h * dt)
    minus = f(xd - h * dx, sd - h * ds, td - h * dt)
    value = f(xd, sd, td)
    return value.to(x.dtype), ((plus - minus) / (2 * h)).to(x.dtype)


def _average_velocity_call(
    model: nn.Module, state: dict[str, Tensor], x: Tensor, s: Tensor, t: Tensor, y: Tensor | None
) -> Tensor:
    backbone_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert isinstance(model, FlowMap)
    return torch.func.functional_call(model.backbone, backbone_state, (x, s, t, y))


def time_derivative(
    model: FlowMap, x: Tensor, s: Tensor, t: Tensor, *, y: Tensor | None = None, method: DerivativeMethod = "jvp"
) -> tuple[Tensor, Tensor]:
    """(X_{s,t}(x), d/dt X_{s,t}(x)): the Lagrangian derivative in the second time."""
    return directional_derivative(model, x, s, t, (None, None, torch.ones_like(t)), y=y, method=method)


def eulerian_derivative(
    model: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    b: Tensor,
    *,
    y: Tensor | None = None,
    method: DerivativeMethod = "jvp",
) -> tuple[Tensor, Tensor]:
    """(X_{s,t}(x), d/ds X_{s,t}(x) + grad_x X_{s,t}(x) b): one JVP in (s, x) with tangent (1, b)."""
    return directional_derivative(model, x, s, t, (b, torch.ones_like(s), None), y=y, method=method)


def velocity_derivative(
    model: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    tangent: tuple[Tensor | None, Tensor | None, Tensor | None],
    *,
    y: Tensor | None = None,
    method: DerivativeMethod = "jvp",
) -> tuple[Tensor, Tensor]:
    """(v_{s,t}(x), d/de v_{s + e ds, t + e dt}(x + e dx) at e = 0) for tangent (dx, ds, dt)."""
    return directional_derivative(model, x, s, t, tangent, y=y, output="average_velocity", method=method)


def eulerian_velocity_derivative(
    model: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    b: Tensor,
    *,
    y: Tensor | None = None,
    method: DerivativeMethod = "jvp",
) -> tuple[Tensor, Tensor]:
    """(v_{s,t}(x), d/ds v_{s,t}(x) + grad_x v_{s,t}(x) b): tangent (b, 1, 0), MeanFlow's total derivative.

    With X = x + (t - s) v: d/ds X + grad_x X b = b - v + (t - s) (d/ds v + grad_x v b).
    """
    return velocity_derivative(model, x, s, t, (b, torch.ones_like(s), None), y=y, method=method)


def lagrangian_velocity_derivative(
    model: FlowMap, x: Tensor, s: Tensor, t: Tensor, *, y: Tensor | None = None, method: DerivativeMethod = "jvp"
) -> tuple[Tensor, Tensor]:
    """(v_{s,t}(x), d/dt v_{s,t}(x)): tangent (0, 0, 1); d/dt X_{s,t}(x) = v + (t - s) d/dt v."""
    return velocity_derivative(model, x, s, t, (None, None, torch.ones_like(t)), y=y, method=method)
