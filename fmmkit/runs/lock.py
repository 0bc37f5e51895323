"""One writer per run directory: an exclusive OS lock on ``RUN_DIR/.lock``.

``fmmkit train`` (a new run, ``--overwrite`` and ``--resume``) holds ``flock(LOCK_EX)`` on the lock
file for as long as it writes the run. The kernel releases the lock when the process ends, however it
ends, so a ``kill -9`` never leaves a stale lock behind; the file keeps only the holder's pid and
command line, for the message a second writer gets. Readers (``sample``, ``eval``, ``verify``) never
take the lock and never wait. POSIX only (``fcntl``); on a file system without flock support (some
network mounts) the lock is skipped with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fmmkit.core.errors import EnvironmentProblem, warn
from fmmkit.runs.layout import LOCK_FILE


class RunLocked(EnvironmentProblem):
    """Another process is writing the run directory."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that did not say who it is"


def _command() -> str:
    args = sys.argv[1:]
    return " ".join(["fmmkit", *args]) if "fmmkit" in (sys.argv[0] if sys.argv else "") else " ".join(sys.argv)


@contextmanager
def writer_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's writer lock (creating the directory); RunLocked names the holder if it is taken."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir}: the run is being written by another process ({_holder(fd)}); wait for it "
                            "to finish or stop it, then try again") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            warn(f"{run_dir}: this file system cannot lock files ({exc.strerror}); nothing stops a second writer")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {_command()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
