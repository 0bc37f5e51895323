"""Malformed specs: each gives one line naming the file, the key path and the fix; exit status 2."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from fmmkit.cli import main

GOOD = """
name = "ok"
[data]
kind = "checkerboard"
[loss]
kind = "flow_matching"
"""

CASES = {
    "unknown_top_key": (GOOD + "[trian]\nsteps = 3\n", r"trian: unknown key; did you mean 'train'\?"),
    "unknown_section_key": (GOOD + "[train]\nstepz = 3\n", r"train\.stepz: unknown key; did you mean 'steps'\?"),
    "unknown_component_key": (GOOD.replace('kind = "flow_matching"', 'kind = "flow_matching"\ntimez = 1'),
                              r"loss\.timez: unknown key; did you mean 'times'\?"),
    "nested_component_key": (GOOD.replace('kind = "flow_matching"', 'kind = "flow_matching"\n[loss.times]\nt_mx = 1.0'),
                             r"loss\.times\.t_mx: unknown key; did you mean 't_max'\?"),
    "wrong_type_int": (GOOD + '[train]\nsteps = "many"\n', r"train\.steps: expected an integer, got 'many' \(a string\)"),
    "bool_is_not_int": (GOOD + "[train]\nbatch_size = true\n", r"train\.batch_size: expected an integer, got True"),
    "wrong_type_float": (GOOD + '[optim]\nlr = "fast"\n', r"optim\.lr: expected a number, got 'fast'"),
    "out_of_range": (GOOD + "[optim]\nlr = -0.1\n", r"optim\.lr: must be > 0, got -0\.1"),
    "out_of_range_component": (GOOD + '[model]\nkind = "mlp"\nwidth = 0\n', r"model\.width: must be > 0, got 0"),
    "bad_choice": (GOOD + '[optim]\nname = "sgdd"\n', r"optim\.name: must be one of 'adam', 'adamw', 'radam', got 'sgdd'"),
    "unknown_kind": (GOOD.replace('"checkerboard"', '"chekerboard"'),
                     r"data\.kind: unknown dataset 'chekerboard'; did you mean 'checkerboard'\? registered: .*two_moons"),
    "missing_kind": (GOOD.replace('kind = "flow_matching"', "times = {}"), r"loss\.kind: missing; registered losses?: .*flow_matching"),
    "missing_loss": ('[data]\nkind = "checkerboard"\n', r"loss: missing table \[loss\]; add it with kind = one of: .*flow_matching"),
    "missing_teacher_run": (GOOD.replace('"flow_matching"', '"lagrangian_distillation"') + '[teacher]\nrun = "runs/nope"\n',
                            r"teacher\.run: no trained run at 'runs/nope' \(missing spec\.toml, model\.safetensors\); train the teacher first"),
    "teacher_needed": (GOOD.replace('"flow_matching"', '"lagrangian_distillation"'),
                       r"teacher: loss 'lagrangian_distillation' distills a teacher; add \[teacher\]"),
    "invalid_toml": ("[data\nkind = 1\n", r"invalid TOML: "),
    "bad_grid_entry": (GOOD + "[sample]\nsteps = [1, -2]\n", r"sample\.steps: must be > 0, got -2"),
    "table_expected": ("train = 3\n" + GOOD, r"train: expected a table, got 3"),
}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path) -> Result:
    """``fmmkit ARGS`` in-process, as the console script runs it, with its exit status and output."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(old)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Check every malformed spec with the CLI, as a user runs it."""
    root = tmp_path_factory.mktemp("specs")
    out = {}
    for name, (text, _) in CASES.items():
        (root / f"{name}.toml").write_text(text)
        out[name] = run_cli("spec", "check", f"{name}.toml", cwd=root)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_spec_gives_one_line(name: str, results: dict[str, Result]) -> None:
    import re

    proc = results[name]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"fmmkit: error: {name}.toml: "), lines[0]
    assert re.search(CASES[name][1], lines[0]), lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_spec_file(tmp_path: Path) -> None:
    proc = run_cli("spec", "check", "nowhere.toml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "fmmkit: error: nowhere.toml: no such spec file"


def test_bad_override_is_named(tmp_path: Path) -> None:
    (tmp_path / "ok.toml").write_text(GOOD)
    proc = run_cli("spec", "check", "ok.toml", "--set", "train.steps", cwd=tmp_path)
    assert proc.returncode == 2 and "--set train.steps: expected KEY.PATH=VALUE" in proc.stderr
    proc = run_cli("spec", "check", "ok.toml", "--set", "train.steps=-4", cwd=tmp_path)
    assert proc.returncode == 2 and "train.steps: must be >= 0, got -4" in proc.stderr
