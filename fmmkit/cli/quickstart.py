"""The main job: a checkerboard teacher, a flow map distilled from it, their scores and a picture."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fmmkit.evaluation import evaluate, format_table
from fmmkit.spec.loader import read_toml
from fmmkit.training.loop import train

TEACHER_SPEC = "checkerboard_teacher.toml"
FLOW_MAP_SPEC = "checkerboard_lmd.toml"


def builtin_spec(name: str) -> dict:  # type: ignore[type-arg]
    """A spec shipped inside the package (the same files as examples/)."""
    with resources.as_file(resources.files("fmmkit") / "specs" / name) as path:
        return read_toml(path)


def fresh_dir(out: Path) -> Path:
    """``out``, or ``out-2``, ``out-3``, ... if it already holds a run (nothing written is replaced)."""
    candidate, k = out, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = out.with_name(f"{out.name}-{k}")
    return candidate


def run_quickstart(out: Path, progress: bool = True, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Train the teacher then the LMD flow map under ``out``; print the eval table and the PNG path."""
    out = fresh_dir(out)
    print(f"[1/3] training the flow-matching teacher -> {out / 'teacher'}")
    teacher = train(builtin_spec(TEACHER_SPEC), out=out / "teacher", overrides=overrides, progress=progress)
    print(f"[2/3] distilling a flow map (LMD) -> {out / 'flow_map'}")
    flow_map = train(builtin_spec(FLOW_MAP_SPEC), out=out / "flow_map",
                     overrides=[*overrides, f'teacher.run="{teacher.resolve()}"'], progress=progress)
    print("[3/3] evaluating (energy distance, sliced W2, checkerboard KL; lower is better)")
    print(format_table(evaluate(flow_map)))
    print(f"samples: {flow_map / 'samples.png'}   scores: {flow_map / 'eval.json'}")
    return out
