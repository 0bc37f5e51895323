"""Building what a spec names through the registry: the data, the interpolant and the flow map.

The one module that turns a spec's component tables into these objects, below both run
directories (:mod:`fmmkit.runs`) and training (:mod:`fmmkit.training`); the teacher
(:func:`fmmkit.runs.build_teacher`) and the loss (:func:`fmmkit.training.build.build_pipeline`) are
built above, from these.
"""

from __future__ import annotations

from fmmkit.core import BuildContext, DataSource, FlowMap, Interpolant, VelocityField
from fmmkit.registry import Registry
from fmmkit.spec.schema import Spec


def build_data(spec: Spec, registry: Registry) -> DataSource:
    """The spec's data set (``[data]``)."""
    return registry.build("dataset", spec.data.kind, spec.data.config, BuildContext())


def build_interpolant(spec: Spec, registry: Registry) -> Interpolant:
    """The spec's interpolant (``[interpolant]``)."""
    return registry.build("interpolant", spec.interpolant.kind, spec.interpolant.config, BuildContext())


def data_context(data: DataSource, interpolant: Interpolant | None = None, teacher: VelocityField | None = None,
                 **extras: object) -> BuildContext:
    """The build context of a component that needs the data's shape and labels (and the interpolant,
    the teacher, or ``extras`` such as the registry)."""
    return BuildContext(data_shape=tuple(data.shape), num_classes=data.num_classes, interpolant=interpolant,
                        teacher=teacher, extras=dict(extras))


def build_model(spec: Spec, data: DataSource, registry: Registry) -> FlowMap:
    """The flow map X_{s,t} = x + (t - s) v_{s,t} around the spec's backbone (``[model]``)."""
    backbone = registry.build("backbone", spec.model.kind, spec.model.config, data_context(data))
    return FlowMap(backbone)
