"""Broken plugins for the error paths of ``tests/test_plugin_path.py`` (each a module-like object)."""

from __future__ import annotations

import attrs

from fmmkit import hookimpl
from fmmkit.core.validators import positive
from fmmkit_outside import Blob, ScaledFlowMatching, SmoothstepInterpolant


@attrs.define(frozen=True)
class NegativeScale:
    scale: float = attrs.field(default=-1.0, validator=positive)


class NotAttrs:
    scale = 1.0


class BadDefaults:
    """Registers a loss whose default fails its own validator, and one whose Config is no attrs class."""

    __version__ = "2.0"

    @hookimpl
    def register_losses(self, register):  # type: ignore[no-untyped-def]
        register("bad_default", ScaledFlowMatching, config=NegativeScale)
        register("not_attrs", ScaledFlowMatching, config=NotAttrs)
        register("fine_too", ScaledFlowMatching)


class Twin:
    """Registers two names the outside plugin already has."""

    __version__ = "3.0"

    @hookimpl
    def register_interpolants(self, register):  # type: ignore[no-untyped-def]
        register("smoothstep", SmoothstepInterpolant)

    @hookimpl
    def register_datasets(self, register):  # type: ignore[no-untyped-def]
        register("blob", Blob)


class Exploding:
    @hookimpl
    def register_losses(self, register):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")


TWIN = Twin()
