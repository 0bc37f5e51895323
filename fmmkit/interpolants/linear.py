"""The linear interpolant I_t = (1 - t) x0 + t x1 + gamma(t) z (rectified flow / Lipman et al.)."""

from __future__ import annotations

import torch
from torch import Tensor

from fmmkit.core import Interpolant
from fmmkit.hookspecs import hookimpl
from fmmkit.interpolants.config import InterpolantConfig


class LinearInterpolant(Interpolant):
    """alpha(t) = 1 - t, beta(t) = t, gamma(t) = a sqrt(t (1 - t))."""

    Config = InterpolantConfig

    def __init__(self, config: InterpolantConfig = InterpolantConfig()) -> None:
        self.config = config
        self.noise_scale = config.noise

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def beta(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_beta(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


@hookimpl
def register_interpolants(register) -> None:  # type: ignore[no-untyped-def]
    register("linear", LinearInterpolant)
