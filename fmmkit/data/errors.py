"""Errors raised by the built-in data sources."""

from __future__ import annotations

from fmmkit.core.errors import UserError


class DataError(UserError, ValueError):
    """A data set cannot be loaded: the message names the file and what to do about it."""
