"""fmmkit's abstract interfaces. Nothing in this package imports an implementation."""

from fmmkit.core.component import BuildContext, Component, EmptyConfig
from fmmkit.core.data import Batch, DataSource, SupportRegion, TensorDataSource
from fmmkit.core.flow_map import Backbone, FlowMap
from fmmkit.core.interpolant import Interpolant, InterpolantSample
from fmmkit.core.loss import Loss, LossOutput
from fmmkit.core.metric import Metric
from fmmkit.core.sampler import SampleResult, Sampler
from fmmkit.core.velocity import FlowMapLike, VelocityField

__all__ = [
    "Backbone",
    "Batch",
    "BuildContext",
    "Component",
    "DataSource",
    "EmptyConfig",
    "FlowMap",
    "FlowMapLike",
    "Interpolant",
    "InterpolantSample",
    "Loss",
    "LossOutput",
    "Metric",
    "SampleResult",
    "Sampler",
    "SupportRegion",
    "TensorDataSource",
    "VelocityField",
]
