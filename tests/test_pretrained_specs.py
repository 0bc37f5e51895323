"""Converted teachers in specs: the student's interpolant derived from the teacher (another one refused),
``[model] init_from``, and every bad input a one-line CLI error naming the spec file, key and fix (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from images_helpers import TINY_UNET_TABLE
from pretrained_helpers import save_unet_folder

from fmmkit.cli import main
from fmmkit.spec import SpecError, load_spec, spec_to_toml
from fmmkit.spec.toml_writer import dumps
from fmmkit.training.build import build_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

BASE: dict[str, Any] = {"data": {"kind": "digits"}, "loss": {"kind": "lagrangian_distillation"},
                        "model": {**TINY_UNET_TABLE, "dropout": 0.0}}
VP_MODULE = {"kind": "torch_module", "factory": "pretrained_helpers:second_time_conv", "prediction": "epsilon",
             "process": "vp", "schedule": "cosine"}


def test_the_students_interpolant_comes_from_the_teachers_process(tmp_path: Path) -> None:
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    assert load_spec({**BASE, "teacher": VP_MODULE}).interpolant.kind == "trig"
    linear = {**VP_MODULE, "prediction": "velocity", "process": "linear", "time_direction": "noise_at_1"}
    del linear["schedule"]
    assert load_spec({**BASE, "teacher": linear}).interpolant.kind == "linear"
    ddpm = save_unet_folder(tmp_path / "ddpm", DDPMScheduler())
    flow = save_unet_folder(tmp_path / "flow", FlowMatchEulerDiscreteScheduler())
    assert load_spec({**BASE, "teacher": {"kind": "diffusers", "path": str(ddpm)}}).interpolant.kind == "trig"
    assert load_spec({**BASE, "teacher": {"kind": "diffusers", "path": str(flow)}}).interpolant.kind == "linear"
    spec = load_spec({**BASE, "teacher": VP_MODULE, "interpolant": {"kind": "trig"}})  # naming the right one is fine
    assert load_spec(spec_to_toml(spec) and _toml(spec_to_toml(spec))).interpolant.kind == "trig"
    for wrong in ({"kind": "linear"}, {"kind": "trig", "noise": 0.1}):
        with pytest.raises(SpecError) as err:
            load_spec({**BASE, "teacher": VP_MODULE, "interpolant": wrong})
        assert str(err.value) == ("<dict>: interpolant.kind: the torch_module teacher's process is fmmkit's 'trig' "
                                  "interpolant (noise = 0), and the student must train on its marginals; "
                                  "set kind = \"trig\" or remove [interpolant]")


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def test_init_from_the_teacher_through_the_spec_starts_at_the_teacher(tmp_path: Path) -> None:
    import fmmkit

    teacher_run = tmp_path / "teacher"
    threads = torch.get_num_threads()
    fmmkit.train({**BASE, "loss": {"kind": "flow_matching"}, "train": {"steps": 3, "batch_size": 8, "threads": 1}},
                 out=teacher_run, progress=False, pictures=False)
    torch.set_num_threads(threads)
    spec = load_spec({**BASE, "model": {"init_from": "teacher"}, "teacher": {"run": str(teacher_run)}})
    assert spec.init_from == "teacher" and spec.model.kind == "unet"  # the teacher run's architecture
    assert 'init_from = "teacher"' in spec_to_toml(spec)
    pipeline = build_pipeline(spec)
    x, s, t = torch.randn(4, 1, 8, 8), torch.rand(4), torch.rand(4)
    with torch.no_grad():
        assert torch.equal(pipeline.model.average_velocity(x, s, t), pipeline.teacher.velocity(x, t))
    # a run directory and a safetensors file work too; both load into the second-time form
    for source in (str(teacher_run), str(teacher_run / "model.safetensors")):
        other = build_pipeline(load_spec({**BASE, "model": {**BASE["model"], "init_from": source},
                                          "teacher": {"run": str(teacher_run)}}))
        with torch.no_grad():
            assert torch.equal(other.model.average_velocity(x, s, t), pipeline.teacher.velocity(x, t))


def cli_error(tmp_path: Path, spec: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(dumps(spec))
    assert main(["spec", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith(f"fmmkit: error: {path}: "), err
    return err.removeprefix(f"fmmkit: error: {path}: ")


def test_bad_inputs_are_one_line_cli_errors_naming_the_file_key_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def teacher(**keys: Any) -> dict[str, Any]:
        return {**BASE, "teacher": {**VP_MODULE, **keys}}

    assert cli_error(tmp_path, teacher(factory="not_installed_pkg.nets:build"), capsys).startswith(
        "teacher.factory: cannot import 'not_installed_pkg.nets'")
    pickle = tmp_path / "weights.ckpt"
    torch.save({"w": torch.zeros(1)}, pickle)
    assert "set allow_pickle = true" in cli_error(tmp_path, teacher(weights=str(pickle)), capsys)
    assert cli_error(tmp_path, teacher(factory="pretrained_helpers:time_conv", kwargs={"double_output": True}),
                     capsys).startswith("teacher.prediction: the module returns (2, 2, 8, 8)")
    assert cli_error(tmp_path, {**BASE, "teacher": {"kind": "diffusers", "path": str(tmp_path / "missing")}},
                     capsys).startswith("teacher.path: no folder")
    assert cli_error(tmp_path, {**BASE, "model": {**BASE["model"], "init_from": "teacher"}}, capsys).startswith(
        "model.init_from: \"teacher\" needs a [teacher] table")
    assert cli_error(tmp_path, {**teacher(), "model": {"kind": "mlp", "init_from": "teacher"}}, capsys).startswith(
        "model.init_from: the weights of the teacher do not fit the student's model")
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)
    assert cli_error(tmp_path, {**BASE, "teacher": {"kind": "diffusers", "path": str(tmp_path)}}, capsys) == (
        "teacher.kind: 'diffusers': needs the diffusers package, an optional extra of fmmkit: pip install 'fmmkit[diffusers]'")


@pytest.mark.parametrize("name", ["digits_torch_module_lmd", "digits_diffusers_lmd", "digits_latent_teacher",
                                  "digits_latent_lmd"])
def test_the_example_specs_parse_and_are_copied_to_examples(name: str) -> None:
    from fmmkit.spec.loader import read_toml, structure_spec

    root = Path(__file__).resolve().parents[1]
    path = root / "fmmkit" / "specs" / f"{name}.toml"
    link = root / "examples" / f"{name}.toml"
    assert link.read_bytes() == path.read_bytes()
    spec = structure_spec(read_toml(path), str(path), check_paths=False)
    assert spec.teacher is not None or name == "digits_latent_teacher"
    assert spec.loss.kind == ("flow_matching" if name == "digits_latent_teacher" else "lagrangian_distillation")
