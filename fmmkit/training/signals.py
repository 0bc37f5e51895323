"""SIGINT / SIGTERM during training: finish the current step, save a checkpoint, then exit.

The first signal only sets a flag that the loop reads after each step (all processes agree on it
through the step's reduction); a second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal after saving a checkpoint; the CLI exits with 128 + the signal's
    number, as a shell reports a process the signal ended (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        """128 + the signal number."""
        return 128 + self.signum


class StopFlag:
    """Context that turns SIGINT/SIGTERM into a flag (only in the main thread; else a no-op)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """SIGINT, SIGTERM or '' ."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts for real
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopFlag:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
