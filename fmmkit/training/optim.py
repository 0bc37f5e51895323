"""Optimisers and learning-rate schedules named in the spec's ``[optim]`` table, and gradient clipping."""

from __future__ import annotations

import math
from typing import Any

import torch

from fmmkit.spec.schema import OptimConfig


def make_optimizer(params: list[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or RAdam with the spec's learning rate, betas, epsilon and weight decay."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[config.name]
    return cls(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)


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
