"""Make the plugin importable from its source tree when it is not pip-installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("fmmkit_xformers") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
