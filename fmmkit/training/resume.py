"""The resume policy: which spec keys a resumed run may change, and the check that it is the same run.

Every checkpoint records the resolved spec it was trained with (``spec`` in its manifest). A resume
compares the spec it would train with (spec.toml with the ``--set`` overrides) against that record,
so a hand-edited spec.toml is refused just like a ``--set`` of the same key; only the keys of
``RESUMABLE_CHANGES`` may differ, and each one that does is returned (the loop logs it as a
``changed`` event). ``train.steps`` may not go below the checkpoint's step: the weights would be
labelled as a shorter run than they are. Checkpoints written before manifests held the spec are
compared with spec.toml, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmmkit.registry import Registry
from fmmkit.runs.layout import SPEC_FILE
from fmmkit.spec import Spec, SpecError, load_spec
from fmmkit.spec.loader import override_for, spec_to_dict
from fmmkit.training.checkpoint import checkpoint_problem, list_checkpoints, read_manifest

#: Keys a resumed run may change (a section name: any key in it); anything else must match the
#: spec the checkpoint was trained with. The optimiser's lr and grad_clip and the non-finite policy
#: are here so that a run stopped by a non-finite loss can be continued with safer settings.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.threads", "train.device", "train.on_nonfinite",
                     "train.skip_limit", "optim.lr", "optim.grad_clip", "sample", "eval", "log", "checkpoint",
                     "compile")


@dataclass
class ResumePoint:
    """What a resume continues from: the newest checkpoint's step and the resumable keys that change."""

    step: int
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, before, now)


def comparable(spec: Spec) -> dict[str, Any]:
    """The spec as plain JSON values (what a checkpoint manifest records)."""
    return json.loads(json.dumps(spec_to_dict(spec)))


def _split(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fixed part, the resumable part) of a spec dict."""
    fixed = json.loads(json.dumps(d))
    resumable: dict[str, Any] = {}
    for key in RESUMABLE_CHANGES:
        section, _, leaf = key.partition(".")
        table = fixed.get(section)
        if leaf and isinstance(table, dict) and leaf in table:
            resumable[key] = table.pop(leaf)
        elif not leaf and section in fixed:
            resumable[key] = fixed.pop(section)
    return fixed, resumable


def _differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)]
    return [] if a == b else [(path, a, b)]


def _newest_readable(out: Path) -> tuple[int, dict[str, Any]] | None:
    """(step, manifest) of the newest checkpoint whose files match their manifest (the one a resume
    continues from, unless it does not fit the run)."""
    for step, path in reversed(list_checkpoints(out)):
        if checkpoint_problem(path) is None:
            return step, read_manifest(path)
    return None


def check_resumable(out: Path, spec: Spec, registry: Registry, overrides: list[str] | tuple[str, ...] = ()) -> ResumePoint:
    """The run in ``out`` has checkpoints and ``spec`` is the spec they were trained with (up to
    RESUMABLE_CHANGES); SpecError naming the key (and the --set or the file that changed it) if not."""
    if not (out / SPEC_FILE).is_file():
        raise SpecError([f"{out}: no run to resume there (no {SPEC_FILE}); start it with 'fmmkit train SPEC --out {out}'"])
    if not list_checkpoints(out):
        raise SpecError([f"{out}: the run stopped before its first checkpoint; start it again with "
                         f"'fmmkit train {out / SPEC_FILE} --out {out} --overwrite'"])
    newest = _newest_readable(out)
    recorded = newest[1].get("spec") if newest is not None else None
    if isinstance(recorded, dict):
        trained_with, what = recorded, f"the spec the checkpoint of step {newest[0]} was trained with"
    else:  # a checkpoint from before manifests recorded the spec
        trained_with, what = comparable(load_spec(out / SPEC_FILE, registry=registry)), "the run's spec"
    (fixed_now, resumable_now), (fixed_then, resumable_then) = _split(comparable(spec)), _split(trained_with)
    changed = _differences(fixed_then, fixed_now)
    if changed:
        key = changed[0][0]
        override = override_for(key, overrides)
        where = f"--set {override}" if override else spec.source
        raise SpecError([f"{where}: {key} differs from {what}; a resumed run keeps its spec (only "
                         f"{', '.join(RESUMABLE_CHANGES)} may change)"])
    step = newest[0] if newest is not None else 0
    if spec.train.steps < step:
        override = override_for("train.steps", overrides)
        where = f"--set {override}" if override else f"{spec.source}: train.steps = {spec.train.steps}"
        raise SpecError([f"{where}: the run's newest checkpoint is at step {step}; give train.steps >= {step} "
                         "(a run cannot be shortened by resuming it)"])
    return ResumePoint(step, _differences(resumable_then, resumable_now))
