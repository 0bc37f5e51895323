"""Issue 11 through the spec, the run API, the CLI and eval: data-free specs, variable guidance at
sampling time, the loss's own sampler (consistency models at 1, 2, 4, 8 steps), autoguidance, TrigFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fmmkit
from fmmkit.cli import main
from fmmkit.core.flow_map import TrigFlowMap
from fmmkit.evaluation import evaluate
from fmmkit.losses.guidance import AutoGuided
from fmmkit.runs.run import load_run
from fmmkit.spec import SpecError, load_spec
from fmmkit.spec.build import build_data
from fmmkit.registry import get_registry

pytestmark = pytest.mark.usefixtures("one_thread")

TINY: dict[str, Any] = {
    "model": {"kind": "mlp", "width": 32, "depth": 2, "time_dim": 2},
    "train": {"steps": 20, "batch_size": 128, "device": "cpu", "log_every": 10},
    "checkpoint": {"every": 0}, "log": {"tensorboard": False},
    "eval": {"num_samples": 400, "metrics": ["energy_distance"], "ode": [{"kind": "euler", "steps": 2}]},
    "sample": {"num_pictures": 100},
}
GAUSSIAN_TEACHER = {"kind": "gaussian", "mean": [1.0, -0.5], "std": [0.6, 1.3]}


def train(tmp_path: Path, name: str, **tables: Any) -> Any:
    return load_run(fmmkit.train({**TINY, **tables}, out=tmp_path / name, progress=False, pictures=False))


# ---- data-free specs ------------------------------------------------------------------------------

def test_a_data_free_loss_runs_without_a_data_table(tmp_path: Path) -> None:
    """FreeFlow with no [data]: the prior takes the teacher's shape; the run is scored against the
    teacher's population; the resolved spec keeps data kind "prior"."""
    run = train(tmp_path, "ff", loss={"kind": "freeflow"}, teacher=GAUSSIAN_TEACHER)
    assert run.spec.data.kind == "prior" and "kind = \"prior\"" in (run.path / "spec.toml").read_text()
    assert run.data.holds_data and run.data.shape == (2,)
    rows = evaluate(run)
    assert [r.label for r in rows][:4] == ["flow map, 1 step", "flow map, 2 steps", "flow map, 4 steps", "flow map, 8 steps"]
    prior = build_data(load_spec({"loss": {"kind": "freeflow"}, "teacher": GAUSSIAN_TEACHER}), get_registry())
    batch = prior.sample(8, torch.Generator().manual_seed(0))
    assert not prior.holds_data and torch.equal(batch.x1, torch.zeros(8, 2)) and batch.y is None


def test_a_data_free_run_takes_shape_and_labels_from_a_run_teacher(tmp_path: Path) -> None:
    teacher = train(tmp_path, "teacher", data={"kind": "checkerboard", "labels": True}, loss={"kind": "flow_matching"})
    spec = load_spec({**TINY, "loss": {"kind": "freeflow"}, "teacher": {"run": str(teacher.path)}})
    prior = build_data(spec, get_registry())
    assert prior.shape == (2,) and prior.num_classes == 8
    assert prior.reference().num_classes == 8
    labels = prior.sample(1000, torch.Generator().manual_seed(1)).y
    assert labels is not None and set(labels.tolist()) == set(range(8))


@pytest.mark.parametrize("data", [None, {"kind": "prior", "shape": [2]}])
def test_a_loss_that_needs_data_refuses_a_spec_without_any(data: dict | None) -> None:
    raw: dict[str, Any] = {"loss": {"kind": "lagrangian_self_distillation"}}
    if data is not None:
        raw["data"] = data
    with pytest.raises(SpecError, match=r"^<dict>: data: .* loss 'lagrangian_self_distillation' trains on data: add "
                                         r"\[data\] with kind = one of: .*only data-free losses run without: freeflow") as err:
        load_spec(raw)
    assert len(str(err.value).splitlines()) == 1


def test_cli_refuses_a_spec_without_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "no_data.toml"
    spec.write_text('[loss]\nkind = "meanflow"\n')
    assert main(["spec", "check", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data: missing table [data], but loss 'meanflow' trains on data" in err[0]


# ---- variable guidance at sampling time -------------------------------------------------------------

def test_one_model_samples_at_any_guidance_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path, "vg", data={"kind": "checkerboard", "labels": True},
                loss={"kind": "lagrangian_self_distillation", "guidance": {"scale": [1.0, 3.0], "label_dropout": 0.1}})
    assert run.guidance_range == [1.0, 3.0] and run.model.backbone.guidance is not None
    with torch.no_grad():
        for p in run.model.backbone.guidance.parameters():  # the zero-initialised output layer, moved a little
            p.add_(0.1)
    labels = torch.arange(8).repeat(4)
    low, high = (run.sample(32, steps=2, seed=0, y=labels, guidance=w) for w in (1.0, 3.0))
    assert float((high - low).abs().max()) > 1e-4
    torch.testing.assert_close(run.sample(32, steps=2, seed=0, y=labels, guidance=1.0), low)
    rows = {r.label for r in evaluate(run)}
    assert {"guidance 1, 1 step", "guidance 2, 8 steps", "guidance 3, 8 steps"} <= rows
    out = tmp_path / "x.npy"
    assert main(["sample", str(run.path), "--num", "16", "--out", str(out), "--guidance", "2.5", "--label", "3"]) == 0
    assert np.load(out).shape == (16, 2)


def test_guidance_at_sampling_needs_a_run_trained_for_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path, "fixed", data={"kind": "checkerboard", "labels": True},
                loss={"kind": "lagrangian_self_distillation", "guidance": {"scale": 2.0}})
    assert run.guidance_range is None and not any(r.label.startswith("guidance") for r in evaluate(run))
    assert main(["sample", str(run.path), "--num", "4", "--out", str(tmp_path / "x.npy"), "--guidance", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not trained with the guidance scale as an input" in err[0]


# ---- samplers from specs, the run API and the CLI ------------------------------------------------

def test_consistency_runs_evaluate_with_the_consistency_sampler(tmp_path: Path) -> None:
    run = train(tmp_path, "ct", data={"kind": "checkerboard"}, loss={"kind": "consistency_training", "warmup_steps": 5})
    assert run.flow_map_sampler == "consistency"
    labels = [r.label for r in evaluate(run)]
    assert labels[:4] == ["consistency, 1 step", "consistency, 2 steps", "consistency, 4 steps", "consistency, 8 steps"]


def test_the_sampler_is_chosen_in_the_spec_and_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = train(tmp_path, "sfm", data={"kind": "checkerboard"}, interpolant={"kind": "linear", "noise": 0.5},
                loss={"kind": "lagrangian_self_distillation"}, sample={"sampler": "stochastic_flow_map", "num_pictures": 100})
    assert evaluate(run)[0].label == "stochastic flow map, 1 step"
    out = tmp_path / "x.npy"
    assert main(["sample", str(run.path), "--num", "8", "--steps", "4", "--out", str(out), "--sampler", "consistency"]) == 0
    assert "(4 NFE each)" in capsys.readouterr().out
    assert main(["sample", str(run.path), "--num", "8", "--out", str(out), "--sampler", "rk4"]) == 2
    assert "an ODE solver; use --solver rk4" in capsys.readouterr().err
    with pytest.raises(SpecError, match=r"sample\.sampler: 'euler' integrates the velocity"):
        load_spec({"data": {"kind": "checkerboard"}, "loss": {"kind": "lagrangian_self_distillation"},
                   "sample": {"sampler": "euler"}})


# ---- autoguidance and TrigFlow --------------------------------------------------------------------

def test_autoguidance_with_a_weaker_run(tmp_path: Path) -> None:
    strong = train(tmp_path, "strong", data={"kind": "checkerboard"}, loss={"kind": "flow_matching"})
    weak = train(tmp_path, "weak", data={"kind": "checkerboard"}, loss={"kind": "flow_matching"},
                 train={**TINY["train"], "steps": 5})
    raw = {**TINY, "data": {"kind": "checkerboard"}, "loss": {"kind": "lagrangian_distillation"},
           "teacher": {"run": str(strong.path), "guide_run": str(weak.path), "guide_weight": 2.0}}
    spec = load_spec(raw)
    assert spec.teacher.config.guide_weight == 2.0
    from fmmkit.training.build import build_pipeline

    pipeline = build_pipeline(spec, device=torch.device("cpu"))
    assert isinstance(pipeline.teacher, AutoGuided)
    x, t = torch.randn(16, 2), torch.rand(16)
    with torch.no_grad():
        want = weak.model.velocity(x, t) + 2.0 * (strong.model.velocity(x, t) - weak.model.velocity(x, t))
        torch.testing.assert_close(pipeline.teacher.velocity(x, t), want)
    with pytest.raises(SpecError, match=r"teacher\.guide_run: no trained run at"):
        load_spec({**raw, "teacher": {"run": str(strong.path), "guide_run": str(tmp_path / "nope")}})
    resolved = fmmkit.spec.loader.spec_to_toml(spec)
    assert "guide_run" in resolved and load_spec(fmmkit.spec.loader.spec_to_dict(spec)).teacher == spec.teacher


def test_trigflow_parameterisation_builds_and_reloads(tmp_path: Path) -> None:
    run = train(tmp_path, "trig", data={"kind": "checkerboard"}, interpolant={"kind": "trig"},
                loss={"kind": "consistency_training", "parameterization": "trigflow", "prior_weighting": True,
                      "times": {"t_max": 0.95}})
    assert isinstance(run.model, TrigFlowMap)
    assert torch.isfinite(run.sample(16, steps=2)).all()
