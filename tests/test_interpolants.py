"""Built-in interpolants: boundary values, derivatives against finite differences, shapes."""

from __future__ import annotations

import pytest
import torch

from fmmkit.core.interpolant import InterpolantError
from fmmkit.interpolants.linear import LinearInterpolant
from fmmkit.interpolants.trig import TrigInterpolant
from fmmkit.interpolants.config import InterpolantConfig

INTERPOLANTS = [
    LinearInterpolant(InterpolantConfig(0.0)),
    LinearInterpolant(InterpolantConfig(0.5)),
    TrigInterpolant(InterpolantConfig(0.0)),
    TrigInterpolant(InterpolantConfig(1.0)),
]


@pytest.mark.parametrize("interp", INTERPOLANTS, ids=lambda i: f"{type(i).__name__}-{i.noise_scale}")
def test_endpoints_are_noise_and_data(interp) -> None:
    x0, x1, z = torch.randn(3, 5, 4, dtype=torch.float64)
    at0 = interp.interpolate(x0, x1, torch.zeros(5, dtype=torch.float64), z)
    at1 = interp.interpolate(x0, x1, torch.ones(5, dtype=torch.float64), z)
    torch.testing.assert_close(at0.x_t, x0)
    torch.testing.assert_close(at1.x_t, x1)


@pytest.mark.parametrize("interp", INTERPOLANTS, ids=lambda i: f"{type(i).__name__}-{i.noise_scale}")
def test_time_derivative_matches_central_difference(interp) -> None:
    x0, x1, z = torch.randn(3, 64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    plus = interp.interpolate(x0, x1, t + h, z).x_t
    minus = interp.interpolate(x0, x1, t - h, z).x_t
    torch.testing.assert_close(interp.interpolate(x0, x1, t, z).dx_t, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("interp", INTERPOLANTS, ids=lambda i: f"{type(i).__name__}-{i.noise_scale}")
def test_gamma_d_gamma_is_the_product(interp) -> None:
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(interp.gamma_d_gamma(t), interp.gamma(t) * interp.d_gamma(t))


def test_broken_boundary_conditions_fail_at_construction() -> None:
    class Backwards(LinearInterpolant):
        def alpha(self, t):  # noise at t = 1: the other convention
            return t

    with pytest.raises(InterpolantError, match=r"alpha\(0\) = 0 but must be 1"):
        Backwards()


def test_draw_shapes_and_stochastic_flag() -> None:
    x1 = torch.randn(8, 2)
    sample = LinearInterpolant(InterpolantConfig(0.3)).draw(x1, torch.rand(8))
    assert sample.x_t.shape == sample.dx_t.shape == (8, 2)
    assert sample.z is not None
    assert LinearInterpolant().draw(x1, torch.rand(8)).z is None
