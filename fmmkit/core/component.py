"""What every registered component shares: an attrs ``Config`` and a ``build`` from it.

A component class declares ``Config`` (an attrs class whose fields are the keys of its TOML table,
minus ``kind``) and is built with ``Cls.build(config, ctx)``. The default ``build`` calls
``Cls(config)``; components that need the data shape, the interpolant or the teacher override it
and read them from the :class:`BuildContext`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    from fmmkit.core.interpolant import Interpolant
    from fmmkit.core.velocity import VelocityField


@attrs.define(frozen=True)
class EmptyConfig:
    """The config of a component that takes no parameters."""


@attrs.define
class BuildContext:
    """What the spec layer knows when it builds a component.

    data_shape: shape of one data point (``(2,)`` for 2D points, ``(C, H, W)`` for images).
    num_classes: number of class labels of the data, or None for unconditional data.
    interpolant: the run's interpolant (built first).
    teacher: the frozen teacher velocity for distillation losses, or None.
    guidance_input: backbones take the guidance scale and interval as an input (the conditioning
    matrix of :mod:`fmmkit.core.conditioning`): set when the loss trains with variable guidance.
    """

    data_shape: tuple[int, ...] = ()
    num_classes: int | None = None
    interpolant: Interpolant | None = None
    teacher: VelocityField | None = None
    guidance_input: bool = False
    extras: dict[str, Any] = attrs.field(factory=dict)


class Component:
    """Mixin giving a registered class its ``Config`` and ``build``."""

    Config: ClassVar[type] = EmptyConfig

    @classmethod
    def build(cls, config: Any, ctx: BuildContext) -> Any:
        """Build the component from its validated config; override to use ``ctx``."""
        return cls(config)  # type: ignore[call-arg]
