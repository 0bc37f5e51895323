"""Do the files of a run directory tell one story? The checks behind benchmarks/reliability.py.

A run's files disagree when spec.toml, run.json, the final weights, the newest readable checkpoint
and the event log contradict each other: run.json or the weights labelled with another step count
than the spec, final weights that are not the newest checkpoint's, a checkpoint past the spec's end,
an event saying a checkpoint was written that cannot be read, weights that do not fit the spec's
model, or JSON that strict parsers refuse (NaN, Infinity).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

#: Files a snapshot leaves out: the run lock is opened by refused writers too.
NOT_CONTENT = {".lock"}


def snapshot(run: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file of a run (to see whether a refused command changed it)."""
    if not run.is_dir():
        return {}
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name not in NOT_CONTENT}


def same_weights(a: Path, b: Path) -> bool:
    """Every weight file of run ``a`` is bit-identical to the one of run ``b``."""
    names = sorted(p.name for p in a.glob("*.safetensors"))
    if not names or names != sorted(p.name for p in b.glob("*.safetensors")):
        return False
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _json_problems(run: Path) -> list[str]:
    problems = []
    for name in ("run.json", "eval.json", "verify.json"):
        if (run / name).is_file():
            try:
                _strict((run / name).read_text())
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    for name in ("metrics.jsonl", "events.jsonl"):
        if (run / name).is_file():
            lines = (run / name).read_text().splitlines()
            for i, line in enumerate(lines):
                try:
                    _strict(line)
                except ValueError as exc:
                    if i < len(lines) - 1:  # the last line may be cut by a kill -9
                        problems.append(f"{name} line {i + 1}: {exc}")
    return problems


def _weights_step(path: Path) -> int | None:
    with safe_open(str(path), framework="pt") as f:
        steps = (f.metadata() or {}).get("steps")
    return int(steps) if steps is not None else None


def _readable_checkpoints(run: Path) -> list[tuple[int, Path, Any]]:
    from fmmkit.training.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
    from fmmkit.training.distributed import DistEnv

    found = []
    for step, path in list_checkpoints(run):
        try:
            found.append((step, path, read_checkpoint(path, DistEnv(), all_ranks=("rng",))))
        except CheckpointError:
            continue
    return found


def run_problems(run: Path) -> list[str]:
    """Everything that disagrees in one run directory (empty: the files tell one story)."""
    from fmmkit.runs import load_run
    from fmmkit.spec.loader import read_toml, structure_spec

    files = [p for p in run.iterdir() if p.name not in NOT_CONTENT]
    if not (run / "spec.toml").is_file():
        return [f"files but no spec.toml: {sorted(p.name for p in files)}"] if files else []
    try:
        spec = structure_spec(read_toml(run / "spec.toml"), str(run / "spec.toml"), check_paths=False)
    except Exception as exc:  # noqa: BLE001
        return [f"spec.toml does not load: {exc}"]
    steps = spec.train.steps
    problems = _json_problems(run)
    readable = _readable_checkpoints(run)
    newest = readable[-1][0] if readable else None
    if newest is not None and newest > steps:
        problems.append(f"a checkpoint at step {newest} but spec.toml says train.steps = {steps}")
    events = []
    if (run / "events.jsonl").is_file():
        for line in (run / "events.jsonl").read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    written = [e["step"] for e in events if e.get("event") == "checkpoint"]
    if written and (newest is None or newest < max(written)):
        problems.append(f"events.jsonl says step {max(written)} was checkpointed, but the newest readable "
                        f"checkpoint is {newest}")
    meta = None
    if (run / "run.json").is_file():
        try:
            meta = _strict((run / "run.json").read_text())
        except ValueError:
            meta = None
    weights = run / "model.safetensors"
    if weights.is_file():
        labelled = _weights_step(weights)
        if meta is not None and meta.get("steps") != labelled:
            problems.append(f"run.json says {meta.get('steps')} steps, model.safetensors holds step {labelled}")
        finished = meta is not None and meta.get("steps") == steps
        if finished:
            if newest != steps:
                problems.append(f"run.json says the run finished {steps} steps but the newest readable checkpoint "
                                f"is {newest}")
            else:
                saved = readable[-1][2].parts["model"]
                final = load_file(str(weights))
                if final.keys() != saved.keys() or not all(torch.equal(final[k], saved[k]) for k in final):
                    problems.append(f"model.safetensors is not the weights of the step-{steps} checkpoint")
        try:
            load_run(run)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the weights do not load with spec.toml: {str(exc).splitlines()[0]}")
    elif meta is not None:
        problems.append("run.json without model.safetensors")
    return problems
