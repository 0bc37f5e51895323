"""Checkpoints that are damaged, forged or cannot be written: nothing is lost and nothing unbounded is read."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from cli_helpers import run_cli
from engine_helpers import assert_same_weights, events, tiny_spec
from fmmkit.training import checkpoint as ckpt
from fmmkit.training.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from fmmkit.training.distributed import DistEnv
from fmmkit.training.loop import resume_run, train

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHT_FILES = ("model.safetensors", "ema-0.9.safetensors", "ema-hl200.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 12-step run with checkpoints at 4, 8 and 12."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_spec(train={"steps": 12}), out=out, progress=False, pictures=False)
    return out


def trainer_state(step: Path) -> tuple[dict, dict]:
    """A checkpoint's trainer tensors (as bytes) and structure, without the compile policy's timing (the
    eager step time it measured, which differs between a straight and a resumed run)."""
    from safetensors import safe_open

    with safe_open(str(step / "trainer.safetensors"), "pt") as f:
        structure = json.loads(f.metadata()["fmmkit.structure"])
        tensors = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}
    structure.pop("compile", None)
    return tensors, structure


def copy_run(reference: Path, to: Path) -> Path:
    shutil.copytree(reference, to)
    for name in WEIGHT_FILES:
        (to / name).unlink()
    return to


def damage(checkpoint: Path, name: str = "model.safetensors") -> None:
    data = bytearray((checkpoint / name).read_bytes())
    data[-3] ^= 0xFF
    (checkpoint / name).write_bytes(bytes(data))


def readable(checkpoint: Path) -> bool:
    try:
        read_checkpoint(checkpoint, DistEnv())
    except CheckpointError:
        return False
    return True


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:09d}"


def test_a_damaged_checkpoint_is_replaced_when_the_run_reaches_its_step_again(reference: Path, tmp_path: Path) -> None:
    out = copy_run(reference, tmp_path / "run")
    damage(step_dir(out, 12))
    resume_run(out, progress=False, pictures=False)
    assert readable(step_dir(out, 12)), "the fresh step-12 checkpoint was thrown away; the damaged one is still there"
    assert (step_dir(out, 12) / "model.safetensors").read_bytes() == (step_dir(reference, 12) / "model.safetensors").read_bytes()
    assert trainer_state(step_dir(out, 12)) == trainer_state(step_dir(reference, 12))
    for name in WEIGHT_FILES:
        assert_same_weights(out / name, reference / name)


def test_a_checkpoint_the_resume_skipped_is_replaced_even_when_its_checksums_match(
        reference: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A step-12 checkpoint whose files check out (manifest sizes and checksums recomputed) but holds
    another model's weights: the resume skips it, and reaching step 12 again replaces it."""
    out = copy_run(reference, tmp_path / "run")
    other = tmp_path_factory.mktemp("other") / "run"
    train(tiny_spec(train={"steps": 12}, model={"width": 24}), out=other, progress=False, pictures=False)
    forged = step_dir(out, 12)
    shutil.copyfile(step_dir(other, 12) / "model.safetensors", forged / "model.safetensors")
    manifest = json.loads((forged / ckpt.MANIFEST).read_text())
    data = (forged / "model.safetensors").read_bytes()
    manifest["files"]["model.safetensors"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (forged / ckpt.MANIFEST).write_text(json.dumps(manifest))
    resume_run(out, progress=False, pictures=False)
    assert (forged / "model.safetensors").read_bytes() == (step_dir(reference, 12) / "model.safetensors").read_bytes()
    assert trainer_state(forged) == trainer_state(step_dir(reference, 12))
    for name in WEIGHT_FILES:
        assert_same_weights(out / name, reference / name)


def test_a_checkpoint_folder_replaced_by_a_file_is_skipped_with_a_warning(
        reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_run(reference, tmp_path / "run")
    shutil.rmtree(step_dir(out, 12))
    step_dir(out, 12).write_text("not a folder")
    resume_run(out, progress=False, pictures=False)
    err = capsys.readouterr().err
    assert f"fmmkit: warning: {step_dir(out, 12)}: not a checkpoint folder; skipped" in err, err
    for name in WEIGHT_FILES:
        assert_same_weights(out / name, reference / name)


def test_keep_one_never_ends_with_only_a_damaged_checkpoint(reference: Path, tmp_path: Path) -> None:
    out = copy_run(reference, tmp_path / "run")
    damage(step_dir(out, 12))
    assert run_cli("train", "--resume", str(out), "--quiet", "--set", "checkpoint.keep=1").returncode == 0
    kept = list_checkpoints(out)
    assert [step for step, _ in kept] == [12] and readable(kept[0][1]), kept
    # and the run can be continued from it
    assert run_cli("train", "--resume", str(out), "--quiet", "--set", "train.steps=14").returncode == 0
    assert [step for step, _ in list_checkpoints(out)] == [14]


def test_pruning_never_removes_the_newest_readable_checkpoint(reference: Path, tmp_path: Path) -> None:
    out = copy_run(reference, tmp_path / "run")
    damage(step_dir(out, 12))
    damage(step_dir(out, 8), "trainer.safetensors")
    # resume from step 4 and stop at step 6, keeping one checkpoint: the newer ones on disk are damaged
    code = run_cli("train", "--resume", str(out), "--quiet", "--set", "train.steps=6", "--set", "checkpoint.keep=1",
                   "--set", "checkpoint.every=2").returncode
    assert code == 0
    readable_steps = [step for step, path in list_checkpoints(out) if readable(path)]
    assert readable_steps == [6], f"readable checkpoints left: {readable_steps}"
    assert run_cli("train", "--resume", str(out), "--quiet", "--set", "train.steps=7").returncode == 0


def forge(checkpoint: Path, files: dict[str, dict]) -> None:
    manifest = json.loads((checkpoint / "checkpoint.json").read_text())
    manifest["files"].update(files)
    (checkpoint / "checkpoint.json").write_text(json.dumps(manifest))


def entry(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("name", ["/etc/hostname", "../../spec.toml", "sub/model.safetensors", "..", "."])
def test_a_manifest_may_name_only_files_inside_its_own_folder(reference: Path, tmp_path: Path, name: str) -> None:
    out = copy_run(reference, tmp_path / "run")
    newest = step_dir(out, 12)
    target = (newest / name) if not name.startswith("/") else Path(name)
    data = target.read_bytes() if target.is_file() else b""
    forge(newest, {name: entry(data)})
    with pytest.raises(CheckpointError, match="may list only plain file names inside its own folder"):
        read_checkpoint(newest, DistEnv())


def test_a_manifest_entry_that_is_not_a_regular_file_or_has_another_size_is_not_read(
        reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = copy_run(reference, tmp_path / "run")
    newest = step_dir(out, 12)
    (newest / "model.safetensors").unlink()
    os.symlink("/dev/zero", newest / "model.safetensors")
    forge(newest, {"model.safetensors": {"bytes": 2**40, "sha256": "0" * 64}})
    reads: list[Path] = []
    original = Path.read_bytes

    def guarded_read_bytes(self: Path) -> bytes:  # /dev/zero would fill the memory of the machine
        if not stat.S_ISREG(os.stat(self).st_mode):
            raise AssertionError(f"{self} is not a regular file but was read without a bound")
        reads.append(self)
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", guarded_read_bytes)
    with pytest.raises(CheckpointError, match="model.safetensors: not a regular file"):
        read_checkpoint(newest, DistEnv())
    # a real file whose size differs from the manifest is refused before it is read
    trainer = newest / "trainer.safetensors"
    with open(trainer, "ab") as f:
        f.write(b"\0" * 1000)
    (newest / "model.safetensors").unlink()
    shutil.copy(step_dir(reference, 12) / "model.safetensors", newest / "model.safetensors")
    forge(newest, {"model.safetensors": entry((newest / "model.safetensors").read_bytes())})
    reads.clear()
    with pytest.raises(CheckpointError, match=r"trainer.safetensors: truncated or damaged \(\d+ bytes on disk, \d+ in checkpoint.json\)"):
        read_checkpoint(newest, DistEnv())
    assert trainer not in reads
    monkeypatch.undo()
    # resuming skips the forged checkpoint with a warning and continues exactly from the previous one
    resume_run(out, progress=False, pictures=False)
    for name in WEIGHT_FILES:
        assert_same_weights(out / name, reference / name)


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_the_previous_checkpoint_stays_usable(
        reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    (tmp_path / "spec.toml").write_text((reference / "spec.toml").read_text())
    write = ckpt._write

    def full_disk_at_step_8(path: Path, data: bytes) -> None:
        if ".step-000000008" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    monkeypatch.setattr(ckpt, "_write", full_disk_at_step_8)
    result = run_cli("train", str(tmp_path / "spec.toml"), "--out", str(out), "--quiet")
    line = result.error_line(status=1)
    assert "No space left on device" in line and "checkpoint of step 8" in line and "step 4" in line, line
    assert [step for step, _ in list_checkpoints(out)] == [4]
    assert not list((out / "checkpoints").glob(".step-*")), "the half-written checkpoint was left behind"
    monkeypatch.undo()
    assert run_cli("train", "--resume", str(out), "--quiet").returncode == 0
    for name in WEIGHT_FILES:
        assert_same_weights(out / name, reference / name)
    assert [e["event"] for e in events(out)].count("checkpoint") == 3  # 4, then 8 and 12 after the resume
