"""Protocols for anything that gives a velocity b_t(x) or a flow map X_{s,t}(x).

A trained :class:`~fmmkit.core.flow_map.FlowMap`, a frozen teacher and the exact Gaussian oracle all
satisfy them, so samplers, losses and checks take any of the three.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class VelocityField(Protocol):
    """b_t(x) = E[dI_t/dt | I_t = x]: ``velocity(x, t, y)`` with t of shape (B,)."""

    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor: ...


@runtime_checkable
class FlowMapLike(VelocityField, Protocol):
    """A two-time map X_{s,t}(x) with its velocity b_t = d/dt X_{s,t} at s = t."""

    def __call__(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor: ...
