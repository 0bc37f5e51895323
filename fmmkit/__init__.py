"""fmmkit: flow map matching in PyTorch."""

from fmmkit import moved as _moved

_moved.install()

from fmmkit.core import (
    Backbone,
    Batch,
    BuildContext,
    DataSource,
    FlowMap,
    Interpolant,
    Loss,
    LossOutput,
    Metric,
    SampleResult,
    Sampler,
    TensorDataSource,
    VelocityField,
)
from fmmkit.hookspecs import hookimpl
from fmmkit.version import __version__

__all__ = [
    "Backbone",
    "Batch",
    "BuildContext",
    "DataSource",
    "FlowMap",
    "Interpolant",
    "Loss",
    "LossOutput",
    "Metric",
    "SampleResult",
    "Sampler",
    "TensorDataSource",
    "VelocityField",
    "__version__",
    "hookimpl",
    "load_run",
    "train",
]


def load_run(run_dir: str):  # type: ignore[no-untyped-def]
    """Load a trained run directory: ``.flow_map(x, s, t)`` and ``.sample(n, steps=K)``."""
    from fmmkit.runs.run import load_run as _load_run

    return _load_run(run_dir)


def train(spec, **kwargs):  # type: ignore[no-untyped-def]
    """Train a spec (a path to a TOML file, a dict, or a :class:`fmmkit.spec.Spec`); returns the run dir."""
    from fmmkit.training.loop import train as _train

    return _train(spec, **kwargs)
