"""Building registered interpolants and losses from plain config dicts, as a spec would (shared by the loss tests)."""

from __future__ import annotations

from typing import Any

from fmmkit.core import BuildContext, Interpolant
from fmmkit.registry import get_registry
from fmmkit.spec.loader import _component


def interpolant(kind: str = "linear", noise: float = 0.0) -> Interpolant:
    """A registered interpolant with its noise scale."""
    registry = get_registry()
    spec = _component({"kind": kind, "noise": noise}, "interpolant", "interpolant", "test", registry)
    return registry.build("interpolant", kind, spec.config, BuildContext())


def make_loss(name: str, ip: Interpolant, num_classes: int | None = None, *, data_shape: tuple[int, ...] = (2,),
              teacher: Any = None, guidance_input: bool = False, **config: Any) -> Any:
    """The registered loss ``name`` with ``config`` (validated like a ``[loss]`` table)."""
    registry = get_registry()
    spec = _component({"kind": name, **config}, "loss", "loss", "test", registry)
    ctx = BuildContext(data_shape=data_shape, num_classes=num_classes, interpolant=ip, teacher=teacher,
                       guidance_input=guidance_input)
    return registry.build("loss", name, spec.config, ctx)
