"""Every registered interpolant (built-in or a plugin's, with and without gamma noise) is valid:
boundary conditions, derivatives against finite differences, I_0 = x0 and I_1 = x1.

``registered_interpolant`` is the fixture of fmmkit's pytest plugin (entry point ``pytest11``): it
parametrises each test over the registry, so an installed plugin's interpolant is tested here too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from fmmkit.core import Interpolant
from fmmkit.interpolants.linear import LinearInterpolant
from fmmkit.registry import get_registry
from fmmkit.testing import assert_interpolant_valid, interpolant_cases

F64 = torch.float64


def test_every_registered_interpolant_is_valid(registered_interpolant: Interpolant) -> None:
    assert_interpolant_valid(registered_interpolant)


def test_the_fixture_covers_the_registry_and_noise() -> None:
    cases = interpolant_cases()
    names = {name for name, _ in cases}
    assert names == set(get_registry().names("interpolant"))
    assert {"linear", "trig"} <= names
    assert ("linear", 0.5) in cases  # the noisy variant of each interpolant that takes `noise`


@given(t=st.floats(0.01, 0.99), case=st.sampled_from(interpolant_cases()))
def test_coefficient_derivatives_match_central_differences(t: float, case: tuple[str, float]) -> None:
    from fmmkit.testing import build_interpolant

    ip = build_interpolant(*case)
    tt, h = torch.tensor([t], dtype=F64), 1e-6
    for name in ("alpha", "beta", "gamma"):
        fd = (getattr(ip, name)(tt + h) - getattr(ip, name)(tt - h)) / (2 * h)
        torch.testing.assert_close(getattr(ip, f"d_{name}")(tt), fd, atol=1e-6, rtol=1e-6, msg=f"{case} d_{name}")


class _WrongDerivative(LinearInterpolant):
    """alpha' off by 1%: boundary conditions hold, so only the derivative check can catch it."""

    def d_alpha(self, t: Tensor) -> Tensor:
        return -1.01 * torch.ones_like(t)


class _WrongGammaProduct(LinearInterpolant):
    def gamma_d_gamma(self, t: Tensor) -> Tensor:
        return 2 * super().gamma_d_gamma(t)


def test_a_wrong_derivative_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"d_alpha\(.*central difference"):
        assert_interpolant_valid(_WrongDerivative())


def test_an_inconsistent_gamma_gamma_prime_is_caught() -> None:
    from fmmkit.interpolants.config import InterpolantConfig

    with pytest.raises(AssertionError, match="gamma_d_gamma"):
        assert_interpolant_valid(_WrongGammaProduct(InterpolantConfig(noise=0.5)))
