"""Run directories: every file name (:mod:`.layout`), atomic writes and safetensors I/O
(:mod:`.files`), loading a trained run (:mod:`.run`) and the one teacher builder (:mod:`.teacher`).

``from fmmkit.runs import Run, load_run, open_run, build_teacher``; the submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fmmkit.moved import moved_getattr

if TYPE_CHECKING:
    from fmmkit.runs.run import Run, load_run, open_run
    from fmmkit.runs.teacher import build_teacher

__all__ = ["Run", "build_teacher", "load_run", "open_run"]

_HOMES = {"Run": "fmmkit.runs.run", "load_run": "fmmkit.runs.run", "open_run": "fmmkit.runs.run",
          "build_teacher": "fmmkit.runs.teacher"}
_moved = moved_getattr(__name__)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    return _moved(name)
