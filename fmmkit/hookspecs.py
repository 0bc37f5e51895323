"""fmmkit's plugin hooks: one per component kind, in the registrar style.

A plugin implements any of these with ``@fmmkit.hookimpl`` and calls ``register(name, component)``
for each component it provides; ``component`` is a class with a ``Config`` attrs class and a
``build(config, ctx)`` classmethod (see :class:`fmmkit.core.Component`). Built-in components are
registered through the same hooks by fmmkit's default plugins; third-party plugins are found through
the ``fmmkit`` entry-point group.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("fmmkit")
hookimpl = pluggy.HookimplMarker("fmmkit")


class Register(Protocol):
    """The callback handed to every ``register_*`` hook."""

    def __call__(self, name: str, component: Any, *, config: type | None = None) -> None: ...


RegisterFn = Callable[..., None]


@hookspec
def register_interpolants(register: Register) -> None:
    """Register :class:`fmmkit.core.Interpolant` subclasses."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register :class:`fmmkit.core.Backbone` subclasses (networks v(x, s, t, y))."""


@hookspec
def register_losses(register: Register) -> None:
    """Register :class:`fmmkit.core.Loss` subclasses."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register :class:`fmmkit.core.Sampler` subclasses."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register :class:`fmmkit.core.DataSource` subclasses."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register :class:`fmmkit.core.Metric` subclasses."""


@hookspec
def register_teachers(register: Register) -> None:
    """Register velocity fields usable as a distillation teacher (``[teacher] kind = ...``).

    A teacher component's ``build(config, ctx)`` returns a :class:`fmmkit.core.VelocityField`.
    """


@hookspec
def register_attention_backends(register: Register) -> None:
    """Register :class:`fmmkit.core.attention.AttentionBackend` subclasses (attention kernels that
    backbones select by name, e.g. ``attention = "sdpa"`` in the model table)."""
