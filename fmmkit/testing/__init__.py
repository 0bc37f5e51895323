"""fmmkit's testing kit for plugin authors: hypothesis strategies, assertion helpers, pytest fixtures.

    from fmmkit.testing import assert_flow_map_laws, assert_interpolant_valid, gaussian_problems

The pytest plugin (:mod:`fmmkit.testing.pytest_plugin`, registered through the ``pytest11`` entry
point, so it is active wherever fmmkit is installed) offers the fixtures ``registered_interpolant``
(parametrised over every registered interpolant, with and without gamma noise), ``gaussian_oracle``
(a factory of exact Gaussian maps) and ``fmmkit_registry``.
"""

from fmmkit.testing.assertions import (
    PerturbedExact,
    assert_flow_map_laws,
    assert_interpolant_valid,
    assert_loss_minimised_by_exact_map,
)
from fmmkit.testing.strategies import (
    GaussianProblem,
    batches,
    build_interpolant,
    gaussian_problems,
    interpolant_cases,
    interpolants,
    time_pairs,
    time_triples,
    times,
)

__all__ = [
    "GaussianProblem",
    "PerturbedExact",
    "assert_flow_map_laws",
    "assert_interpolant_valid",
    "assert_loss_minimised_by_exact_map",
    "batches",
    "build_interpolant",
    "gaussian_problems",
    "interpolant_cases",
    "interpolants",
    "time_pairs",
    "time_triples",
    "times",
]
