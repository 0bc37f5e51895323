"""fmmkit's pytest plugin (entry point ``pytest11: fmmkit``): fixtures for testing fmmkit components.

Fixtures:
  registered_interpolant  every registered interpolant (built-in and plugins'), and a gamma-noise variant
                          of each that takes ``noise``; a test using it runs once per case (ids
                          ``linear``, ``linear-noise0.5``, ...)
  gaussian_oracle         factory ``gaussian_oracle(interpolant="linear", dim=2, mean=None, std=None, seed=0)``
                          of exact Gaussian maps (:class:`fmmkit.exact.GaussianFlowMap`, float64)
  fmmkit_registry         the component registry (entry-point plugins included)

Hypothesis profiles: ``fmmkit-ci`` (30 examples, no deadline, derandomized: bounded and reproducible)
and ``fmmkit-deep`` (1000 examples). They are registered when pytest loads this plugin, before
hypothesis reads ``--hypothesis-profile``, so ``pytest --hypothesis-profile=fmmkit-deep`` works in any
project. The plugin then loads ``$HYPOTHESIS_PROFILE`` when it names one of them, else ``fmmkit-ci``
(unless the variable names a profile of the project's own, which its conftest loads); a conftest
or ``--hypothesis-profile`` still has the last word. Everything heavy is imported inside the
fixtures, so the plugin costs nothing in other projects' runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

INTERPOLANT_FIXTURE = "registered_interpolant"
NOISE = 0.5
PROFILES = ("fmmkit-ci", "fmmkit-deep")
DEFAULT_PROFILE = "fmmkit-ci"
PROFILE_VARIABLE = "HYPOTHESIS_PROFILE"


def register_profiles() -> None:
    """Register the fmmkit hypothesis profiles and load the chosen one (see the module docstring)."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("fmmkit-ci", max_examples=30, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("fmmkit-deep", max_examples=1000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    chosen = os.environ.get(PROFILE_VARIABLE, DEFAULT_PROFILE)
    if chosen in PROFILES:
        settings.load_profile(chosen)


register_profiles()  # at import: pytest imports its plugins before hypothesis's pytest_configure reads the option


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``registered_interpolant`` over the registry's interpolants and their noisy variants."""
    if INTERPOLANT_FIXTURE not in metafunc.fixturenames:
        return
    from fmmkit.testing.strategies import interpolant_cases

    cases = interpolant_cases(noise=NOISE)
    ids = [name if not noise else f"{name}-noise{noise:g}" for name, noise in cases]
    metafunc.parametrize(INTERPOLANT_FIXTURE, cases, ids=ids, indirect=True)


@pytest.fixture
def registered_interpolant(request: pytest.FixtureRequest) -> Any:
    """One registered interpolant (see the module docstring)."""
    from fmmkit.testing.strategies import build_interpolant

    name, noise = request.param
    return build_interpolant(name, noise)


@pytest.fixture
def gaussian_oracle() -> Callable[..., Any]:
    """A factory of exact Gaussian flow maps (float64)."""
    import torch

    from fmmkit.core import Interpolant
    from fmmkit.exact import GaussianFlowMap
    from fmmkit.testing.strategies import build_interpolant

    def make(interpolant: Interpolant | str = "linear", dim: int = 2, mean: Any = None, std: Any = None,
             seed: int = 0) -> GaussianFlowMap:
        ip = build_interpolant(interpolant) if isinstance(interpolant, str) else interpolant
        g = torch.Generator().manual_seed(seed)
        m = torch.as_tensor(mean, dtype=torch.float64) if mean is not None else torch.randn(dim, generator=g, dtype=torch.float64)
        s = torch.as_tensor(std, dtype=torch.float64) if std is not None else 0.3 + 1.5 * torch.rand(dim, generator=g, dtype=torch.float64)
        return GaussianFlowMap(ip, m, s)

    return make


@pytest.fixture(scope="session")
def fmmkit_registry() -> Any:
    """The process-wide component registry."""
    from fmmkit.registry import get_registry

    return get_registry()
