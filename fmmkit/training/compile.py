"""The compiled step: one micro-batch's loss as a function torch.compile can trace (``[compile]``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fmmkit.core import Batch, FlowMap, Loss
from fmmkit.spec import Spec
from fmmkit.training.errors import TrainingError


def make_compute(model: FlowMap, loss: Loss, teacher: Any, spec: Spec) -> Any:
    """fn(x1, y, step) -> (loss, terms) for one micro-batch; torch.compile'd when ``compile.enabled``."""

    def compute(x1: Tensor, y: Tensor | None, step: int) -> tuple[Tensor, dict[str, Any]]:
        output = loss(model, Batch(x1, y), teacher=teacher, step=step)
        return output.loss, dict(output.metrics)

    if not spec.compile.enabled:
        return compute
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
