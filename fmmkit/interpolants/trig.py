"""The trigonometric interpolant I_t = cos(pi t / 2) x0 + sin(pi t / 2) x1 + gamma(t) z."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fmmkit.core import Interpolant
from fmmkit.hookspecs import hookimpl
from fmmkit.interpolants.config import InterpolantConfig


class TrigInterpolant(Interpolant):
    """alpha(t) = cos(pi t / 2), beta(t) = sin(pi t / 2): variance preserving when gamma = 0."""

    Config = InterpolantConfig

    def __init__(self, config: InterpolantConfig = InterpolantConfig()) -> None:
        self.config = config
        self.noise_scale = config.noise

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(math.pi / 2 * t)

    def beta(self, t: Tensor) -> Tensor:
        return torch.sin(math.pi / 2 * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def d_beta(self, t: Tensor) -> Tensor:
        return math.pi / 2 * torch.cos(math.pi / 2 * t)


@hookimpl
def register_interpolants(register) -> None:  # type: ignore[no-untyped-def]
    register("trig", TrigInterpolant)
