"""The config shared by the built-in interpolants."""

from __future__ import annotations

import attrs

from fmmkit.core.validators import non_negative


@attrs.define(frozen=True)
class InterpolantConfig:
    """noise: the a of gamma(t) = a sqrt(t (1 - t)); 0 gives a deterministic interpolant."""

    noise: float = attrs.field(default=0.0, validator=non_negative)
