"""Errors raised by the built-in data sources."""

from __future__ import annotations

from fmmkit.core.errors import UserError


class DataError(UserError, ValueError):
    """A data set cannot be loaded: the message names the file and what to do about it.

    ``key`` is the key of the ``[data]`` table at fault ("path", "root"), so the spec layer can name
    ``SPEC: data.KEY`` in front of the message; ``exit_status`` is 1 when the machine, not the spec,
    is in the way (a file the user may not read).
    """

    def __init__(self, message: str, key: str | None = None, exit_status: int = 2) -> None:
        super().__init__(message)
        self.key = key
        self.exit_status = exit_status
