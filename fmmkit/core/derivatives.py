"""Directional derivatives of a flow map, by forward-mode AD or by central differences.

For X_{s,t}(x) (``model(x, s, t, y)``) and a tangent given as keywords ``dx=``, ``ds=``, ``dt=`` (any
left out is zero) this returns X and
  dX = d/de X_{s + e ds, t + e dt}(x + e dx) at e = 0,
which gives every derivative the losses need in one pass:
  d/dt X_{s,t}(x)                         dt=1                    (Lagrangian)
  d/ds X_{s,t}(x) + grad_x X_{s,t}(x) b   dx=b, ds=1              (Eulerian)
  d/ds v_{s,t}(x) + grad_x v_{s,t}(x) u   dx=u, ds=1 on ``output="average_velocity"`` (MeanFlow)
The tangents are keyword-only so that their order (``torch.func.jvp`` takes them as (dx, ds, dt), in
the order of the arguments (x, s, t)) cannot be confused: a wrong MeanFlow tangent ruins training.

``jvp`` is forward-mode AD (exact, parameters keep their gradients) by :func:`fmmkit.core.jvp.jvp`:
dual numbers, one extra product per linear layer for the tangent (the same values as torch.func.jvp,
fewer passes);
``finite_difference`` uses a central difference with step h = 1e-6 in float64 (truncation error
~ h^2 w^2 / 6 for time frequencies up to w: 1e-7 relative for the default sinusoidal embedding's
w = 1000, where h = 1e-4 gave 1e-3; round-off ~1e-16 / h) (parameters cast to
float64 by functional_call, so gradients still reach them): a check on the JVP, or a fallback for
backbones without forward-mode AD. Its three passes run from one forked RNG state, so that dropout
(or a backbone's own label dropout) draws the same mask in each: with a fresh mask per pass the
difference quotient is wrong by O(1 / h). The global generator ends where one pass leaves it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Literal, TypedDict, Unpack

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


class ReplayedRNG:
    """Runs several passes from one RNG state: ``with rng.replay(): ...`` restores the state captured
    at construction (CPU and, when initialised, the CUDA device's) before each pass, so every pass
    draws the same dropout mask; afterwards the generators stand where one pass leaves them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_state = torch.get_rng_state()
        on_cuda = device.type == "cuda" and torch.cuda.is_initialized()
        self.cuda_state = torch.cuda.get_rng_state(device) if on_cuda else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        yield


def directional_derivative(
    model: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    *,
    dx: Tensor | None = None,
    ds: Tensor | None = None,
    dt: Tensor | None = None,
    y: Tensor | None = None,
    output: Literal["map", "average_velocity"] = "map",
    method: DerivativeMethod = "jvp",
    fd_step: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """(f, df) for f = X_{s,t}(x) or v_{s,t}(x) along the tangent (dx, ds, dt); a missing one is zero.

    Shapes: x (B, ...), s and t (B,); dx like x, ds and dt like s.

    Args:
        model: the flow map.
        x, s, t: the point and the two times.
        dx, ds, dt: the tangent in x, s and t (keyword-only).
        y: labels or the conditioning matrix, held fixed.
        output: ``"map"`` for X_{s,t}, ``"average_velocity"`` for v_{s,t}.
        method: ``"jvp"`` or ``"finite_difference"``.

    Example:
        >>> import torch
        >>> from fmmkit.core import FlowMap
        >>> from fmmkit.nets.mlp import MLP, MLPConfig
        >>> model = FlowMap(MLP(MLPConfig(width=8, depth=1), (2,)))
        >>> x, s, t = torch.randn(3, 2), torch.zeros(3), torch.ones(3)
        >>> value, d_dt = directional_derivative(model, x, s, t, dt=torch.ones(3))
        >>> value.shape, d_dt.shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
    """
    dx = torch.zeros_like(x) if dx is None else dx
    ds = torch.zeros_like(s) if ds is None else ds
    dt = torch.zeros_like(t) if dt is None else dt
    assert dx.shape == x.shape, f"tangent dx {tuple(dx.shape)} must match x {tuple(x.shape)}"
    assert ds.shape == s.shape and dt.shape == t.shape, "time tangents must have shape (B,)"

    if method == "jvp":
        def fn(x_: Tensor, s_: Tensor, t_: Tensor) -> Tensor:
            return model(x_, s_, t_, y) if output == "map" else model.average_velocity(x_, s_, t_, y)

        with model.forward_ad_mode():
            return jvp(fn, (x, s, t), (dx, ds, dt), module=model)
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
    """(f(p), [f(p + h d) - f(p - h d)] / 2h) with the model evaluated in float64, every pass from one
    RNG state (one dropout mask)."""
    params = {name: p.double() for name, p in model.named_parameters()}
    buffers = {name: b.double() if b.is_floating_point() else b for name, b in model.named_buffers()}
    state = {**params, **buffers}
    dx, ds, dt = (v.double() for v in tangent)
    xd, sd, td = x.double(), s.double(), t.double()
    rng = ReplayedRNG(x.device)

    def f(x_: Tensor, s_: Tensor, t_: Tensor) -> Tensor:
        with rng.replay():
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
    """(X_{s,t}(x), d/dt X_{s,t}(x)): the Lagrangian derivative in the second time (dt = 1)."""
    return directional_derivative(model, x, s, t, dt=torch.ones_like(t), y=y, method=method)


def eulerian_derivative(
    model: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    *,
    dx: Tensor,
    y: Tensor | None = None,
    method: DerivativeMethod = "jvp",
) -> tuple[Tensor, Tensor]:
    """(X_{s,t}(x), d/ds X_{s,t}(x) + grad_x X_{s,t}(x) dx): one JVP with tangent dx, ds = 1."""
    return directional_derivative(model, x, s, t, dx=dx, ds=torch.ones_like(s), y=y, method=method)


class PassOptions(TypedDict, total=False):
    """The labels y and the derivative method of one derivative pass (see :func:`directional_derivative`)."""

    y: Tensor | None
    method: DerivativeMethod


class TangentOptions(PassOptions, total=False):
    """A keyword tangent (dx, ds, dt) with the pass options: what :func:`velocity_derivative` passes on."""

    dx: Tensor | None
    ds: Tensor | None
    dt: Tensor | None


def velocity_derivative(model: FlowMap, x: Tensor, s: Tensor, t: Tensor,
                        **options: Unpack[TangentOptions]) -> tuple[Tensor, Tensor]:
    """(v_{s,t}(x), d/de v_{s + e ds, t + e dt}(x + e dx) at e = 0) for the keyword tangent (dx, ds, dt):
    :func:`directional_derivative` of the average velocity."""
    return directional_derivative(model, x, s, t, output="average_velocity", **options)


def eulerian_velocity_derivative(model: FlowMap, x: Tensor, s: Tensor, t: Tensor, *, dx: Tensor,
                                 **options: Unpack[PassOptions]) -> tuple[Tensor, Tensor]:
    """(v_{s,t}(x), d/ds v_{s,t}(x) + grad_x v_{s,t}(x) dx): tangent dx, ds = 1, dt = 0 — MeanFlow's
    total derivative (dx = dI_s/ds, or the model's own velocity for iMF).

    With X = x + (t - s) v: d/ds X + grad_x X b = b - v + (t - s) (d/ds v + grad_x v b).
    """
    return velocity_derivative(model, x, s, t, dx=dx, ds=torch.ones_like(s), **options)


def lagrangian_velocity_derivative(
    model: FlowMap, x: Tensor, s: Tensor, t: Tensor, *, y: Tensor | None = None, method: DerivativeMethod = "jvp"
) -> tuple[Tensor, Tensor]:
    """(v_{s,t}(x), d/dt v_{s,t}(x)): dt = 1; d/dt X_{s,t}(x) = v + (t - s) d/dt v."""
    return velocity_derivative(model, x, s, t, dt=torch.ones_like(t), y=y, method=method)
