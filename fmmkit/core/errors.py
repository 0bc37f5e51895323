"""The base of every error a user can fix: the CLI prints its one-line message, never a traceback.

Exit status: 2 for a mistake in what the user asked (a spec, a flag, a path), 1 for a problem of the
machine the user must fix around the command (a full disk, a permission, a run another process holds).
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A mistake the user can fix; ``str()`` is one line per problem, naming the place and the fix."""

    #: The command line's exit status for this error.
    exit_status: int = 2


class EnvironmentProblem(UserError):
    """The machine, not the request, is in the way: a permission, a full disk, a busy run directory."""

    exit_status = 1


def warn(message: str) -> None:
    """A one-line warning on stderr (``fmmkit: warning: ...``)."""
    print(f"fmmkit: warning: {message}", file=sys.stderr, flush=True)
