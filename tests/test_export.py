"""``fmmkit export``: a self-describing folder that load_run reads, a torch_module teacher, and a diffusers
pipeline that samples what fmmkit samples from the same noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from images_helpers import TINY_UNET_TABLE

import fmmkit
from fmmkit.core import BuildContext
from fmmkit.export.folder import export_run
from fmmkit.runs import load_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits flow map (LSD, 30 steps, EMA) with an eval.json."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    spec = {"name": "digits_tiny", "data": {"kind": "digits", "labels": True}, "model": {**TINY_UNET_TABLE, "dropout": 0.0},
            "loss": {"kind": "lagrangian_self_distillation"}, "ema": {"decays": [0.9]},
            "train": {"steps": 30, "batch_size": 16, "seed": 0, "threads": 1, "log_every": 10},
            "sample": {"num_pictures": 16}, "eval": {"num_samples": 64, "metrics": ["energy_distance"],
                                                     "ode": [{"kind": "euler", "steps": 2}]}}
    threads = torch.get_num_threads()
    fmmkit.train(spec, out=out, progress=False, pictures=False)
    torch.set_num_threads(threads)
    from fmmkit.evaluation import evaluate

    evaluate(out)
    return out


def test_the_export_folder_describes_itself_and_loads_as_a_run(digits_run: Path, tmp_path: Path) -> None:
    out = export_run(digits_run, tmp_path / "export", command="fmmkit train spec.toml")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "spec.toml"]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "fmmkit-flow-map" and config["model"]["kind"] == "unet"
    assert config["data"] == {"kind": "digits", "shape": [1, 8, 8], "num_classes": 10}
    assert config["interpolant"]["kind"] == "linear" and "noise x0 ~ N(0, I) at t = 0" in config["time_convention"]
    assert config["weights"]["label"] == "ema-0.9" and config["spec"]["loss"]["kind"] == "lagrangian_self_distillation"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fmmkit\n") and "| flow map, 1 step | 1 |" in card
    assert "fmmkit train spec.toml" in card and "[teacher]" in card  # the torch_module snippet
    run, exported = load_run(digits_run), load_run(out)
    assert exported.weights == "raw" and run.weights == "ema-0.9"  # the export's only weights are the EMA
    y = torch.arange(8) % 10
    assert torch.equal(exported.sample(8, steps=2, seed=3, y=y), run.sample(8, steps=2, seed=3, y=y))
    with pytest.raises(fmmkit.core.errors.UserError, match="exists and is not empty"):
        export_run(digits_run, out)


def test_an_export_is_a_torch_module_teacher_with_the_same_velocity(digits_run: Path, tmp_path: Path) -> None:
    from fmmkit.teachers.torch_module import TorchModuleTeacher, TorchModuleTeacherConfig

    out = export_run(digits_run, tmp_path / "export")
    snippet = json.loads((out / "config.json").read_text())["as_torch_module_teacher"]
    fields = {k: (v.replace("THIS_FOLDER", str(out)) if isinstance(v, str) else v) for k, v in snippet.items() if k != "kind"}
    fields["kwargs"] = {"path": str(out)}
    teacher = TorchModuleTeacher.build(TorchModuleTeacherConfig(**fields), BuildContext(data_shape=(1, 8, 8), num_classes=10))
    run = load_run(digits_run)
    x, t, y = torch.randn(6, 1, 8, 8), torch.rand(6), torch.tensor([0, 1, 2, 10, 4, 10])
    assert torch.equal(teacher.velocity(x, t, y), run.velocity(x, t, y))


def test_the_diffusers_pipeline_samples_what_fmmkit_samples(digits_run: Path, tmp_path: Path) -> None:
    from fmmkit.export.diffusers_pipeline import FmmkitFlowMapPipeline

    out = export_run(digits_run, tmp_path / "pipe", format="diffusers")
    assert {"model_index.json", "flow_map", "scheduler", "README.md"} <= {p.name for p in out.iterdir()}
    index = json.loads((out / "model_index.json").read_text())
    assert index["flow_map"] == ["fmmkit.export.diffusers_pipeline", "FmmkitFlowMapModel"]
    assert index["scheduler"] == ["diffusers", "FlowMapEulerDiscreteScheduler"]
    pipe = FmmkitFlowMapPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    run = load_run(digits_run)
    noise, y = run.noise(16, seed=5), torch.arange(16) % 10
    for steps in (1, 2, 4, 8):
        ours = run.sample_result(16, steps=steps, seed=5, y=y).x
        theirs = pipe(batch_size=16, num_inference_steps=steps, latents=noise, class_labels=y, output_type="pt").images
        assert float((ours - theirs).abs().max()) < 1e-5, steps
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), class_labels=[1, 2]).images
    assert len(images) == 2 and images[0].size == (8, 8)


def test_every_command_takes_an_export_folder(digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fmmkit.cli import main

    out = tmp_path / "export"
    assert main(["export", str(digits_run), "--out", str(out)]) == 0
    assert main(["export", str(digits_run), "--out", str(out)]) == 2
    assert "exists and is not empty; choose another or pass --overwrite" in capsys.readouterr().err
    assert main(["sample", str(out), "--steps", "2", "--num", "8", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["eval", str(out), "--num", "32"]) == 0 and (out / "eval.json").is_file()
    assert main(["verify", str(out), "--num", "16", "--search-examples", "4"]) in (0, 1)  # 1: a law over threshold
    assert (out / "verify.json").is_file()
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmmkit: error: ") and err.count("\n") == 0
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "not a trained run" in capsys.readouterr().err
