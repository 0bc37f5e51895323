"""The base of every error a user can fix: the CLI prints its one-line message, never a traceback.

Exit status: 2 for a mistake in what the user asked (a spec, a flag, a path), 1 for a problem of the
machine the user must fix around the command (a full disk, a permission, a run another process holds).
"""

from __future__ import annotations

import errno
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


def os_error_fix(exc: OSError) -> str:
    """What to do about a failed file operation: the fix for a full disk or a refused permission."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the permissions (or choose another place)"
    return "fix that and try again"


def describe_os_error(exc: OSError, place: str | None = None) -> str:
    """'PATH: Permission denied; check the permissions (or choose another place)'; ``place`` (the folder
    the command writes) stands in when the error names no file (a full disk while writing a stream)."""
    where = exc.filename if exc.filename is not None else (f"writing {place}" if place else "fmmkit")
    return f"{where}: {exc.strerror or exc}; {os_error_fix(exc)}"
