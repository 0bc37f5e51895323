"""Running the fmmkit command line as a user does: in process (fast), or as a subprocess (signals,
pipes, kill -9, permissions), and reading what it printed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmmkit.cli import main


@dataclass
class Result:
    """Exit status and output of one command."""

    returncode: int
    stdout: str
    stderr: str

    def error_line(self, status: int = 2) -> str:
        """The one ``fmmkit: error:`` line of a refused command (asserting there is exactly one, no traceback)."""
        assert self.returncode == status, f"exit {self.returncode}, expected {status}\n{self.stdout}\n{self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        errors = [line for line in self.stderr.splitlines() if line.startswith("fmmkit: error:")]
        assert len(errors) == 1, self.stderr
        return errors[0]


def run_cli(*args: str, cwd: Path | None = None) -> Result:
    """``fmmkit ARGS`` in-process, as the console script runs it, with its exit status and output."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd or old)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(old)
    return Result(code, out.getvalue(), err.getvalue())


def cli_command(*args: str) -> list[str]:
    """The argv of ``fmmkit ARGS`` as a separate Python process."""
    return [sys.executable, "-m", "fmmkit.cli", *args]


def unprivileged_prefix() -> list[str]:
    """A command prefix under which file permission bits apply: nothing for an ordinary user; for root,
    ``setpriv`` dropping the capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "running as root without setpriv: permission bits cannot be tested"
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]


def run_process(*args: str, cwd: Path, unprivileged: bool = False, env: dict[str, str] | None = None,
                timeout: float = 180) -> Result:
    """``fmmkit ARGS`` as a subprocess (optionally without the privilege to ignore permissions)."""
    prefix = unprivileged_prefix() if unprivileged else []
    proc = subprocess.run([*prefix, *cli_command(*args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def strict_json(text: str) -> Any:
    """Parse JSON the way strict parsers do: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)
