"""The resume policy: which spec keys a resumed run may change, and the check that it is the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmmkit.registry import Registry
from fmmkit.runs.layout import SPEC_FILE
from fmmkit.spec import Spec, SpecError, load_spec
from fmmkit.spec.loader import spec_to_dict
from fmmkit.training.checkpoint import list_checkpoints

#: Keys a resumed run may change; anything else must match the run's spec.toml.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.threads", "train.device", "sample", "eval", "log",
                     "checkpoint", "compile")


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else path


def check_resumable(out: Path, spec: Spec, registry: Registry) -> None:
    """The run in ``out`` has checkpoints and was trained with ``spec`` (up to RESUMABLE_CHANGES)."""
    if not (out / SPEC_FILE).is_file():
        raise SpecError([f"{out}: no run to resume there (no {SPEC_FILE}); start it with 'fmmkit train SPEC --out {out}'"])
    if not list_checkpoints(out):
        raise SpecError([f"{out}: the run stopped before its first checkpoint; start it again with "
                         f"'fmmkit train {out / SPEC_FILE} --out {out} --overwrite'"])
    stored = load_spec(out / SPEC_FILE, registry=registry)
    mine, theirs = spec_to_dict(spec), spec_to_dict(stored)
    for key in RESUMABLE_CHANGES:
        section, _, leaf = key.partition(".")
        for d in (mine, theirs):
            (d.get(section, {}).pop(leaf, None) if leaf else d.pop(section, None))
    diff = _first_difference(mine, theirs)
    if diff is not None:
        raise SpecError([f"{out / SPEC_FILE}: {diff} differs from the spec being resumed; a resumed run keeps its spec "
                         f"(only {', '.join(RESUMABLE_CHANGES)} may change)"])
