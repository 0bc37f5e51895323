"""torch.compile of the training step (loss, JVP, backward) trains like eager."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_helpers import PlainSelfDistillation, assert_same_weights, replace_loss, tiny_spec
from fmmkit.training.errors import TrainingError
from fmmkit.training.loop import train


def test_compiled_steps_match_eager_steps(tmp_path: Path, monkeypatch) -> None:
    """Traced by dynamo and AOTAutograd (the JVP and the backward included) but run with eager kernels
    ("aot_eager"), so that the draws and sums match eager; the inductor backend is timed in benchmarks/engine.py."""
    replace_loss(monkeypatch, PlainSelfDistillation)
    spec = tiny_spec(train={"steps": 3}, checkpoint={"every": 0})
    train(spec, out=tmp_path / "eager", progress=False, pictures=False)
    train({**spec, "compile": {"enabled": True, "backend": "aot_eager", "fullgraph": True}}, out=tmp_path / "compiled",
          progress=False, pictures=False)
    for name in ("model.safetensors", "ema-0.9.safetensors"):
        assert_same_weights(tmp_path / "compiled" / name, tmp_path / "eager" / name, atol=1e-5)


def test_a_loss_torch_compile_cannot_trace_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    class Untraceable(PlainSelfDistillation):
        def __call__(self, model, batch, *, teacher=None, step=0):  # noqa: ANN001, ANN204
            import torch

            torch._dynamo.graph_break()
            return super().__call__(model, batch, teacher=teacher, step=step)

    replace_loss(monkeypatch, Untraceable)
    spec = tiny_spec(train={"steps": 1}, compile={"enabled": True, "fullgraph": True})
    with pytest.raises(TrainingError, match=r"step 1: torch.compile could not compile loss .*compile.enabled = false"):
        train(spec, out=tmp_path / "run", progress=False, pictures=False)
