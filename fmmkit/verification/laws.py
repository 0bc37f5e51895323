"""The flow-map laws as residuals on a batch (2505.18825, Prop. 2.2; the seed paper's eqs. 2.4-2.6).

For a two-time map X_{s,t} (anything ``FlowMapLike``: a trained FlowMap, a frozen teacher, an exact
oracle) and a velocity field b, each function returns the per-point residual (shaped like x), which
is zero for the exact flow map of b:

  identity       X_{t,t}(x) - x
  semigroup      X_{u,t}(X_{s,u}(x)) - X_{s,t}(x)
  invertibility  X_{t,s}(X_{s,t}(x)) - x
  tangent        d/dt X_{s,t}(x) at t = s, minus b_s(x)
  Lagrangian     d/dt X_{s,t}(x) - b_t(X_{s,t}(x))
  Eulerian       d/ds X_{s,t}(x) + grad_x X_{s,t}(x) b_s(x)

Derivatives come from :mod:`fmmkit.core.derivatives` (one forward-mode JVP, or central differences), so a
check exercises the same machinery as the losses. Residual functions that involve a velocity also
return the velocity they compared against, as the natural scale of the residual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fmmkit.core import FlowMapLike, VelocityField
from fmmkit.core.derivatives import DerivativeMethod, eulerian_derivative, time_derivative

#: Every law these functions measure, in the order reports list them.
LAW_NAMES: tuple[str, ...] = ("identity", "tangent", "semigroup", "invertibility", "lagrangian", "eulerian")


def rms(residual: Tensor) -> float:
    """Root mean square over every entry: sqrt(mean(r^2)) (0 for an empty tensor)."""
    return float(residual.double().pow(2).mean().sqrt()) if residual.numel() else 0.0


def per_point_rms(residual: Tensor) -> Tensor:
    """sqrt of the mean of r^2 over each point's coordinates: (B, ...) -> (B,)."""
    return residual.double().pow(2).flatten(1).mean(dim=1).sqrt()


def identity_defect(fm: FlowMapLike, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """X_{t,t}(x) - x."""
    return fm(x, t, t, y) - x


def semigroup_defect(fm: FlowMapLike, x: Tensor, s: Tensor, u: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """X_{u,t}(X_{s,u}(x)) - X_{s,t}(x)."""
    return fm(fm(x, s, u, y), u, t, y) - fm(x, s, t, y)


def inverse_defect(fm: FlowMapLike, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """X_{t,s}(X_{s,t}(x)) - x."""
    return fm(fm(x, s, t, y), t, s, y) - x


def displacement(fm: FlowMapLike, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """X_{s,t}(x) - x: how far the map moves x (the scale of the map laws)."""
    return fm(x, s, t, y) - x


def tangent_defect(fm: FlowMapLike, field: VelocityField, x: Tensor, t: Tensor, y: Tensor | None = None,
                   method: DerivativeMethod = "jvp") -> tuple[Tensor, Tensor]:
    """(d/dt X_{t,t'}(x) at t' = t minus b_t(x), b_t(x))."""
    _, d_dt = time_derivative(_as_model(fm), x, t, t.clone(), y=y, method=method)
    b = field.velocity(x, t, y)
    return d_dt - b, b


def lagrangian_residual(fm: FlowMapLike, field: VelocityField, x: Tensor, s: Tensor, t: Tensor,
                        y: Tensor | None = None, method: DerivativeMethod = "jvp") -> tuple[Tensor, Tensor]:
    """(d/dt X_{s,t}(x) - b_t(X_{s,t}(x)), b_t(X_{s,t}(x)))."""
    x_st, d_dt = time_derivative(_as_model(fm), x, s, t, y=y, method=method)
    b = field.velocity(x_st.detach(), t, y)
    return d_dt - b, b


def eulerian_residual(fm: FlowMapLike, field: VelocityField, x: Tensor, s: Tensor, t: Tensor,
                      y: Tensor | None = None, method: DerivativeMethod = "jvp") -> tuple[Tensor, Tensor]:
    """(d/ds X_{s,t}(x) + grad_x X_{s,t}(x) b_s(x), b_s(x)): one JVP in (s, x) with tangent (1, b_s(x))."""
    b = field.velocity(x, s, y).detach()
    _, residual = eulerian_derivative(_as_model(fm), x, s, t, b, y=y, method=method)
    return residual, b


def _as_model(fm: FlowMapLike) -> Any:
    """fmmkit.core.derivatives takes a FlowMap; any nn.Module map with forward_ad_mode works the same way."""
    if not isinstance(fm, torch.nn.Module):
        raise TypeError(f"derivative laws need an nn.Module flow map (for forward-mode AD), got {type(fm).__name__}")
    return fm
