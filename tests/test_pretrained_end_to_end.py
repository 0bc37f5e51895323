"""End to end: a digits teacher exported and re-imported as a torch_module teacher distills to the same flow map
as the run itself; a latent-space run trains, samples decoded digits and scores them; a student starts at its
teacher through the spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from images_helpers import TINY_UNET_TABLE, digits_cache  # noqa: F401  (fixture)

import fmmkit
from fmmkit.evaluation import evaluate
from fmmkit.export.folder import export_run

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

UNET = {**TINY_UNET_TABLE, "dropout": 0.0}
COMMON: dict[str, Any] = {
    "optim": {"lr": 2e-3}, "sample": {"num_pictures": 16},
    "eval": {"num_samples": 300, "metrics": ["digits_fd"], "ode": [{"kind": "euler", "steps": 4}]},
}


def train(spec: dict[str, Any], out: Path, steps: int) -> Path:
    threads = torch.get_num_threads()
    spec = {**COMMON, **spec, "train": {"steps": steps, "batch_size": 32, "seed": 0, "threads": 1, "log_every": 10}}
    fmmkit.train(spec, out=out, progress=False)
    torch.set_num_threads(threads)
    return out


def fd_rows(run: Path) -> dict[str, float]:
    return {row["label"]: row["metrics"]["digits_fd"] for row in (r.__dict__ for r in evaluate(run))}


def test_an_exported_teacher_reimported_as_a_torch_module_distills_to_the_same_map(tmp_path: Path, digits_cache: Path) -> None:  # noqa: F811
    teacher = train({"data": {"kind": "digits"}, "model": UNET, "loss": {"kind": "flow_matching"}}, tmp_path / "teacher", 40)
    exported = export_run(teacher, tmp_path / "export")
    student = {"data": {"kind": "digits"}, "model": UNET, "loss": {"kind": "lagrangian_distillation", "semigradient": True}}
    direct = train({**student, "teacher": {"run": str(teacher)}}, tmp_path / "direct", 20)
    module_teacher = {"kind": "torch_module", "factory": "fmmkit.export.network:exported_network",
                      "kwargs": {"path": str(exported)}, "weights": str(exported / "model.safetensors"),
                      "prediction": "velocity", "process": "linear", "time_direction": "noise_at_0"}
    via_module = train({**student, "teacher": module_teacher}, tmp_path / "via_module", 20)
    spec_text = (via_module / "spec.toml").read_text()
    assert 'kind = "linear"' in spec_text.split("[interpolant]")[1].split("[")[0]  # derived from the teacher's process
    from safetensors.torch import load_file

    a, b = load_file(str(direct / "model.safetensors")), load_file(str(via_module / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same training, bit for bit
    described = json.loads((export_run(via_module, tmp_path / "student_export") / "config.json").read_text())["teacher"]
    assert described["kind"] == "torch_module" and described["conversion"]["process"] == "linear"
    assert described["conversion"]["prediction"] == "velocity" and described["conversion"]["interpolant"] == "linear"
    fd_direct, fd_module = fd_rows(direct), fd_rows(via_module)
    for label in ("flow map, 1 step", "flow map, 2 steps", "flow map, 4 steps", "flow map, 8 steps"):
        assert abs(fd_module[label] - fd_direct[label]) <= 0.02 * fd_direct[label], label


def test_a_latent_run_trains_samples_decoded_digits_and_scores_them(tmp_path: Path, digits_cache: Path) -> None:  # noqa: F811
    from pretrained_helpers import save_vae_folder

    from fmmkit.cli import main
    from fmmkit.runs import load_run

    vae = save_vae_folder(tmp_path / "vae")
    data = {"kind": "latent", "vae": str(vae), "cache": str(tmp_path / "latents"), "source": {"kind": "digits"}}
    model = {**UNET, "attention_resolutions": [2]}
    run = train({"data": data, "interpolant": {"kind": "linear"}, "model": model, "loss": {"kind": "flow_matching"}},
                tmp_path / "latent", 10)
    assert (tmp_path / "latents" / "manifest.json").is_file() and (run / "samples.png").is_file()
    loaded = load_run(run)
    assert tuple(loaded.data.shape) == (4, 4, 4) and loaded.data.decode(loaded.sample(3)).shape == (3, 1, 8, 8)
    fds = fd_rows(run)  # digits_fd of the decoded samples against the digits themselves
    assert list(fds) == ["ODE euler(4)"] and fds["ODE euler(4)"] > 0
    assert json.loads((run / "eval.json").read_text())["rows"][0]["metrics"]["digits_fd"] == fds["ODE euler(4)"]
    assert main(["sample", str(run), "--steps", "2", "--num", "8", "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["sample", str(run), "--steps", "2", "--num", "8", "--out", str(tmp_path / "x.npy")]) == 0
    import numpy as np

    assert np.load(tmp_path / "x.npy").shape == (8, 1, 8, 8)  # decoded digits, not latents
