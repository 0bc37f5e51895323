"""The one teacher builder: the frozen velocity a spec's ``[teacher]`` names, for training,
evaluation and verification alike (every teacher kind is a registered component; a trained run is
the ``run`` teacher, :mod:`fmmkit.teachers.run`)."""

from __future__ import annotations

import torch

from fmmkit.core import DataSource, Interpolant, VelocityField
from fmmkit.core.validators import SpecValueError
from fmmkit.registry import Registry
from fmmkit.spec import Spec, SpecError
from fmmkit.spec.build import data_context


def build_teacher(spec: Spec, interpolant: Interpolant, data: DataSource, registry: Registry,
                  device: torch.device | str = "cpu", *, missing_ok: bool = False) -> VelocityField | None:
    """The spec's teacher in eval mode on ``device`` (None without ``[teacher]``).

    With ``missing_ok`` a teacher whose files are gone (a deleted teacher run: its component's
    ``available(config)`` is false) gives None instead of an error. A teacher that does not fit the
    run (a run trained on other data) is a SpecError naming ``teacher.<key>``.
    """
    if spec.teacher is None:
        return None
    entry = registry.get("teacher", spec.teacher.kind)
    available = getattr(entry.component, "available", None)
    if missing_ok and available is not None and not available(spec.teacher.config):
        return None
    ctx = data_context(data, interpolant, registry=registry)
    try:
        teacher = entry.build(spec.teacher.config, ctx)
    except SpecValueError as exc:
        raise SpecError.at(spec.source, f"teacher.{exc.field}", exc.problem) from None
    if isinstance(teacher, torch.nn.Module):
        teacher = teacher.to(device).eval()
    return teacher
