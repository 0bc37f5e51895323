"""Bad command lines and unwritable places: one line, never a traceback; exit 2 for a user mistake,
1 for an environment problem (issue 14)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import fmmkit
from cli_helpers import cli_command, run_cli, run_process
from engine_helpers import tiny_spec
from fmmkit.spec import spec_to_toml
from fmmkit.spec.loader import structure_spec
from fmmkit.training.checkpoint import list_checkpoints
from fmmkit.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny run (8 steps, EMAs)."""
    return train(tiny_spec(), out=tmp_path_factory.mktemp("cli") / "run", progress=False, pictures=False)


def spec_file(path: Path, **sections: dict) -> Path:
    path.write_text(spec_to_toml(structure_spec(tiny_spec(**sections), check_paths=False)))
    return path


@pytest.mark.parametrize("args, problem", [
    (["--num", "0"], "--num: must be >= 1, got 0"),
    (["--num", "-5"], "--num: must be >= 1, got -5"),
    (["--steps", "0"], "--steps: must be >= 1, got 0"),
    (["--steps", "-2", "--solver", "euler"], "--steps: must be >= 1, got -2"),
    (["--seed", "-1"], "--seed: must be in [0, 9223372036854775807], got -1"),
])
def test_sample_counts_are_range_checked(run: Path, tmp_path: Path, args: list[str], problem: str) -> None:
    line = run_cli("sample", str(run), *args, "--out", str(tmp_path / "x.npy")).error_line()
    assert line == f"fmmkit: error: {problem}", line


@pytest.mark.parametrize("args, flag", [(["--steps", "100000000000"], "--steps"),
                                        (["--num", "100000000000"], "--num"),
                                        (["--steps", "100000000000", "--solver", "euler"], "--steps")])
def test_sample_allocations_are_bounded(run: Path, tmp_path: Path, args: list[str], flag: str) -> None:
    line = run_cli("sample", str(run), *args, "--out", str(tmp_path / "x.npy")).error_line()
    assert line.startswith(f"fmmkit: error: {flag} 100000000000: needs about "), line
    assert "more than the" in line and "raise the bound with --max-memory GIB" in line, line


def test_the_allocation_bound_can_be_raised(run: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x.npy")
    line = run_cli("sample", str(run), "--num", "5000", "--max-memory", "0.00001", "--out", out).error_line()
    assert "--num 5000: needs about" in line, line
    assert run_cli("sample", str(run), "--num", "5000", "--max-memory", "1", "--out", out).returncode == 0
    assert run_cli("sample", str(run), "--num", "5", "--max-memory", "0", "--out", out).error_line() == \
        "fmmkit: error: --max-memory: must be > 0, got 0.0"


def test_sample_out_naming_an_existing_directory(run: Path, tmp_path: Path) -> None:
    (tmp_path / "d.npy").mkdir()
    line = run_cli("sample", str(run), "--out", str(tmp_path / "d.npy")).error_line()
    assert line == f"fmmkit: error: --out {tmp_path / 'd.npy'}: is a directory; give a .npy or .png file name", line


@pytest.mark.parametrize("num", ["0", "-3", "1"])
def test_eval_num_is_range_checked(run: Path, num: str) -> None:
    assert run_cli("eval", str(run), "--num", num).error_line() == f"fmmkit: error: --num: must be >= 2, got {num}"
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("args, problem", [
    (["--search-examples", "2"], "--search-examples: must be >= 4 (the search needs 4 examples), got 2"),
    (["--num", "1"], "--num: must be >= 2, got 1"),
    (["--search-examples", "100000000000"], "--search-examples: must be <= 1000000, got 100000000000"),
])
def test_verify_counts_are_range_checked(run: Path, args: list[str], problem: str) -> None:
    assert run_cli("verify", str(run), *args).error_line() == f"fmmkit: error: {problem}"


def test_weights_whose_shapes_differ_from_spec_toml(run: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    text = (edited / "spec.toml").read_text()
    assert "width = 16\n" in text
    (edited / "spec.toml").write_text(text.replace("width = 16\n", "width = 24\n"))
    line = run_cli("sample", str(edited), "--out", str(tmp_path / "x.npy")).error_line()
    assert "ema-0.9.safetensors: weights do not fit the run's model" in line and "shape" in line, line
    assert "was spec.toml edited after training?" in line, line


def test_eval_and_verify_show_their_results_when_the_json_cannot_be_written(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "eval.json").mkdir()  # unwritable even for root
    (copy / "verify.json").mkdir()
    result = run_cli("eval", str(copy), "--num", "40")
    line = result.error_line(status=1)
    assert "flow map, 1 step" in result.stdout, "the table must be printed before eval.json is written"
    assert line.startswith(f"fmmkit: error: {copy / 'eval.json'}: cannot write") and "Is a directory" in line, line
    result = run_cli("verify", str(copy), "--num", "32", "--search-examples", "8")
    line = result.error_line(status=1)
    assert "identity" in result.stdout and line.startswith(f"fmmkit: error: {copy / 'verify.json'}: cannot write"), line


def test_spec_check_catches_what_train_refuses_and_train_checks_before_creating_the_run(tmp_path: Path) -> None:
    cases = {"train.micro_batches=5": "--set train.micro_batches=5: train.micro_batches: 5 micro-batches do not split train.batch_size = 32 points equally",
             'ema.sample_with="ema-5"': "ema.sample_with: 'ema-5' is not one of this run's weights"}
    spec = spec_file(tmp_path / "tiny.toml")
    for override, problem in cases.items():
        assert problem in run_cli("spec", "check", str(spec), "--set", override).error_line()
        line = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "--quiet", "--set", override).error_line()
        assert problem in line, line
        assert not (tmp_path / "run").exists(), f"train created the run directory before refusing {override}"
    images = spec_file(tmp_path / "images.toml", data={"kind": "image_folder", "root": str(tmp_path / "nowhere")})
    assert "data.root: no directory" in run_cli("spec", "check", str(images)).error_line()
    assert "data.root: no directory" in run_cli("train", str(images), "--out", str(tmp_path / "run")).error_line()
    assert not (tmp_path / "run").exists()
    assert run_cli("train", str(spec), "--out", str(tmp_path / "run"), "--quiet").returncode == 0  # no --overwrite


def test_load_run_takes_weights_as_documented(run: Path) -> None:
    assert fmmkit.load_run(run, weights="raw").weights == "raw"
    assert fmmkit.load_run(run).weights == "ema-0.9"


def test_a_broken_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """``fmmkit plugins | true``: the reader is gone before fmmkit writes."""
    err = tmp_path / "err.txt"
    command = " ".join(cli_command("plugins")) + f" 2>{err}; echo $? >{tmp_path / 'status'}"
    subprocess.run(["sh", "-c", f"({command}) | true"], cwd=tmp_path, timeout=120, check=True)
    assert err.read_text() == "", err.read_text()
    assert (tmp_path / "status").read_text().strip() == "141"  # 128 + SIGPIPE, as a shell tool reports it


def test_sigterm_saves_and_exits_143(tmp_path: Path) -> None:
    spec = spec_file(tmp_path / "long.toml", train={"steps": 100000, "threads": 1}, checkpoint={"every": 5, "keep": 2})
    out = tmp_path / "run"
    proc = subprocess.Popen(cli_command("train", str(spec), "--out", str(out), "--quiet"), stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not list_checkpoints(out):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "Traceback" not in err and "checkpoint saved; continue with: fmmkit train --resume" in err, err


@pytest.mark.slow
def test_permission_errors_are_one_line_exit_1(run: Path, tmp_path: Path) -> None:
    """Real permission bits (as an ordinary user, or as root without CAP_DAC_OVERRIDE)."""
    spec = spec_file(tmp_path / "tiny.toml")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    line = run_process("train", str(spec), "--out", str(locked / "run"), "--quiet", cwd=tmp_path,
                       unprivileged=True).error_line(status=1)
    assert str(locked / "run") in line and "Permission denied" in line, line

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for name in ("model.safetensors", "ema-0.9.safetensors", "ema-hl200.safetensors"):
        (copy / name).unlink()
    (copy / "checkpoints").chmod(0o555)
    line = run_process("train", "--resume", str(copy), "--quiet", "--set", "train.steps=12", cwd=tmp_path,
                       unprivileged=True).error_line(status=1)  # the next checkpoint (step 12) cannot be written
    assert "checkpoints" in line and "Permission denied" in line, line
    (copy / "checkpoints").chmod(0o755)
    assert [step for step, _ in list_checkpoints(copy)] == [4, 8]

    readonly = tmp_path / "readonly"
    shutil.copytree(run, readonly)
    readonly.chmod(0o555)
    result = run_process("eval", str(readonly), "--num", "40", cwd=tmp_path, unprivileged=True)
    line = result.error_line(status=1)
    assert "flow map, 1 step" in result.stdout and str(readonly / "eval.json") in line and "Permission denied" in line
    result = run_process("verify", str(readonly), "--num", "32", "--search-examples", "8", cwd=tmp_path,
                         unprivileged=True)
    line = result.error_line(status=1)
    assert "identity" in result.stdout and str(readonly / "verify.json") in line and "Permission denied" in line
    readonly.chmod(0o755)
    locked.chmod(0o755)


def test_unknown_names_in_fmmkit_block_plugins_are_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    from fmmkit.registry import PluginWarning, load_registry

    monkeypatch.setenv("FMMKIT_BLOCK_PLUGINS", "fmmkit-exampel")
    with pytest.warns(PluginWarning, match=r"FMMKIT_BLOCK_PLUGINS names 'fmmkit-exampel', which is not a "
                                           r"plugin; did you mean 'fmmkit-example'\?") as caught:
        registry = load_registry()
    assert sum("FMMKIT_BLOCK_PLUGINS" in str(w.message) for w in caught) == 1  # one line, not one per plugin
    assert not registry.blocked  # a misspelt name blocks nothing



def test_a_full_disk_without_a_file_name_names_the_folder_being_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    from fmmkit.cli import commands

    def full_disk(args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")  # a stream write: no file name

    monkeypatch.setattr(commands, "cmd_train", full_disk)
    assert commands.main(["train", "spec.toml", "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.strip() == (f"fmmkit: error: writing {tmp_path / 'run'}: No space left on device; "
                                               "free some space")
