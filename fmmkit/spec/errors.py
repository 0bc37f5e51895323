"""Spec errors: each one line naming the file, the TOML key path, the problem and the fix."""

from __future__ import annotations

from fmmkit.core.errors import UserError


class SpecError(UserError):
    """One or more problems in a spec; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    @classmethod
    def at(cls, origin: str, path: str, problem: str) -> SpecError:
        """A single problem at ``path`` (dotted TOML keys) of the spec ``origin``."""
        where = f"{origin}: {path}" if path else origin
        return cls([f"{where}: {problem}"])


class SpecWarning(UserWarning):
    """A spec that still works but should change (a deprecated key); one line naming the file and key."""
