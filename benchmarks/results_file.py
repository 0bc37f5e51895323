"""Write one section of benchmarks/RESULTS.md, leaving every other section as it is."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# fmmkit benchmark results\n"


def machine() -> str:
    """A one-line description of the machine the figures came from."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} CPU, {torch.get_num_threads()} threads, {gpu}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md with ``body``."""
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
