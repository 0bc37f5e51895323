"""Every registered loss trains through the engine and resumes bit-identically from a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from engine_helpers import assert_same_weights
from fmmkit.registry import get_registry
from fmmkit.training.checkpoint import list_checkpoints
from fmmkit.training.loop import resume_run, train

pytestmark = pytest.mark.slow


def small(loss: str, steps: int) -> dict[str, Any]:
    return {"name": loss, "data": {"kind": "eight_gaussians"},
            "model": {"kind": "mlp", "width": 16, "depth": 2, "time_dim": 4},
            "loss": {"kind": loss}, "train": {"steps": steps, "batch_size": 32, "device": "cpu", "micro_batches": 2},
            "checkpoint": {"every": 2}, "ema": {"decays": [0.9]}, "log": {"tensorboard": False}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    return train(small("flow_matching", 2), out=out, progress=False, pictures=False)


@pytest.mark.parametrize("loss", sorted(get_registry().names("loss")))
def test_loss_resumes_bit_identically(loss: str, teacher: Path, tmp_path: Path) -> None:
    spec = small(loss, 3)
    if get_registry().get("loss", loss).component.requires_teacher:
        spec["teacher"] = {"run": str(teacher)}
    out = train(spec, out=tmp_path / "run", progress=False, pictures=False)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(list_checkpoints(copy)[-1][1])  # back to the step-2 checkpoint
    resume_run(copy, progress=False, pictures=False)
    for name in ("model.safetensors", "ema-0.9.safetensors"):
        assert_same_weights(copy / name, out / name)
