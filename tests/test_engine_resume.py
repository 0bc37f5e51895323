"""Exact resume: signal stop, SIGKILL, damaged and malicious checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine_helpers import all_finite, assert_same_weights, events, patch_loss, records, tiny_spec
from fmmkit.cli import main
from fmmkit.training.checkpoint import CheckpointError, list_checkpoints
from fmmkit.training.signals import TrainingInterrupted
from fmmkit.training.statefile import StateFormatError, loads_state
from fmmkit.training.loop import resume_run, train

WEIGHT_FILES = ("model.safetensors", "ema-0.9.safetensors", "ema-hl200.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    for name in WEIGHT_FILES:
        assert_same_weights(a / name, b / name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 8-step run (two accumulated micro-batches, EMAs, warm-up + cosine, clipping)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_spec(train={"micro_batches": 2}), out=out, progress=False, pictures=False)
    return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_resume_is_bit_identical(reference: Path, tmp_path: Path, monkeypatch,
                                                               signum: int) -> None:
    sent = []

    def signal_at_step_5(step, output):  # noqa: ANN001, ANN202
        if step == 5 and not sent:  # once: a second SIGINT would interrupt at once, by design
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return output

    patch_loss(monkeypatch, signal_at_step_5)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(tiny_spec(train={"micro_batches": 2}), out=out, progress=False, pictures=False)
    # step 6 is not a multiple of checkpoint.every = 4: this checkpoint was written for the signal
    assert [step for step, _ in list_checkpoints(out)] == [4, 6]
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    resume_run(out, progress=False, pictures=False)
    assert_same_run(out, reference)
    steps = [r["step"] for r in records(out)]
    assert steps == list(range(1, 9)), f"metrics.jsonl should hold each step once, got {steps}"
    # train.threads = "auto" (the default): each start records the thread governor's choice
    assert [(e["event"], e["step"]) for e in events(out)] == [
        ("threads", 0), ("checkpoint", 4), ("checkpoint", 6), ("interrupted", 6), ("resume", 6), ("threads", 6),
        ("checkpoint", 8)]


def test_resume_from_an_older_checkpoint_matches_and_loads_ema_by_default(reference: Path, tmp_path: Path) -> None:
    import shutil

    from fmmkit.runs.run import load_run

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for step, path in list_checkpoints(out):
        if step > 4:
            shutil.rmtree(path)
    for name in WEIGHT_FILES:
        (out / name).unlink()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert_same_run(out, reference)
    run = load_run(out)
    assert run.weights == "ema-0.9"
    raw = load_run(out, weights="raw")
    assert raw.weights == "raw"
    assert not torch.equal(run.model.backbone.out.weight, raw.model.backbone.out.weight)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest"])
def test_damaged_checkpoint_gives_a_clear_warning_and_the_previous_one_is_used(
        reference: Path, tmp_path: Path, damage: str, capfd) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest = list_checkpoints(out)[-1][1]
    if damage == "truncate":
        data = (newest / "trainer.safetensors").read_bytes()
        (newest / "trainer.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (newest / "model.safetensors").write_bytes(bytes(data))
    else:
        (newest / "checkpoint.json").unlink()
    for name in WEIGHT_FILES:
        (out / name).unlink()
    resume_run(out, progress=False, pictures=False)
    err = capfd.readouterr().err
    expected = {"truncate": "trainer.safetensors: truncated", "flip": "model.safetensors: damaged",
                "no_manifest": "incomplete checkpoint"}[damage]
    assert expected in err and "trying the previous checkpoint" in err, err
    assert_same_run(out, reference)  # retrained from step 4 to the same weights


def test_every_checkpoint_damaged_is_a_one_line_error(reference: Path, tmp_path: Path, capsys) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for _, path in list_checkpoints(out):
        (path / "checkpoint.json").write_text("{not json")
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fmmkit: error:") and "every checkpoint" in err[-1], err


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def test_a_checkpoint_crafted_to_run_code_does_not_run_it(reference: Path, tmp_path: Path, capfd) -> None:
    import hashlib
    import shutil

    marker = tmp_path / "pwned"
    payload = pickle.dumps({"optimizer": _Payload(str(marker))})
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest = list_checkpoints(out)[-1][1]
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pt")  # a torch.load-style zip pickle
    for name, data in [("trainer.safetensors", payload), ("model.safetensors", (tmp_path / "evil.pt").read_bytes())]:
        (newest / name).write_bytes(data)
        manifest = json.loads((newest / "checkpoint.json").read_text())  # the attacker fixes the checksums too
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (newest / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(StateFormatError):
        loads_state(payload)
    for name in WEIGHT_FILES:
        (out / name).unlink()
    resume_run(out, progress=False, pictures=False)
    assert not marker.exists(), "loading a checkpoint ran code"
    assert "not a safetensors file" in capfd.readouterr().err
    assert_same_run(out, reference)


def test_resume_refuses_a_changed_spec_and_a_missing_run(reference: Path, tmp_path: Path) -> None:
    from fmmkit.spec import SpecError

    with pytest.raises(SpecError, match="model.width differs"):
        train(tiny_spec(train={"micro_batches": 2}, model={"width": 8}), out=reference, resume=True, progress=False)
    with pytest.raises(SpecError, match="no run to resume"):
        train(tiny_spec(), out=tmp_path / "nothing", resume=True, progress=False)
    early = tmp_path / "early"
    early.mkdir()
    (early / "spec.toml").write_text((reference / "spec.toml").read_text())
    with pytest.raises(SpecError, match="before its first checkpoint.*--overwrite"):
        resume_run(early, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        from fmmkit.training.checkpoint import load_latest
        from fmmkit.training.distributed import DistEnv

        load_latest(tmp_path, DistEnv(), torch.device("cpu"))


@pytest.mark.slow
def test_sigkill_mid_run_loses_at_most_one_checkpoint_interval(tmp_path: Path) -> None:
    every = 5
    killed = tmp_path / "killed"
    spec = tiny_spec(optim={"schedule": "constant", "warmup_steps": 0}, train={"steps": 100000},
                     checkpoint={"every": every, "keep": 2})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = ("import json, sys; from fmmkit.training.loop import train; "
            f"train(json.load(open({str(tmp_path / 'spec.json')!r})), out={str(killed)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list_checkpoints(killed)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    logged = max(r["step"] for r in records(killed) if "loss" in r)
    saved = list_checkpoints(killed)[-1][0]
    assert logged - saved <= every, f"killed after step {logged} but the newest checkpoint is step {saved}"

    end = saved + 3
    resume_run(killed, overrides=[f"train.steps={end}"], progress=False, pictures=False)
    straight = tmp_path / "straight"
    train(tiny_spec(optim={"schedule": "constant", "warmup_steps": 0}, train={"steps": end},
                    checkpoint={"every": every, "keep": 2}), out=straight, progress=False, pictures=False)
    assert_same_run(killed, straight)
    assert all_finite(killed / "model.safetensors")
