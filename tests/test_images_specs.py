"""The image example specs: spec check without data, the digits teacher and flow map end to end
(grids and digits_fd rows), and the CIFAR-10 UNet / DiT-B/2 specs for a few CPU steps at a reduced
size on a fake CIFAR-like image folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from images_helpers import TINY_UNET_TABLE, digits_cache, make_image_folder  # noqa: F401

from fmmkit.cli import main
from fmmkit.evaluation import evaluate
from fmmkit.training.loop import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CIFAR_SPECS = ["cifar10_unet_lsd.toml", "cifar10_dit_b2_lsd.toml"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(overrides: dict[str, object]) -> list[str]:
    """--set strings from a flat {key.path: value} dict (values as TOML)."""
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def shrink_unet() -> dict[str, object]:
    return {f"model.{k}": v for k, v in TINY_UNET_TABLE.items() if k != "kind"}


QUICK = {"train.steps": 2, "train.batch_size": 8, "train.threads": 1, "train.device": "cpu", "train.log_every": 1,
         "sample.num_pictures": 4, "sample.picture_solver_steps": 2}


@pytest.mark.parametrize("name", ["digits_teacher.toml", *CIFAR_SPECS])
def test_spec_check_accepts_the_examples_without_data(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The CIFAR-10 root does not exist here: its pixels are read on the first draw, not at build."""
    assert not (Path("data/cifar10") / "cifar-10-batches-py").exists()
    assert main(["spec", "check", str(EXAMPLES / name)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


@pytest.mark.slow
def test_digits_teacher_then_flow_map_end_to_end(tmp_path: Path, digits_cache: Path) -> None:
    quick = {**QUICK, **shrink_unet(), "eval.num_samples": 64}
    teacher = train(EXAMPLES / "digits_teacher.toml", out=tmp_path / "teacher", overrides=tiny(quick), progress=False)
    assert (teacher / "samples.png").is_file() and (teacher / "samples_data.png").is_file()
    assert (teacher / "samples_ode_midpoint_2.png").is_file()

    student = train(EXAMPLES / "digits_lmd.toml", out=tmp_path / "student", progress=False,
                    overrides=[*tiny(quick), f"teacher.run={json.dumps(str(teacher))}"])
    for k in (1, 2, 4, 8):
        assert (student / f"samples_flow_map_{k}_step{'s' if k > 1 else ''}.png").is_file()
    rows = evaluate(student, num_samples=64)
    labels = [r.label for r in rows]
    assert labels[:4] == ["flow map, 1 step", "flow map, 2 steps", "flow map, 4 steps", "flow map, 8 steps"]
    assert any(label.startswith("teacher ODE") for label in labels)
    assert all(math.isfinite(r.metrics["digits_fd"]) and r.metrics["digits_fd"] >= 0 for r in rows)
    assert (student / "eval.json").is_file() and any(digits_cache.glob("digits_classifier_*.safetensors"))

    from fmmkit.cli import main

    assert main(["sample", str(student), "--steps", "2", "--num", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s_flow_map_2_steps.png").is_file()  # an image grid per panel, not a scatter plot


def test_digits_flow_map_spec_names_its_missing_teacher(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["spec", "check", str(EXAMPLES / "digits_lmd.toml"),
                 "--set", f"teacher.run={json.dumps(str(tmp_path / 'none'))}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher.run" in err[0] and "train the teacher first" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR_SPECS)
def test_cifar_specs_run_a_few_cpu_steps_at_reduced_size(name: str, tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "fake_cifar", classes=3, per_class=4, size=(32, 32))
    overrides = {**QUICK, "data.kind": "image_folder", "data.root": str(folder), "data.size": 8}
    if "unet" in name:
        overrides |= {**shrink_unet(), "model.channel_mult": [2, 2, 2], "model.attention_resolutions": [8, 4]}
    else:
        overrides |= {"model.depth": 1, "model.hidden_size": 16, "model.num_heads": 2, "model.patch_size": 2,
                      "model.time_dim": 8}
    run = train(EXAMPLES / name, out=tmp_path / "run", overrides=tiny(overrides), progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {"diagonal", "lagrangian"} <= set(next(r for r in records if "loss" in r))  # LSD's two terms ran
    assert (run / "model.safetensors").is_file() and (run / "samples_flow_map_1_step.png").is_file()
