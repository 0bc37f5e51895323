"""The command line and Python API end to end on tiny budgets: train, sample, eval, spec show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fmmkit
from fmmkit.cli import main
from fmmkit.spec import load_spec, spec_to_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.steps=40", "train.batch_size=128", "model.width=32", "model.depth=2", "sample.num_pictures=300",
        "eval.num_samples=400", 'eval.ode=[{kind="euler", steps=4}, {kind="dopri5", rtol=1e-3, atol=1e-3}]']


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", str(ROOT / "examples/checkerboard_teacher.toml"), "--out", str(out), "--quiet", *sets(*TINY)]) == 0
    return out


@pytest.fixture(scope="module")
def flow_map(teacher: Path) -> Path:
    out = teacher.parent / "lmd"
    args = ["train", str(ROOT / "examples/checkerboard_lmd.toml"), "--out", str(out), "--quiet",
            *sets(*TINY, f'teacher.run="{teacher}"')]
    assert main(args) == 0
    return out


def test_train_writes_a_reproducible_run(teacher: Path) -> None:
    for name in ("spec.toml", "model.safetensors", "metrics.jsonl", "run.json", "samples.png"):
        assert (teacher / name).is_file(), name
    logged = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 40 and np.isfinite(logged[-1]["loss"])
    # the resolved spec alone reproduces the run, bit for bit
    again = fmmkit.train(teacher / "spec.toml", out=teacher.parent / "again", progress=False, pictures=False)
    first, second = load_file(str(teacher / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert spec_to_dict(load_spec(teacher / "spec.toml")) == spec_to_dict(load_spec(again / "spec.toml"))


def test_existing_run_is_not_overwritten(teacher: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (teacher / "model.safetensors").read_bytes()
    code = main(["train", str(ROOT / "examples/checkerboard_teacher.toml"), "--out", str(teacher), *sets(*TINY)])
    assert code == 2 and "a run directory already exists there" in capsys.readouterr().err
    assert (teacher / "model.safetensors").read_bytes() == before


def test_sample_npy_and_png(flow_map: Path, tmp_path: Path) -> None:
    assert main(["sample", str(flow_map), "--steps", "2", "--num", "50", "--out", str(tmp_path / "x.npy")]) == 0
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (50, 2) and np.isfinite(x).all()
    assert main(["sample", str(flow_map), "--steps", "4", "--num", "50", "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_table_and_json(flow_map: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(flow_map), "--num", "300"]) == 0
    table = capsys.readouterr().out
    for label in ("flow map, 1 step", "flow map, 8 steps", "teacher ODE euler(4)", "teacher ODE dopri5"):
        assert label in table
    rows = json.loads((flow_map / "eval.json").read_text())["rows"]
    assert [r["nfe"] for r in rows[:4]] == [1, 2, 4, 8]
    assert set(rows[0]["metrics"]) == {"energy_distance", "sliced_w2", "histogram_kl", "in_support"}
    assert 0 <= rows[0]["metrics"]["in_support"] <= 1
    assert rows[4]["nfe"] == 4 and rows[5]["nfe"] > 6  # dopri5 reports what it used


def test_python_api(flow_map: Path) -> None:
    run = fmmkit.load_run(flow_map)
    x = torch.randn(10, 2)
    assert torch.equal(run.flow_map(x, 0.3, 0.3), x)
    one_step = run.sample(10, steps=1, seed=3)
    assert one_step.shape == (10, 2)
    torch.testing.assert_close(one_step, run.flow_map(run.noise(10, seed=3), 0.0, 1.0))
    assert not torch.allclose(run.sample(10, steps=4, seed=3), one_step)


def test_spec_show_fills_defaults_and_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "show", str(ROOT / "examples/checkerboard_lsd.toml"), "--set", "train.steps=7"]) == 0
    shown = capsys.readouterr().out
    assert "steps = 7" in shown and "diagonal_fraction = 0.6" in shown and "[optim]" in shown and "[[eval.ode]]" in shown
    (tmp_path / "shown.toml").write_text(shown)
    assert spec_to_dict(load_spec(tmp_path / "shown.toml")) == spec_to_dict(
        load_spec(ROOT / "examples/checkerboard_lsd.toml", ["train.steps=7"]))


@pytest.mark.parametrize("name", ["checkerboard_teacher", "checkerboard_lsd"])
def test_example_specs_check(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "check", str(ROOT / f"examples/{name}.toml")]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


@pytest.mark.slow
def test_example_plugin_trains_end_to_end(tmp_path: Path) -> None:
    """The plugin's interpolant, data set and loss train a velocity whose ODE samples lie on the ring."""
    spec = ROOT / "plugins/fmmkit-example/spec.toml"
    out = fmmkit.train(spec, out=tmp_path / "ring", overrides=["train.steps=1200", "train.batch_size=256"],
                       progress=False, pictures=False)
    run = fmmkit.load_run(out)
    assert type(run.interpolant).__name__ == "QuadraticInterpolant"
    assert type(run.data).__name__ == "Ring"
    assert "pseudo_huber" in (out / "metrics.jsonl").read_text()
    radius = run.sample(2000, steps=20, seed=0, solver="midpoint").norm(dim=1)
    noise_radius = run.noise(2000, seed=0).norm(dim=1)
    assert abs(radius.median().item() - 1.5) < 0.15
    assert radius.std().item() < 0.5 * noise_radius.std().item()


def test_a_metric_that_does_not_fit_the_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gaussian3d = tmp_path / "g.npy"
    np.save(gaussian3d, np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    spec = {"data": {"kind": "npy", "path": str(gaussian3d)}, "loss": {"kind": "flow_matching"},
            "model": {"kind": "mlp", "width": 16, "depth": 1}, "train": {"steps": 2, "batch_size": 16},
            "eval": {"ode": [{"kind": "euler", "steps": 2}]}}
    out = fmmkit.train(spec, out=tmp_path / "run", progress=False, pictures=False)
    assert main(["eval", str(out), "--num", "50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval.metrics: metric 'histogram_kl' cannot score this run's data" in err[0]
    assert "--set" not in err[0], "eval takes no --set; the fix is in the run's spec.toml"
