"""What a run refuses so that it is never lost or mislabelled, and how a stopped run is repaired (issue 14)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli
from engine_helpers import all_finite, events, nan_term, patch_loss, records, tiny_spec
from fmmkit.spec import spec_to_toml
from fmmkit.spec.loader import structure_spec
from fmmkit.training.checkpoint import list_checkpoints
from fmmkit.training.errors import TrainingError
from fmmkit.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_file(path: Path, spec: dict) -> Path:
    path.write_text(spec_to_toml(structure_spec(spec, check_paths=False)))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_spec(), out=tmp_path_factory.mktemp("guards") / "run", progress=False, pictures=False)


@pytest.mark.parametrize("old, new, key", [("batch_size = 32\n", "batch_size = 64\n", "train.batch_size"),
                                           ("seed = 3\n", "seed = 4\n", "train.seed"),
                                           ("diagonal_fraction = 0.75\n", "diagonal_fraction = 0.5\n",
                                            "loss.times.diagonal_fraction")])
def test_resume_refuses_a_hand_edited_spec(finished: Path, tmp_path: Path, old: str, new: str, key: str) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    text = (out / "spec.toml").read_text()
    assert text.count(old) == 1, old
    (out / "spec.toml").write_text(text.replace(old, new))
    line = run_cli("train", "--resume", str(out), "--quiet", "--set", "train.steps=10").error_line()
    assert f"{out / 'spec.toml'}: {key} differs from the spec the checkpoint of step 8 was trained with" in line, line
    assert [step for step, _ in list_checkpoints(out)] == [4, 8]


def test_resume_refuses_train_steps_below_the_checkpoint(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = (out / "spec.toml").read_text()
    line = run_cli("train", "--resume", str(out), "--quiet", "--set", "train.steps=6").error_line()
    assert line == (f"fmmkit: error: --set train.steps=6: the run's newest checkpoint is at step 8; "
                    "give train.steps >= 8 (a run cannot be shortened by resuming it)"), line
    assert (out / "spec.toml").read_text() == before


def test_a_nonfinite_stop_is_repaired_by_resuming_with_new_optimiser_settings(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_file(tmp_path / "tiny.toml", tiny_spec())

    def nan_at_step_6(step, output):  # noqa: ANN001, ANN202
        return nan_term(output, "lagrangian") if step == 5 else output

    patch_loss(monkeypatch, nan_at_step_6)
    out = tmp_path / "run"
    line = run_cli("train", str(spec), "--out", str(out), "--quiet").error_line()
    assert "step 6: non-finite loss term 'lagrangian'" in line and "--resume" in line, line
    monkeypatch.undo()
    result = run_cli("train", "--resume", str(out), "--quiet", "--set", "optim.lr=0.005", "--set", "optim.grad_clip=0.5",
                     "--set", 'train.on_nonfinite="skip"')
    assert result.returncode == 0, result.stderr
    changed = [(e["key"], e["from"], e["to"]) for e in events(out) if e["event"] == "changed"]
    assert changed == [("optim.grad_clip", 1.0, 0.5), ("optim.lr", 0.01, 0.005), ("train.on_nonfinite", "stop", "skip")]
    reference = train(tiny_spec(), out=tmp_path / "reference", progress=False, pictures=False)
    lr = {r["step"]: r["lr"] for r in records(out)}
    lr_ref = {r["step"]: r["lr"] for r in records(reference)}
    assert lr[4] == lr_ref[4] and all(math.isclose(lr[k], lr_ref[k] / 2, rel_tol=1e-12) for k in (5, 6, 7, 8)), lr
    assert "lr = 0.005\n" in (out / "spec.toml").read_text()


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_weights_made_nonfinite_by_the_optimiser_step_are_never_checkpointed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    calls = []
    step = torch.optim.Adam.step

    def poisoned_step(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        result = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # optimiser step 4, a checkpoint step
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.inf
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    with pytest.raises(TrainingError, match=r"step 4: the optimiser step made parameter '[\w.]+' non-finite "
                                            r"\(the loss and gradients were finite\)"):
        train(tiny_spec(train={"on_nonfinite": mode}), out=tmp_path / "run", progress=False, pictures=False)
    assert list_checkpoints(tmp_path / "run") == [], "a checkpoint holding non-finite weights was written"


def test_too_many_skipped_steps_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_from_step_2(step, output):  # noqa: ANN001, ANN202
        return nan_term(output, "diagonal") if step >= 1 else output

    patch_loss(monkeypatch, nan_from_step_2)
    with pytest.raises(TrainingError, match=r"step 4: 3 of 20 steps skipped, more than train.skip_limit = 0.1 "
                                            r"allows \(2\)"):
        train(tiny_spec(train={"steps": 20, "on_nonfinite": "skip"}), out=tmp_path / "run", progress=False,
              pictures=False)
    assert all(all_finite(path / "model.safetensors") for _, path in list_checkpoints(tmp_path / "run"))


def test_the_final_report_states_how_many_steps_were_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_file(tmp_path / "tiny.toml", tiny_spec(train={"on_nonfinite": "skip", "skip_limit": 0.5}))
    result = run_cli("train", str(spec), "--out", str(tmp_path / "clean"), "--quiet")
    assert result.stdout.strip() == f"trained: {tmp_path / 'clean'} (8 steps, 0 skipped)", result.stdout

    def nan_at_step_3(step, output):  # noqa: ANN001, ANN202
        return nan_term(output, "diagonal") if step == 2 else output

    patch_loss(monkeypatch, nan_at_step_3)
    result = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "--quiet")
    assert result.stdout.strip() == f"trained: {tmp_path / 'run'} (8 steps, 1 skipped)", result.stdout
    assert json.loads((tmp_path / "run" / "run.json").read_text())["skipped"] == 1


def test_a_run_may_not_be_its_own_teacher(tmp_path: Path) -> None:
    teacher = train(tiny_spec(loss={"kind": "flow_matching"}), out=tmp_path / "student" / "teacher", progress=False,
                    pictures=False)
    weights = (teacher / "model.safetensors").read_bytes()
    student = spec_file(tmp_path / "lmd.toml", tiny_spec(loss={"kind": "lagrangian_distillation"},
                                                         teacher={"run": str(teacher)}))
    for out in (teacher, tmp_path / "student"):
        line = run_cli("train", str(student), "--out", str(out), "--overwrite", "--quiet").error_line()
        assert f"teacher.run: the teacher run {teacher} is inside --out {out}" in line, line
        assert "train into another directory" in line, line
    assert (teacher / "model.safetensors").read_bytes() == weights
    assert run_cli("train", str(student), "--out", str(tmp_path / "lmd"), "--quiet").returncode == 0
