"""Files of a run directory: atomic writes (never a half-written file) and safetensors I/O (no unpickling)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from fmmkit.spec.errors import SpecError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically."""
    from safetensors.torch import save

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(cpu, metadata=metadata))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a model's state from safetensors (strict), with a one-line error on a bad file."""
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise SpecError([f"{path}: cannot read weights ({type(exc).__name__}: {exc}); the file is damaged or not safetensors"]) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpecError([f"{path}: weights do not fit the run's model (missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]}); was spec.toml edited after training?"])


def read_json(path: Path) -> Any:
    """JSON from a file."""
    return json.loads(path.read_text())
