"""Shared pieces of the training-engine tests: a tiny spec, weight comparison, loss wrappers."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from fmmkit.core import LossOutput
from fmmkit.training import loop as trainer


def tiny_spec(**sections: dict[str, Any]) -> dict[str, Any]:
    """A 2D LSD run small enough to train in well under a second per few steps."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "data": {"kind": "checkerboard"},
        "model": {"kind": "mlp", "width": 16, "depth": 2, "time_dim": 4, "zero_init_output": False},
        "loss": {"kind": "lagrangian_self_distillation"},
        "optim": {"lr": 1e-2, "schedule": "cosine", "warmup_steps": 2, "grad_clip": 1.0},
        "train": {"steps": 8, "batch_size": 32, "log_every": 1, "seed": 3, "device": "cpu"},
        "checkpoint": {"every": 4, "keep": 5},
        "ema": {"decays": [0.9], "half_lives": [200.0]},
        "log": {"tensorboard": False},
        "sample": {"steps": [1, 2], "num_pictures": 256, "picture_solver_steps": 4},
    }
    for name, table in sections.items():
        spec[name] = {**spec.get(name, {}), **table}
    return spec


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file."""
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    """Equal tensors in two weight files: bit for bit (atol = 0) or within atol."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), f"{a} and {b} hold different tensors"
    for key in wa:
        if atol == 0.0:
            assert torch.equal(wa[key], wb[key]), f"{key} differs between {a} and {b}"
        else:
            err = (wa[key] - wb[key]).abs().max().item()
            assert err <= atol, f"{key} differs by {err:.3g} between {a} and {b}"


def records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The JSON records of a run's metrics.jsonl (or events.jsonl)."""
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def events(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's events.jsonl."""
    return records(run_dir, "events.jsonl")


def all_finite(path: Path) -> bool:
    """Every tensor of a weight file is finite."""
    return all(bool(torch.isfinite(t).all()) for t in weights(path).values())


class HookedLoss:
    """A loss wrapper calling ``hook(step, output) -> output`` after each call of the wrapped loss."""

    def __init__(self, inner: Any, hook: Callable[[int, LossOutput], LossOutput]) -> None:
        self.inner = inner
        self.hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, model: Any, batch: Any, *, teacher: Any = None, step: int = 0) -> LossOutput:
        return self.hook(step, self.inner(model, batch, teacher=teacher, step=step))


def patch_loss(monkeypatch: Any, hook: Callable[[int, LossOutput], LossOutput]) -> None:
    """Make the trainer wrap every pipeline's loss in :class:`HookedLoss` with ``hook``."""
    build = trainer.build_pipeline

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        pipeline = build(*args, **kwargs)
        pipeline.loss = HookedLoss(pipeline.loss, hook)
        return pipeline

    monkeypatch.setattr(trainer, "build_pipeline", wrapped)


def nan_term(output: LossOutput, term: str) -> LossOutput:
    """The output with its loss and the named term made NaN."""
    metrics = copy.copy(output.metrics)
    metrics[term] = torch.tensor(math.nan)
    return LossOutput(output.loss + math.nan, metrics)


class PlainSelfDistillation:
    """A minimal LSD-style loss with a JVP, written without attrs objects so torch.compile traces it:
    |v_{t,t}(I_t) - dI_t/dt|^2 + |d/dt X_{s,t}(I_s) - sg(v_{t,t}(X_{s,t}(I_s)))|^2."""

    def __init__(self, interpolant: Any) -> None:
        self.interpolant = interpolant

    def __call__(self, model: Any, batch: Any, *, teacher: Any = None, step: int = 0) -> LossOutput:
        from fmmkit.core.derivatives import time_derivative

        n = len(batch)
        t = torch.rand(n)
        path = self.interpolant.draw(batch.x1, t)
        diagonal = (model.velocity(path.x_t, t) - path.dx_t).pow(2).mean()
        s, u = torch.rand(n), torch.rand(n)
        s, t2 = torch.minimum(s, u), torch.maximum(s, u)
        x_s = self.interpolant.draw(batch.x1, s).x_t
        x_st, dx_st = time_derivative(model, x_s, s, t2)
        with torch.no_grad():
            target = model.velocity(x_st, t2)
        lagrangian = (dx_st - target).pow(2).mean()
        return LossOutput(diagonal + lagrangian, {"diagonal": diagonal.detach(), "lagrangian": lagrangian.detach()})

    def begin_step(self, step: int) -> None:
        pass

    def on_step_end(self, model: Any, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def replace_loss(monkeypatch: Any, factory: Callable[[Any], Any]) -> None:
    """Make the trainer use ``factory(interpolant)`` as every pipeline's loss."""
    build = trainer.build_pipeline

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        pipeline = build(*args, **kwargs)
        pipeline.loss = factory(pipeline.interpolant)
        return pipeline

    monkeypatch.setattr(trainer, "build_pipeline", wrapped)
