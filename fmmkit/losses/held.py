"""A frozen copy of the model that a loss keeps as state (PFMM's X', shortcut's EMA teacher)."""

from __future__ import annotations

from typing import Any

from fmmkit.core import FlowMap
from fmmkit.core.flow_map import frozen_copy


def prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """{prefix + key: value}."""
    return {prefix + k: v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class HeldCopy:
    """A frozen copy of the model that a loss keeps as state (PFMM's X', shortcut's EMA teacher).

    ``model`` is None until the copy is made. A checkpoint's copy arrives through
    :meth:`load_state_dict` before the loss has seen the model, so it waits as pending tensors and
    becomes a copy the next time the model is at hand (:meth:`restored`, :meth:`get`); the state
    saved is the copy's, or the pending tensors when it was never made, under ``prefix``.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.model: FlowMap | None = None
        self._pending: dict[str, Any] = {}

    def restored(self, model: FlowMap) -> FlowMap | None:
        """The copy, made from the pending checkpoint tensors if there are any (else as it is, maybe None)."""
        if self._pending:
            self.model = frozen_copy(model)  # type: ignore[assignment]
            self.model.load_state_dict(self._pending)  # type: ignore[union-attr]
            self._pending = {}
        return self.model

    def get(self, model: FlowMap) -> FlowMap:
        """The copy, made from ``model`` on first use (or from a checkpoint's tensors)."""
        copy = self.restored(model)
        if copy is None:
            copy = self.model = frozen_copy(model)  # type: ignore[assignment]
        return copy  # type: ignore[return-value]

    def snapshot(self, model: FlowMap) -> FlowMap:
        """Set the copy to the model's current weights."""
        if self.model is None:
            return self.get(model)
        self.model.load_state_dict(model.state_dict())
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return prefixed(self.prefix, self.model.state_dict() if self.model is not None else self._pending)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = unprefixed(self.prefix, state)
        self.model = None
