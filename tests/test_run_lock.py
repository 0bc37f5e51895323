"""One writer per run directory: an OS lock the kernel releases, refused writers, unblocked readers (issue 14)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import cli_command, run_cli
from engine_helpers import assert_same_weights, tiny_spec
from fmmkit.training.checkpoint import list_checkpoints
from fmmkit.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def live_writer(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A finished 8-step run that another process is now continuing (for a long time)."""
    out = train(tiny_spec(train={"threads": 1}), out=tmp_path / "run", progress=False, pictures=False)
    proc = subprocess.Popen(cli_command("train", "--resume", str(out), "--quiet", "--set", "train.steps=1000000",
                                        "--set", "checkpoint.every=5"), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while list_checkpoints(out)[-1][0] <= 8:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the writer wrote no checkpoint within 120 s"
            time.sleep(0.05)
        yield proc, out
    finally:
        proc.kill()
        proc.wait()


def test_one_writer_per_run_directory(live_writer: tuple[subprocess.Popen, Path], tmp_path: Path) -> None:
    proc, out = live_writer
    spec_before = (out / "spec.toml").read_text()
    line = run_cli("train", "--resume", str(out), "--quiet").error_line(status=1)  # the machine's state, not a mistake
    assert f"{out}: the run is being written by another process (pid {proc.pid}" in line, line
    assert "wait for it to finish or stop it" in line, line
    (tmp_path / "other.toml").write_text(spec_before)
    line = run_cli("train", str(tmp_path / "other.toml"), "--out", str(out), "--overwrite", "--quiet").error_line(1)
    assert f"(pid {proc.pid}" in line, line
    assert (out / "spec.toml").read_text() == spec_before and list_checkpoints(out), "a refused writer changed the run"

    # readers do not wait for the writer
    start = time.monotonic()
    assert run_cli("sample", str(out), "--num", "10", "--out", str(tmp_path / "x.npy")).returncode == 0
    assert time.monotonic() - start < 60

    # kill -9 leaves no stale lock: the kernel released it with the process
    proc.kill()
    proc.wait()
    step = list_checkpoints(out)[-1][0]
    assert run_cli("train", "--resume", str(out), "--quiet", "--set", f"train.steps={step + 2}").returncode == 0


@pytest.mark.slow
def test_concurrent_resumes_leave_one_consistent_run(tmp_path: Path) -> None:
    """Two resumes started together: one trains while the other is refused (or, if the first was done
    before the second started, the second continues it); the files agree with an uninterrupted run."""
    constant = {"schedule": "constant", "warmup_steps": 0}  # the same schedule whatever train.steps is
    out = train(tiny_spec(train={"threads": 1}, optim=constant), out=tmp_path / "run", progress=False, pictures=False)
    procs = [subprocess.Popen(cli_command("train", "--resume", str(out), "--quiet", "--set", f"train.steps={steps}"),
                              stderr=subprocess.PIPE, text=True) for steps in (400, 401)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 1], [0, 0]), results
    for code, err in results:
        assert "Traceback" not in err and (code == 0 or "the run is being written by another process" in err), err
    steps = json.loads((out / "run.json").read_text())["steps"]
    assert f"steps = {steps}\n" in (out / "spec.toml").read_text()
    straight = train(tiny_spec(train={"threads": 1, "steps": steps}, optim=constant), out=tmp_path / "straight",
                     progress=False, pictures=False)
    assert_same_weights(out / "model.safetensors", straight / "model.safetensors")
