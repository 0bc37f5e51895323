"""Assemble the components a spec names (through the registry) into a runnable pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fmmkit.core import DataSource, FlowMap, Interpolant, Loss, VelocityField
from fmmkit.core.loss import LossBuildError
from fmmkit.moved import moved_getattr
from fmmkit.registry import Registry, get_registry
from fmmkit.runs import teacher as teachers
from fmmkit.spec import Spec, SpecError
from fmmkit.spec import build as components
from fmmkit.training import distributed as dist

__getattr__ = moved_getattr(__name__)  # build_model, build_teacher, resolve_device moved (fmmkit.moved)


@dataclass
class Pipeline:
    """Everything a training run needs, built from one spec."""

    spec: Spec
    data: DataSource
    interpolant: Interpolant
    model: FlowMap
    loss: Loss
    teacher: VelocityField | None
    device: torch.device
    registry: Registry | None = None


def build_pipeline(spec: Spec, registry: Registry | None = None, device: torch.device | None = None) -> Pipeline:
    """Build data, interpolant, model, loss and teacher; check the loss can run with them."""
    registry = registry or get_registry()
    device = device or dist.resolve_device(spec.train.device)
    data = components.build_data(spec, registry)
    interpolant = components.build_interpolant(spec, registry)
    model = components.build_model(spec, data, registry).to(device)
    teacher = teachers.build_teacher(spec, interpolant, data, registry, device)
    ctx = components.data_context(data, interpolant, teacher)
    loss = registry.build("loss", spec.loss.kind, spec.loss.config, ctx)
    try:
        loss.check_model(model, teacher)
    except LossBuildError as exc:
        raise SpecError([f"{spec.source}: loss: {exc}"]) from None
    if isinstance(loss, torch.nn.Module):  # a loss with parameters or buffers (a learned weighting)
        loss.to(device)
    return Pipeline(spec, data, interpolant, model, loss, teacher, device, registry)
