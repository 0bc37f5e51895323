"""Assemble the components a spec names (through the registry) into a runnable pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fmmkit.core import BuildContext, DataSource, FlowMap, Interpolant, Loss, VelocityField
from fmmkit.core.loss import LossBuildError
from fmmkit.registry import Registry, get_registry
from fmmkit.spec import Spec, SpecError


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


def resolve_device(name: str) -> torch.device:
    """"auto" is CUDA when a GPU is visible, else the CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError([f"train.device: '{name}' asked for but no CUDA device is visible; use \"auto\" or \"cpu\""])
    return device


def build_model(spec: Spec, data: DataSource, registry: Registry) -> FlowMap:
    """The flow map X_{s,t} = x + (t - s) v_{s,t} around the spec's backbone."""
    ctx = BuildContext(data_shape=tuple(data.shape), num_classes=data.num_classes)
    backbone = registry.build("backbone", spec.model.kind, spec.model.config, ctx)
    return FlowMap(backbone)


def build_teacher(spec: Spec, interpolant: Interpolant, data: DataSource, registry: Registry,
                  device: torch.device) -> VelocityField | None:
    """The frozen teacher: a trained run's velocity (eval mode, no gradients) or a registered teacher."""
    if spec.teacher is None:
        return None
    if spec.teacher.run is not None:
        from fmmkit.runs import load_run

        run = load_run(spec.teacher.run, device=device)
        if tuple(run.data.shape) != tuple(data.shape):
            raise SpecError([f"{spec.source}: teacher.run: the teacher was trained on points of shape "
                             f"{tuple(run.data.shape)} but this spec's data has shape {tuple(data.shape)}"])
        return run.frozen_model()
    component = spec.teacher.component
    assert component is not None
    ctx = BuildContext(data_shape=tuple(data.shape), num_classes=data.num_classes, interpolant=interpolant)
    return registry.build("teacher", component.kind, component.config, ctx)


def build_pipeline(spec: Spec, registry: Registry | None = None, device: torch.device | None = None) -> Pipeline:
    """Build data, interpolant, model, loss and teacher; check the loss can run with them."""
    registry = registry or get_registry()
    device = device or resolve_device(spec.train.device)
    data = registry.build("dataset", spec.data.kind, spec.data.config, BuildContext())
    interpolant = registry.build("interpolant", spec.interpolant.kind, spec.interpolant.config, BuildContext())
    model = build_model(spec, data, registry).to(device)
    teacher = build_teacher(spec, interpolant, data, registry, device)
    ctx = BuildContext(data_shape=tuple(data.shape), num_classes=data.num_classes, interpolant=interpolant,
                       teacher=teacher)
    loss = registry.build("loss", spec.loss.kind, spec.loss.config, ctx)
    try:
        loss.check_model(model, teacher)
    except LossBuildError as exc:
        raise SpecError([f"{spec.source}: loss: {exc}"]) from None
    if isinstance(loss, torch.nn.Module):  # a loss with parameters or buffers (a learned weighting)
        loss.to(device)
    return Pipeline(spec, data, interpolant, model, loss, teacher, device, registry)
