"""The files of a run: shareable permissions, logs that survive rotation, JSON without NaN (issue 14)."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_helpers import run_cli, strict_json
from engine_helpers import nan_term, patch_loss, records, tiny_spec
from fmmkit.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_run_files_honour_the_umask(tmp_path: Path, umask_027: None) -> None:
    out = train(tiny_spec(), out=tmp_path / "run", progress=False, pictures=True)
    files = [p for p in out.rglob("*") if p.is_file()]
    dirs = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert {"spec.toml", "model.safetensors", "run.json", "metrics.jsonl", "samples.png", "checkpoint.json"} <= {
        p.name for p in files}
    wrong = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o640}
    assert not wrong, f"files not 0640 under umask 027: {wrong}"
    wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs if stat.S_IMODE(p.stat().st_mode) != 0o750}
    assert not wrong, f"directories not 0750 under umask 027: {wrong}"


def test_logs_survive_deletion_and_rotation_during_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    done: set[str] = set()

    def rotate(step, output):  # noqa: ANN001, ANN202
        if step == 2 and "metrics" not in done:  # a user deletes metrics.jsonl
            done.add("metrics")
            (out / "metrics.jsonl").unlink()
        if step == 5 and "events" not in done:  # logrotate moves events.jsonl away
            done.add("events")
            (out / "events.jsonl").rename(out / "events.jsonl.1")
        return output

    patch_loss(monkeypatch, rotate)
    train(tiny_spec(), out=out, progress=False, pictures=False)
    assert [r["step"] for r in records(out)] == [3, 4, 5, 6, 7, 8]
    assert [(r["event"], r["step"]) for r in records(out, "events.jsonl.1")] == [("threads", 0), ("checkpoint", 4)]
    assert [(r["event"], r["step"]) for r in records(out, "events.jsonl")] == [("checkpoint", 8)]
    err = capfd.readouterr().err
    assert "metrics.jsonl was deleted or moved while the run was writing it; continuing in a new file" in err, err
    assert "events.jsonl was deleted or moved" in err, err


def test_json_files_never_hold_nan_or_infinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_at_last_step(step, output):  # noqa: ANN001, ANN202
        return nan_term(output, "diagonal") if step == 7 else output

    patch_loss(monkeypatch, nan_at_last_step)
    ode = [{"kind": "euler", "steps": 2}, {"kind": "dopri5", "max_steps": 20}]  # dopri5 cannot finish on NaN weights
    out = train(tiny_spec(train={"on_nonfinite": "skip", "skip_limit": 0.5}, eval={"ode": ode}),
                out=tmp_path / "run", progress=False, pictures=False)
    monkeypatch.undo()
    last = strict_json((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 8 and last["loss"] is None and last["diagonal"] is None
    assert last["nonfinite"]["loss"] == "nan" and last["nonfinite"]["diagonal"] == "nan"  # the note: what was there
    meta = strict_json((out / "run.json").read_text())
    assert meta["final"]["loss"] is None and meta["nonfinite"]["final.loss"] == "nan" and meta["skipped"] == 1
    for line in (out / "events.jsonl").read_text().splitlines():
        strict_json(line)

    # a run whose weights went NaN: eval.json and verify.json stay standard JSON
    weights = load_file(str(out / "ema-0.9.safetensors"))
    save_file({k: torch.full_like(v, math.nan) for k, v in weights.items()}, str(out / "ema-0.9.safetensors"))
    assert run_cli("eval", str(out), "--num", "40").returncode == 0
    scores = strict_json((out / "eval.json").read_text())
    assert scores["rows"][0]["metrics"]["energy_distance"] is None
    assert scores["nonfinite"]["rows.0.metrics.energy_distance"] == "nan"
    assert "dopri5" in scores["rows"][-1]["note"]  # the solver that could not finish is a row with a note
    run_cli("verify", str(out), "--num", "32", "--search-examples", "8")
    report = strict_json((out / "verify.json").read_text())
    index = [law["name"] for law in report["laws"]].index("semigroup")
    assert report["laws"][index]["rms"] is None and report["nonfinite"][f"laws.{index}.rms"] == "nan"
