"""The compiled step: one micro-batch's loss as a function torch.compile can trace (``[compile]``).

``compile.enabled = "auto"`` (the default) wraps the step in :class:`~fmmkit.training.autocompile.AutoCompile`,
which compiles it only when that pays on this run; ``true`` compiles it from the first step, ``false`` never.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fmmkit.core import Batch, FlowMap, Loss
from fmmkit.spec import Spec
from fmmkit.training.autocompile import AutoCompile
from fmmkit.training.errors import TrainingError

Compute = Callable[[Tensor, "Tensor | None", int], "tuple[Tensor, dict[str, Any]]"]


def compiled_step(compute: Compute, spec: Spec) -> Compute:
    """``compute`` under torch.compile with the spec's backend, mode and fullgraph; a trace failure is a
    one-line TrainingError."""
    options = {"mode": spec.compile.mode} if spec.compile.backend == "inductor" else {}
    compiled = torch.compile(compute, backend=spec.compile.backend, fullgraph=spec.compile.fullgraph, **options)

    def run(x1: Tensor, y: Tensor | None, step: int) -> tuple[Tensor, dict[str, Any]]:
        torch._dynamo.mark_static(x1)  # micro-batches keep their size: no dynamic-shape recompiles
        try:
            return compiled(x1, y, step)
        except torch._dynamo.exc.TorchDynamoException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TrainingError(f"step {step + 1}: torch.compile could not compile loss '{spec.loss.kind}' "
                                f"({type(exc).__name__}: {first[:300]}); set compile.enabled = false") from exc

    run.compiled = compiled  # type: ignore[attr-defined]
    return run


def step_parameter_tensors(model: torch.nn.Module, loss: Any, teacher: Any) -> int:
    """Parameter tensors of what a step runs: the model, the loss's own parameters and held copy, the teacher
    (a module, or the modules among its attributes)."""

    def count(module: Any) -> int:
        return sum(1 for _ in module.parameters()) if isinstance(module, torch.nn.Module) else 0

    total = count(model)
    if callable(getattr(loss, "parameters", None)):
        total += sum(1 for _ in loss.parameters())
    total += count(getattr(getattr(loss, "held", None), "model", None))
    if isinstance(teacher, torch.nn.Module):
        total += count(teacher)
    elif teacher is not None:
        total += sum(count(value) for value in vars(teacher).values()) if hasattr(teacher, "__dict__") else 0
    return total


def make_compute(model: FlowMap, loss: Loss, teacher: Any, spec: Spec, *, steps_left: int | None = None,
                 calls_per_step: int = 1, device_type: str = "cpu",
                 on_event: Callable[..., None] | None = None) -> Any:
    """fn(x1, y, step) -> (loss, terms) for one micro-batch: eager (``compile.enabled = false``),
    torch.compile'd (``true``) or an :class:`AutoCompile` choosing between them (``"auto"``, over
    ``steps_left`` optimiser steps of ``calls_per_step`` micro-batches; decisions go to ``on_event``)."""

    def compute(x1: Tensor, y: Tensor | None, step: int) -> tuple[Tensor, dict[str, Any]]:
        output = loss(model, Batch(x1, y), teacher=teacher, step=step)
        return output.loss, dict(output.metrics)

    enabled = spec.compile.enabled
    if enabled is False:
        return compute
    if enabled is True:
        return compiled_step(compute, spec)
    return AutoCompile(compute, lambda eager: compiled_step(eager, spec),
                       total_steps=spec.train.steps if steps_left is None else steps_left,
                       calls_per_step=calls_per_step, device_type=device_type,
                       takes_jvp=bool(getattr(loss, "needs_forward_ad", False)), on_event=on_event,
                       parameter_tensors=step_parameter_tensors(model, loss, teacher))
