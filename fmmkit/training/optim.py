"""Optimisers and learning-rate schedules named in the spec's ``[optim]`` table, and gradient clipping."""

from __future__ import annotations

import math
from typing import Any

import torch

from fmmkit.core.errors import UserError
from fmmkit.spec.schema import FUSED_OPTIMIZERS, OptimConfig


#: devices whose parameters torch's fused Adam / AdamW kernels update
FUSED_DEVICES = ("cpu", "cuda")


def fused_applies(params: list[torch.nn.Parameter], config: OptimConfig) -> bool:
    """Whether a fused update can run: Adam or AdamW, every parameter a plain (not sharded) floating-point
    tensor on a CPU or CUDA device."""
    return config.name in FUSED_OPTIMIZERS and all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def make_optimizer(params: list[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or RAdam with the spec's learning rate, betas, epsilon and weight decay, updating the
    parameters as ``optim.implementation`` says ("auto": fused where :func:`fused_applies`; on the
    checkerboard specs' 4 x 256 MLP one fused Adam step takes 0.28 ms against 1.49 ms one parameter at a time,
    benchmarks/RESULTS.md). The three implementations agree to float rounding, and a resumed run
    builds the same one, so it continues exactly."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[config.name]
    choice = config.implementation
    kind: dict[str, bool] = {}
    if choice in ("auto", "fused"):
        if fused_applies(params, config):
            kind = {"fused": True}
        elif choice == "fused":
            raise UserError(f'optim.implementation = "fused" needs every parameter as a floating-point tensor on '
                            f'{" or ".join(FUSED_DEVICES)} (not sharded); use "auto" or "foreach"')
    else:
        kind = {"foreach": choice == "foreach"}
    return cls(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay,
               **kind)


def lr_factor(step: int, total: int, config: OptimConfig) -> float:
    """Multiplier of the base rate at ``step``: linear warm-up, then constant, cosine or linear decay
    from 1 down to ``min_lr_factor`` at ``total``."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant" or total <= config.warmup_steps:
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress
    return config.min_lr_factor + (1.0 - config.min_lr_factor) * shape


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, config: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config))


def loss_parameters(loss: Any) -> list[torch.nn.Parameter]:
    """The trainable parameters a loss carries (a learned weighting, say); [] for a plain loss."""
    params = getattr(loss, "parameters", None)
    return [p for p in params() if p.requires_grad] if callable(params) else []
