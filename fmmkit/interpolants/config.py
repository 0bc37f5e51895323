"""The config shared by the built-in interpolants, and their common base."""

from __future__ import annotations

import attrs

from fmmkit.core import Interpolant
from fmmkit.core.validators import non_negative


@attrs.define(frozen=True)
class InterpolantConfig:
    """noise: the a of gamma(t) = a sqrt(t (1 - t)); 0 gives a deterministic interpolant."""

    noise: float = attrs.field(default=0.0, validator=non_negative)


class NoisyInterpolant(Interpolant):
    """An interpolant configured by :class:`InterpolantConfig`: gamma(t) = noise sqrt(t (1 - t))."""

    Config = InterpolantConfig

    def __init__(self, config: InterpolantConfig = InterpolantConfig()) -> None:
        self.config = config
        self.noise_scale = config.noise
