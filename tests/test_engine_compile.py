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


def test_the_gap_curriculum_compiles_once_and_matches_eager() -> None:
    """The curriculum's factor is a tensor the loss reads (``begin_step``), not a Python step inside the trace: one
    graph serves the warm-up and after it (a Python step made three, ~20 s each on the main job), and each step's
    loss equals the eager loss from the same random state."""
    import torch

    from fmmkit.core import Batch, FlowMap
    from fmmkit.interpolants.linear import LinearInterpolant
    from fmmkit.losses.base import SelfDistillationConfig
    from fmmkit.losses.lagrangian_self_distillation import LagrangianSelfDistillation
    from fmmkit.losses.times import DiagonalHeavyTimes
    from fmmkit.nets.mlp import MLP, MLPConfig

    times = DiagonalHeavyTimes(diagonal_fraction=0.5, gap_warmup_steps=4)
    loss = LagrangianSelfDistillation(SelfDistillationConfig(times=times), LinearInterpolant(LinearInterpolant.Config()))
    model = FlowMap(MLP(MLPConfig(width=16, depth=2, time_embedding="identity"), (2,)))
    graphs: list[object] = []

    def count_graphs(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return gm.forward

    def compute(x1: torch.Tensor, step: int) -> torch.Tensor:
        return loss(model, Batch(x1), step=step).loss

    compiled = torch.compile(compute, backend=count_graphs, fullgraph=True)
    x1 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    for step in (0, 1, 3, 4, 9):
        torch.manual_seed(step)
        eager = compute(x1, step)
        loss.begin_step(step)
        torch.manual_seed(step)
        traced = compiled(x1, step)
        assert torch.allclose(traced, eager, rtol=1e-6, atol=0), (step, float(traced), float(eager))
    assert len(graphs) == 1
