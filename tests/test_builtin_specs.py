"""Built-in specs by name: the package's specs are the one home, examples/ a generated copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmmkit.cli import main
from fmmkit.spec.builtin import builtin_spec_dir, builtin_spec_names

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.steps=2", "train.batch_size=64", "model.width=16", "model.depth=1",
        "sample.steps=[1]", "sample.num_pictures=32", "sample.picture_solver_steps=2", "log.tensorboard=false"]


def test_examples_are_real_files_generated_from_the_package_specs() -> None:
    examples = sorted((ROOT / "examples").glob("*.toml"))
    assert [p.stem for p in examples] == builtin_spec_names(), "regenerate with: fmmkit spec copy --all examples"
    for path in examples:
        assert not path.is_symlink(), f"{path} is a link; regenerate with: fmmkit spec copy --all examples"
        assert path.read_bytes() == (builtin_spec_dir() / path.name).read_bytes(), (
            f"{path} differs from fmmkit/specs/{path.name}: edit the package's spec, then "
            "regenerate with: fmmkit spec copy --all examples")


def test_spec_comments_name_commands_a_pip_user_can_run() -> None:
    for path in builtin_spec_dir().glob("*.toml"):
        assert "examples/" not in path.read_text(), f"{path.name} points at the repository's examples/ folder"


def test_spec_list_show_and_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed[: len(builtin_spec_names())]] == builtin_spec_names()
    assert any(line.startswith("checkerboard_lsd ") and "Lagrangian self-distillation" in line for line in listed)
    assert main(["spec", "show", "checkerboard_lsd"]) == 0
    assert capsys.readouterr().out.startswith('name = "checkerboard_lsd"\n')
    assert main(["spec", "copy", "checkerboard_lsd", "digits_teacher", str(tmp_path / "mine")]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["checkerboard_lsd.toml", "digits_teacher.toml"]
    assert main(["spec", "copy", "checkerbord_lsd", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmmkit: error: checkerbord_lsd: no spec file or built-in spec of that name; did you mean "
                          "'checkerboard_lsd'? built-in specs: checkerboard_ayf_emd, ")
    assert err.endswith(f"{builtin_spec_names()[-1]} (fmmkit spec list)") and "\n" not in err


def test_train_a_built_in_spec_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # no checkerboard_lsd file here: the name means the built-in spec
    sets = [arg for kv in TINY for arg in ("--set", kv)]
    assert main(["train", "checkerboard_lsd", "--quiet", *sets]) == 0
    assert capsys.readouterr().out.strip() == f"trained: {Path('runs') / 'checkerboard_lsd'} (2 steps, 0 skipped)"
    info = json.loads((tmp_path / "runs" / "checkerboard_lsd" / "run.json").read_text())
    assert info["steps"] == 2
