"""A pickle-free file format for training state: nested dicts/lists of tensors, numbers and strings.

The tensors go into a safetensors file; the structure around them (keys, numbers, strings, None,
booleans, and a reference ``{"__tensor__": KEY}`` for each tensor) is JSON stored in the file's
metadata under ``fmmkit.structure``. Loading parses JSON and safetensors only, so a crafted file
can make loading fail but can never run code. Dicts with non-string keys (an optimizer's parameter
indices) are stored as ``{"__items__": [[key, value], ...]}``; tuples come back as lists.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load, save
from torch import Tensor

from fmmkit.training.distributed import local

STRUCTURE_KEY = "fmmkit.structure"
_TAGS = ("__tensor__", "__items__")


class StateFormatError(ValueError):
    """A state file is not in this format (truncated, corrupted, or never one of ours)."""


def _encode(obj: Any, tensors: dict[str, Tensor], key: str) -> Any:
    if isinstance(obj, Tensor):
        while key in tensors or not key:  # a dotted dict key can spell another entry's path
            key = f"{key}#"
        tensors[key] = local(obj).detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(t in obj for t in _TAGS):
            return {k: _encode(v, tensors, f"{key}.{k}" if key else k) for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, tensors, f"{key}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at '{key}' in a checkpoint: only tensors, numbers, "
                    "strings, lists and dicts are stored (no pickles)")


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise StateFormatError(f"tensor '{key}' named in the structure is missing")
            return tensors[key]
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def dumps_state(state: Any) -> bytes:
    """The safetensors bytes of ``state``; DTensors are stored as this process's shard."""
    tensors: dict[str, Tensor] = {}
    structure = _encode(state, tensors, "")
    return save(tensors, metadata={STRUCTURE_KEY: json.dumps(structure)})


def loads_state(data: bytes) -> Any:
    """Parse :func:`dumps_state` output; StateFormatError on anything else."""
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise StateFormatError(f"not a safetensors file ({type(exc).__name__}: {exc})") from None
    metadata = _metadata(data)
    if STRUCTURE_KEY not in metadata:
        raise StateFormatError("safetensors file without an fmmkit structure")
    try:
        structure = json.loads(metadata[STRUCTURE_KEY])
    except json.JSONDecodeError as exc:
        raise StateFormatError(f"damaged structure ({exc})") from None
    return _decode(structure, tensors)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return dict(header.get("__metadata__") or {})


def same_state(a: Any, b: Any) -> bool:
    """Exact equality of two states (tensors bit for bit); used by tests and checks."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
