"""The flow map X_{s,t}(x) = x + (t - s) v_{s,t}(x) of a backbone v (2505.18825, eq. 2.6).

The parametrisation makes X_{t,t} = id hold exactly, and its tangent at the diagonal is the velocity:
d/dt X_{s,t}(x) at s = t equals v_{t,t}(x) = b_t(x). X_{s,t} maps a point at time s to time t; with
noise at t = 0 and data at t = 1, X_{0,1} is a one-step sampler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from fmmkit.core.component import Component
from fmmkit.core.shapes import as_batch_times, broadcast_time


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

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:  # noqa: D102
        raise NotImplementedError

    @contextlib.contextmanager
    def forward_ad_mode(self) -> Iterator[None]:
        """Context in which forward-mode AD through the backbone is valid (default: always)."""
        yield


def time_dtype(x: Tensor) -> torch.dtype:
    """Times are float64 for float64 data and float32 otherwise (never half precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
        dtype = time_dtype(x)
        s = as_batch_times(s, x).to(dtype)
        t = as_batch_times(t, x).to(dtype)
        return s, t

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
