"""The entry point fmmkit loads (group ``fmmkit``): one hook implementation per component kind."""

from __future__ import annotations

from fmmkit import hookimpl
from fmmkit_example import __version__
from fmmkit_example.components import PseudoHuberFlowMatching, QuadraticInterpolant, Ring

__all__ = ["__version__"]


@hookimpl
def register_interpolants(register) -> None:  # type: ignore[no-untyped-def]
    register("quadratic", QuadraticInterpolant)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("ring", Ring)


@hookimpl
def register_losses(register) -> None:  # type: ignore[no-untyped-def]
    register("pseudo_huber_flow_matching", PseudoHuberFlowMatching)
