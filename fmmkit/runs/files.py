"""Files of a run directory: atomic writes (never a half-written file, with the permissions the
umask gives), standard JSON (never NaN or Infinity) and safetensors I/O (no unpickling)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from fmmkit.spec.errors import SpecError


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file).
    The file gets the permissions an ordinary ``open`` would (0666 minus the umask), so a run can be
    shared with a group; the temporary file alone would be 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
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


def json_safe(obj: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """``obj`` with every NaN or infinite float replaced by None, and {dotted path: "nan" | "inf" |
    "-inf"} of what was replaced (JSON has no NaN or Infinity; strict parsers refuse Python's)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, {path: str(obj)}
    notes: dict[str, str] = {}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out[key], more = json_safe(value, f"{path}.{key}" if path else str(key))
            notes.update(more)
        return out, notes
    if isinstance(obj, (list, tuple)):
        items = []
        for i, value in enumerate(obj):
            item, more = json_safe(value, f"{path}.{i}" if path else str(i))
            items.append(item)
            notes.update(more)
        return items, notes
    return obj, notes


def json_text(obj: Any, indent: int | None = None) -> str:
    """Standard JSON: non-finite floats are written as null, and an object gets a ``"nonfinite"``
    note, {path: "nan" | "inf" | "-inf"}, saying which values they were."""
    clean, notes = json_safe(obj)
    if notes and isinstance(clean, dict):
        clean = {**clean, "nonfinite": notes}
    return json.dumps(clean, indent=indent, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomic write of ``obj`` as indented standard JSON (see :func:`json_text`)."""
    atomic_write_text(path, json_text(obj, indent=2))


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
    live = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(live[k].shape)) for k, v in state.items() if k in live and v.shape != live[k].shape]
    if wrong:
        key, saved, expected = wrong[0]
        raise SpecError([f"{path}: weights do not fit the run's model ({key} has shape {saved} in the file but "
                         f"{expected} in the model of spec.toml); was spec.toml edited after training?"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpecError([f"{path}: weights do not fit the run's model (missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]}); was spec.toml edited after training?"])


def read_json(path: Path) -> Any:
    """JSON from a file."""
    return json.loads(path.read_text())
