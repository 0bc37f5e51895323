"""Malformed specs: each gives one line naming the file, the key path and the fix; exit status 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import Result, run_cli

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
    # issue 14: misleading messages and tracebacks
    "string_for_list": (GOOD + '[optim]\nbetas = "0.9, 0.999"\n',
                        r"optim\.betas: expected an array, got '0\.9, 0\.999' \(a string\)$"),
    "utf8_bom": ("\ufeff" + GOOD, r"starts with a UTF-8 byte-order mark \(BOM\); save it as UTF-8 without a BOM"),
    "npy_without_path": (GOOD.replace('"checkerboard"', '"npy"'), r"data\.path: missing \(required by dataset 'npy'\)"),
    "misspelt_kind": (GOOD.replace('kind = "flow_matching"', 'kindx = "flow_matching"'),
                      r"loss\.kindx: unknown key; did you mean 'kind'\?"),
    "lr_inf": (GOOD + "[optim]\nlr = inf\n", r"optim\.lr: expected a finite number, got inf"),
    "noise_inf": (GOOD + "[interpolant]\nnoise = inf\n", r"interpolant\.noise: expected a finite number, got inf"),
    "grad_clip_nan": (GOOD + "[optim]\ngrad_clip = nan\n", r"optim\.grad_clip: expected a finite number, got nan"),
    "seed_negative": (GOOD + "[train]\nseed = -1\n", r"train\.seed: must be in \[0, 9223372036854775807\]"),
    "width_unallocatable": (GOOD + '[model]\nkind = "mlp"\nwidth = 1000000000\n',
                            r"model: .* parameters need about [0-9.]+ [KMGTPE]iB .*this machine has [0-9.]+ [KMGTPE]iB"),
    "batch_unallocatable": (GOOD + "[train]\nbatch_size = 100000000000\n",
                            r"train\.batch_size: .*need at least [0-9.]+ [KMGTPE]iB .*this machine has [0-9.]+ [KMGTPE]iB"),
    "unknown_sample_with": (GOOD + '[ema]\ndecays = [0.9]\nsample_with = "ema-5"\n',
                            r"ema\.sample_with: 'ema-5' is not one of this run's weights"),
    "micro_batches_split": (GOOD + "[train]\nmicro_batches = 3\n",
                            r"train\.micro_batches: 3 micro-batches do not split train\.batch_size = 1024 points equally"),
    "image_root_missing": ('[data]\nkind = "image_folder"\nroot = "nowhere"\n[loss]\nkind = "flow_matching"\n'
                           '[model]\nkind = "unet"\n', r"data\.root: no directory 'nowhere'"),
    "npy_missing_file": (GOOD.replace('kind = "checkerboard"', 'kind = "npy"\npath = "nope.npy"'),
                         r"data\.path: file 'nope\.npy' does not exist"),
    "npy_not_an_array": (GOOD.replace('kind = "checkerboard"', 'kind = "npy"\npath = "text.npy"'),
                         r"data\.path: 'text\.npy' is not a readable \.npy array"),
    "npy_zero_features": (GOOD.replace('kind = "checkerboard"', 'kind = "npy"\npath = "zero.npy"'),
                          r"data\.path: 'zero\.npy' has shape \(10, 0\): points with no features"),
    "npy_huge_scale": (GOOD.replace('kind = "checkerboard"', 'kind = "npy"\npath = "huge.npy"'),
                       r"data\.path: 'huge\.npy' holds values as large as 1e\+30.*standardize = true"),
    "npy_bad_labels": (GOOD.replace('kind = "checkerboard"', 'kind = "npy"\npath = "ok.npy"\nlabels_path = "text.npy"'),
                       r"data\.labels_path: 'text\.npy' is not a readable \.npy array"),
}

#: Data files next to the specs (the npy cases read them).
DATA_FILES = {
    "text.npy": b"not an array",
    "zero.npy": np.zeros((10, 0), dtype=np.float32),
    "huge.npy": np.full((10, 2), 1e30, dtype=np.float32),
    "ok.npy": np.zeros((10, 2), dtype=np.float32),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Check every malformed spec with the CLI, as a user runs it."""
    root = tmp_path_factory.mktemp("specs")
    for name, content in DATA_FILES.items():
        if isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            np.save(root / name, content)
    out = {}
    for name, (text, _) in CASES.items():
        (root / f"{name}.toml").write_text(text)
        try:
            out[name] = run_cli("spec", "check", f"{name}.toml", cwd=root)
        except Exception as exc:  # noqa: BLE001 - a traceback is what each case must not give
            out[name] = Result(-1, "", f"Traceback (escaped the CLI): {type(exc).__name__}: {exc}")
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
    assert proc.error_line() == "fmmkit: error: --set train.steps=-4: train.steps: must be >= 0, got -4"


def test_override_mistakes_are_attributed_to_the_override_not_the_file(tmp_path: Path) -> None:
    (tmp_path / "ok.toml").write_text(GOOD)
    cases = {
        "train.stepz=3": "train.stepz: unknown key; did you mean 'steps'?",
        "optim.lr=inf": "optim.lr: expected a finite number, got inf",
        "train.seed=18446744073709551616": "train.seed: must be in [",
        'loss.kind="flow_matchin"': "loss.kind: unknown loss 'flow_matchin'; did you mean 'flow_matching'?",
        "optim=3": "optim: expected a table, got 3",
    }
    for override, problem in cases.items():
        line = run_cli("spec", "check", "ok.toml", "--set", override, cwd=tmp_path).error_line()
        assert line.startswith(f"fmmkit: error: --set {override}: {problem}"), line
    # a mistake in the file is still the file's, whatever --set says
    (tmp_path / "bad.toml").write_text(GOOD + "[optim]\nlr = -1.0\n")
    line = run_cli("spec", "check", "bad.toml", "--set", "train.steps=4", cwd=tmp_path).error_line()
    assert line == "fmmkit: error: bad.toml: optim.lr: must be > 0, got -1.0", line


@pytest.mark.parametrize("command", ["spec check", "train"])
def test_build_time_refusals_of_a_set_value_are_attributed_to_the_set(command: str, tmp_path: Path) -> None:
    """The memory checks run when the pipeline is built, after the spec loaded: still the --set's fault."""
    (tmp_path / "ok.toml").write_text(GOOD)
    cases = {"model.width=1000000000": "model: ", "train.batch_size=100000000000": "train.batch_size: "}
    for override, where in cases.items():
        out = ["--out", "run"] if command == "train" else []
        line = run_cli(*command.split(), "ok.toml", "--set", override, *out, cwd=tmp_path).error_line()
        assert line.startswith(f"fmmkit: error: --set {override}: {where}") and "need" in line, line
    assert not (tmp_path / "run").exists(), "a refused train created its run directory"


def test_a_spec_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    line = run_cli("spec", "check", "specs", cwd=tmp_path).error_line()
    assert line == "fmmkit: error: specs: is a directory, not a spec file; give the path of a .toml file", line
