"""fmmkit: flow map matching in PyTorch.

The package face: the interfaces of :mod:`fmmkit.core`, ``hookimpl`` for plugins, ``train`` and
``load_run``. The interfaces load on first use, so importing fmmkit itself (as pytest does for
fmmkit's pytest plugin in every project) costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

from fmmkit import moved as _moved
from fmmkit.hookspecs import hookimpl
from fmmkit.version import __version__

_moved.install()

#: The interfaces re-exported from :mod:`fmmkit.core`.
CORE_NAMES = ("Backbone", "Batch", "BuildContext", "DataSource", "FlowMap", "Interpolant", "Loss", "LossOutput",
              "Metric", "SampleResult", "Sampler", "TensorDataSource", "VelocityField")

__all__ = [*CORE_NAMES, "__version__", "hookimpl", "load_run", "train"]


def __getattr__(name: str) -> Any:
    if name in CORE_NAMES:
        return getattr(importlib.import_module("fmmkit.core"), name)
    try:  # a subpackage not imported yet: ``import fmmkit; fmmkit.core.FlowMap``
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def load_run(run_dir, **kwargs):  # type: ignore[no-untyped-def]
    """Load a trained run directory: ``.flow_map(x, s, t)`` and ``.sample(n, steps=K)``; keyword
    arguments as :func:`fmmkit.runs.run.load_run` (``weights="raw"``, ``device``, ``registry``)."""
    from fmmkit.runs.run import load_run as _load_run

    return _load_run(run_dir, **kwargs)


def train(spec, **kwargs):  # type: ignore[no-untyped-def]
    """Train a spec (a path to a TOML file, a built-in spec's name, a dict, or a :class:`fmmkit.spec.Spec`);
    returns the run dir."""
    from fmmkit.training.loop import train as _train

    return _train(spec, **kwargs)
