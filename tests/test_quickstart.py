"""``fmmkit quickstart`` on a tiny budget: one LSD run (no teacher), the in-squares column, a reproducible table and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmmkit.cli.quickstart import FLOW_MAP_SPEC, QUICKSTART_OVERRIDES, run_quickstart
from fmmkit.spec import load_spec
from fmmkit.spec.builtin import builtin_spec_path

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train.steps=30", "train.batch_size=128", "model.width=32", "model.depth=2", "sample.num_pictures=200",
        "eval.num_samples=400"]


def test_quickstart_spec_is_the_builtin_lsd_without_teacher_and_one_ode_row() -> None:
    spec = load_spec(builtin_spec_path(FLOW_MAP_SPEC), list(QUICKSTART_OVERRIDES))
    assert spec.loss.kind == "lagrangian_self_distillation" and spec.teacher is None
    assert spec.model.config.time_embedding == "identity"
    assert [s.kind for s in spec.eval.ode] == ["midpoint"] and spec.train.threads == "auto"
    assert spec.loss.config.velocity_target == "stable"


def test_quickstart_prints_in_squares_and_repeats_to_the_digit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = run_quickstart(tmp_path / "qs", progress=False, overrides=TINY)
    table = capsys.readouterr().out
    assert "in_support" in table and "flow map, 1 step" in table and "ODE midpoint(16)" in table
    second = run_quickstart(tmp_path / "qs", progress=False, overrides=TINY)
    assert second != first  # a fresh directory, the first run is kept

    def scores(out: Path) -> list[dict[str, float]]:
        return [row["metrics"] for row in json.loads((out / "flow_map" / "eval.json").read_text())["rows"]]

    assert scores(first) == scores(second)
    assert 0.0 <= scores(first)[0]["in_support"] <= 1.0
    assert (first / "flow_map" / "samples.png").read_bytes() == (second / "flow_map" / "samples.png").read_bytes()
