"""Where fmmkit caches what it computes once (the digits classifier, encoded latents)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$FMMKIT_CACHE_DIR, else $XDG_CACHE_HOME/fmmkit, else ~/.cache/fmmkit."""
    if os.environ.get("FMMKIT_CACHE_DIR"):
        return Path(os.environ["FMMKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fmmkit"
