"""fmmkit's testing kit for plugin authors: hypothesis strategies, assertion helpers, pytest fixtures.

    from fmmkit.testing import assert_flow_map_laws, assert_interpolant_valid, gaussian_problems

The pytest plugin (:mod:`fmmkit.testing.pytest_plugin`, registered through the ``pytest11`` entry
point, so it is active wherever fmmkit is installed) offers the fixtures ``registered_interpolant``
(parametrised over every registered interpolant, with and without gamma noise), ``gaussian_oracle``
(a factory of exact Gaussian maps) and ``fmmkit_registry``, and the hypothesis profiles
``fmmkit-ci`` (the default) and ``fmmkit-deep``. The names below load on first use (the pytest
plugin must not import torch into every project's test run).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    **dict.fromkeys(("PerturbedExact", "assert_flow_map_laws", "assert_interpolant_valid",
                     "assert_loss_minimised_by_exact_map", "loss_stream_seed"), "fmmkit.testing.assertions"),
    **dict.fromkeys(("GaussianProblem", "batches", "build_interpolant", "gaussian_problems", "interpolant_cases",
                     "interpolants", "time_pairs", "time_triples", "times"), "fmmkit.testing.strategies"),
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
