"""Random Fourier features of the state (``model.input_features``): shapes, determinism, derivatives, a sharp fit."""

from __future__ import annotations

import math

import pytest
import torch

from fmmkit.core import FlowMap
from fmmkit.core.derivatives import directional_derivative
from fmmkit.nets.input_features import FourierInputFeatures
from fmmkit.nets.mlp import MLP, MLPConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_features_are_x_then_sines_and_cosines_of_fixed_frequencies() -> None:
    phi = FourierInputFeatures(2, features=5, scale=3.0)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    out = phi(x)
    assert out.shape == (7, 12) and phi.dim == 12
    assert torch.equal(out[:, :2], x)
    angles = 2 * math.pi * x @ phi.freqs
    torch.testing.assert_close(out[:, 2:7], torch.sin(angles))
    torch.testing.assert_close(out[:, 7:], torch.cos(angles))
    torch.manual_seed(123)  # the global RNG does not change the frequencies
    assert torch.equal(FourierInputFeatures(2, features=5, scale=3.0).freqs, phi.freqs)
    assert float(phi.freqs.std()) > 1.0  # scaled by 3
    assert torch.equal(FourierInputFeatures(2, features=0)(x), x)


def test_mlp_with_features_keeps_state_dict_keys_and_its_jvp_matches_finite_differences() -> None:
    plain, featured = MLP(MLPConfig(width=32, depth=2), (2,)), MLP(MLPConfig(width=32, depth=2, input_features=8), (2,))
    assert set(plain.state_dict()) == set(featured.state_dict())  # frequencies are rebuilt, not stored
    assert featured.inp.in_features == plain.inp.in_features + 16
    torch.nn.init.normal_(featured.out.weight)  # leave the zero init so the map depends on x and t
    model = FlowMap(featured)
    g = torch.Generator().manual_seed(0)
    x, s, t = torch.randn(5, 2, generator=g), torch.rand(5, generator=g) * 0.5, 0.5 + torch.rand(5, generator=g) * 0.5
    tangent = {"dx": torch.randn(5, 2, generator=g), "ds": torch.ones(5), "dt": torch.ones(5)}
    _, exact = directional_derivative(model, x, s, t, **tangent)
    _, fd = directional_derivative(model, x, s, t, **tangent, method="finite_difference")
    torch.testing.assert_close(exact, fd.to(exact.dtype), atol=1e-3, rtol=1e-3)


def test_features_fit_a_step_function_that_raw_inputs_blur() -> None:
    """The root cause the features address: a same-size MLP fits sign(sin(3 x)) far better with them."""

    def fit(features: int) -> float:
        torch.manual_seed(0)
        net = torch.nn.Sequential(FourierInputFeatures(1, features, scale=1.0), torch.nn.Linear(1 + 2 * features, 32),
                                  torch.nn.SiLU(), torch.nn.Linear(32, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        x = torch.linspace(-3, 3, 256)[:, None]
        y = torch.sign(torch.sin(3 * x))
        for _ in range(200):
            opt.zero_grad()
            loss = (net(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
        return float(loss)

    assert fit(32) < 0.5 * fit(0)
