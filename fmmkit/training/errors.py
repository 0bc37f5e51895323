"""Errors of a training run."""

from __future__ import annotations

from fmmkit.core.errors import UserError


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss, say); the message names the step and the term."""
