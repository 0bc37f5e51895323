"""The flow map X_{s,t}(x) = x + (t - s) v_{s,t}(x) of a backbone v (2505.18825, eq. 2.6).

The parametrisation makes X_{t,t} = id hold exactly, and its tangent at the diagonal is the velocity:
d/dt X_{s,t}(x) at s = t equals v_{t,t}(x) = b_t(x). X_{s,t} maps a point at time s to time t; with
noise at t = 0 and data at t = 1, X_{0,1} is a one-step sampler.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import Tensor, nn

from fmmkit.core.component import Component
from fmmkit.core.shapes import as_batch_times, broadcast_time, time_dtype

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class Backbone(nn.Module, Component):
    """A network v(x, s, t, y) -> tensor shaped like x, conditioned on two times and a label.

    ``supports_forward_ad`` says whether ``torch.func.jvp`` may run through it; losses that take a
    derivative check it when they are built. ``forward_ad_mode`` is entered around a derivative pass
    (a backbone with fused attention switches to a forward-mode-capable kernel there).

    The contract, as the attention backbones (``unet``, ``dit``) keep it: every derivative pass of
    :mod:`fmmkit.core.derivatives` runs inside ``forward_ad_mode()``, where each attention layer uses
    its ``forward_ad_attention`` backend (default ``forward_ad``) instead of ``attention``
    (default ``sdpa``, fused, no forward-mode AD); outside it the fast backend runs. So
    ``supports_forward_ad`` is the derivative backend's capability, and a backbone whose
    derivative backend lacks forward-mode AD makes a JVP loss fail when it is built.
    """

    supports_forward_ad: bool = True
    #: set by :meth:`enable_second_time` (the architecture then has the second-time embedding)
    second_time_enabled: bool = False

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:  # noqa: D102
        raise NotImplementedError

    def enable_second_time(self) -> None:
        """Opt in to starting from a one-time teacher (``[model] init_from``); the protocol:

        1. after this call the backbone computes v_{s,t}(x) from the conditioning it had on the diagonal,
           evaluated at t (what a flow-matching teacher of the same architecture was trained on), plus
           the second time (s, or t - s) through a *new* embedding whose output layer is zero-initialised;
        2. the call only adds parameters (those of the new embedding); every parameter it had keeps its
           name and shape, so the teacher's weights load into it unchanged.

        Loading a teacher's weights then gives v_{s,t}(x) = v_{t,t}(x) = the teacher's b_t(x) exactly, for
        every s. ``unet``, ``dit`` and ``mlp`` implement it; so does ``torch_module`` for modules that follow
        the protocol of :mod:`fmmkit.nets.torch_module`.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot start from a teacher: it does not implement "
                                  "enable_second_time()")

    @contextlib.contextmanager
    def forward_ad_mode(self) -> Iterator[None]:
        """Context in which forward-mode AD through the backbone is valid (default: always)."""
        yield


def frozen_copy(module: ModuleT) -> ModuleT:
    """A deep copy in eval mode with gradients off (a frozen teacher, an EMA, a loss's held copy)."""
    out = copy.deepcopy(module).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def implements_second_time(backbone: nn.Module) -> bool:
    """Whether ``backbone`` implements :meth:`Backbone.enable_second_time`."""
    method = getattr(type(backbone), "enable_second_time", None)
    return method is not None and method is not Backbone.enable_second_time


__all__ = ["PARAMETERIZATIONS", "Backbone", "FlowMap", "TrigFlowMap", "frozen_copy", "implements_second_time",
           "make_flow_map", "time_dtype"]


class FlowMap(nn.Module):
    """X_{s,t}(x) = x + (t - s) v_{s,t}(x), with per-sample times s, t of shape (B,)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def supports_forward_ad(self) -> bool:
        """Whether forward-mode AD may run through the backbone."""
        return bool(getattr(self.backbone, "supports_forward_ad", True))

    def forward_ad_mode(self) -> contextlib.AbstractContextManager[None]:
        """The backbone's forward-mode-AD context (see :class:`Backbone`)."""
        mode = getattr(self.backbone, "forward_ad_mode", None)
        return mode() if mode is not None else contextlib.nullcontext()

    def _times(self, x: Tensor, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        return as_batch_times(s, x), as_batch_times(t, x)

    def average_velocity(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """v_{s,t}(x): the average velocity between times s and t."""
        s, t = self._times(x, s, t)
        v = self.backbone(x, s, t, y)
        assert v.shape == x.shape, f"backbone returned shape {tuple(v.shape)} for input {tuple(x.shape)}"
        return v

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x) = x + (t - s) v_{s,t}(x)."""
        s, t = self._times(x, s, t)
        v = self.average_velocity(x, s, t, y)
        return x + broadcast_time(t - s, x).to(v.dtype) * v

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """b_t(x) = v_{t,t}(x) = d/dt X_{s,t}(x) at s = t."""
        return self.average_velocity(x, t, t, y)


PARAMETERIZATIONS = ("average_velocity", "trigflow")


class TrigFlowMap(FlowMap):
    """The TrigFlow parameterisation of sCM (Lu & Song 2024, 2410.11081) as a two-time flow map:

        X_{s,t}(x) = cos(h) x + sin(h) sigma_d F_{s,t}(x),   h = (pi / 2)(t - s),

    F the backbone's output. With the ``trig`` interpolant and data of standard deviation sigma_d
    (TrigFlow: x_tau = cos(tau) x_data + sin(tau) sigma_d z, our t = 1 - 2 tau / pi), X_{s,1} is sCM's
    consistency function f(x, tau) = cos(tau) x - sin(tau) sigma_d F_TrigFlow with our F = -F_TrigFlow
    (time runs the other way; /work/notes/frontier.md Sec. 4). The average velocity is
    v_{s,t} = [(cos h - 1) x + sin(h) sigma_d F] / (t - s), written with sinc so that it is smooth at
    s = t, where v_{t,t}(x) = (pi / 2) sigma_d F_{t,t}(x) is the velocity.
    """

    def __init__(self, backbone: Backbone, sigma_data: float = 1.0) -> None:
        super().__init__(backbone)
        self.sigma_data = sigma_data

    def average_velocity(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """v_{s,t}(x) = (pi/2) [sin(h) / h sigma_d F - sin(h/2) sinc-factor x], smooth at h = 0."""
        s, t = self._times(x, s, t)
        f = self.backbone(x, s, t, y)
        assert f.shape == x.shape, f"backbone returned shape {tuple(f.shape)} for input {tuple(x.shape)}"
        h = broadcast_time((math.pi / 2) * (t - s), x)
        # (cos h - 1) / (t - s) = -(pi/2) sin(h/2) [sin(h/2) / (h/2)];  sin(h) / (t - s) = (pi/2) [sin(h) / h]
        shrink = (-(math.pi / 2) * torch.sin(h / 2) * torch.sinc(h / (2 * math.pi))).to(f.dtype)
        grow = ((math.pi / 2) * torch.sinc(h / math.pi)).to(f.dtype)
        return shrink * x + grow * self.sigma_data * f


def make_flow_map(backbone: Backbone, parameterization: str = "average_velocity", sigma_data: float = 1.0) -> FlowMap:
    """The flow map around ``backbone``: X = x + (t - s) v (``average_velocity``) or ``trigflow``."""
    if parameterization == "trigflow":
        return TrigFlowMap(backbone, sigma_data)
    assert parameterization == "average_velocity", f"unknown parameterization {parameterization!r}; use {PARAMETERIZATIONS}"
    return FlowMap(backbone)
