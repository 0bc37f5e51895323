"""The in-support metric: exact oracles (the data scores its nominal mass), lower for shifted or blurred samples."""

from __future__ import annotations

import math

import pytest
import torch

from fmmkit.core import BuildContext, TensorDataSource
from fmmkit.data.balls import chi2_quantile, rice_cdf
from fmmkit.data.gaussian import GaussianData, GaussianDataConfig
from fmmkit.data.toy2d import (Checkerboard, CheckerboardConfig, EightGaussians, EightGaussiansConfig, TwoMoons,
                               TwoMoonsConfig)
from fmmkit.metrics.in_support import InSupport, InSupportConfig
from fmmkit.registry import load_registry
from fmmkit.spec.schema import DEFAULT_METRICS


def draw(data, n: int, seed: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return data.sample(n, torch.Generator().manual_seed(seed)).x1


def test_registered_and_a_default_eval_metric() -> None:
    reg = load_registry(entry_points=False)
    entry = reg.get("metric", "in_support")
    assert isinstance(entry.build(entry.config(level=0.9), BuildContext()), InSupport)
    assert "in_support" in DEFAULT_METRICS and InSupport.higher_is_better


@pytest.mark.parametrize("scale", [1.0, 1 / 0.45])
def test_checkerboard_data_scores_exactly_one_and_shifts_score_less(scale: float) -> None:
    data = Checkerboard(CheckerboardConfig(scale=scale))
    metric = InSupport()
    x = draw(data, 20_000, 0)
    assert metric(x, x, data) == 1.0 and metric.nominal(data) == 1.0
    # one square to the right: black squares become white ones or leave the board
    assert metric(x + torch.tensor([scale, 0.0]), x, data) == 0.0
    # half a square to the right: the left half of each square stays in it, the right half leaves it
    assert metric(x + torch.tensor([scale / 2, 0.0]), x, data) == pytest.approx(0.5, abs=0.015)
    blurred = metric(x + 0.2 * scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), x, data)
    assert 0.6 < blurred < 0.9


def test_checkerboard_known_points() -> None:
    data = Checkerboard(CheckerboardConfig())
    x = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [1.5, 1.5], [-1.5, -1.5], [2.5, 2.5], [0.5, -0.5]])
    assert InSupport()(x, x, data) == pytest.approx(3 / 6)


def test_rice_cdf_against_closed_form_and_monte_carlo() -> None:
    for rho in (0.1, 1.0, 3.0):
        assert float(rice_cdf(0.0, rho)) == pytest.approx(1 - math.exp(-rho**2 / 2), abs=1e-13)
    z = torch.randn(1_000_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for nu, rho in [(1.0, 1.5), (3.0, 2.0), (7.0, 3.0)]:
        mc = float((z + torch.tensor([nu, 0.0], dtype=torch.float64)).norm(dim=1).le(rho).double().mean())
        p = float(rice_cdf(nu, rho))
        assert abs(mc - p) < 5 * math.sqrt(p * (1 - p) / len(z)) + 1e-6


def test_chi2_quantile() -> None:
    assert chi2_quantile(0.95, 2) == pytest.approx(-2 * math.log(0.05), rel=1e-12)
    assert chi2_quantile(0.99, 8) == pytest.approx(20.090235, abs=1e-6)  # tables


def test_eight_gaussians_data_scores_its_mass() -> None:
    data = EightGaussians(EightGaussiansConfig())
    metric = InSupport(InSupportConfig(level=0.99))
    mass = metric.nominal(data)
    assert 0.99 < mass < 0.99 + 1e-5  # the other modes add a Rice tail
    x = draw(data, 400_000, 0)
    assert abs(metric(x, x, data) - mass) < 5 * math.sqrt(mass * (1 - mass) / len(x))
    assert metric(1.5 * x, x, data) < 0.2
    # extra noise of std 0.2: each mode becomes N(c_k, 0.08 I), whose disc masses are Rice CDFs again
    blurred = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    std, radius = math.sqrt(0.08), 0.2 * math.sqrt(-2 * math.log(0.01))
    gaps = torch.cdist(data.centres(), data.centres())
    expected = float(rice_cdf(gaps / std, radius / std).mean(dim=0).sum())
    assert expected == pytest.approx(0.90, abs=0.002)
    assert abs(metric(blurred, x, data) - expected) < 5 * math.sqrt(expected * (1 - expected) / len(x))
    with pytest.raises(ValueError, match="overlap"):
        EightGaussians(EightGaussiansConfig(std=0.5)).support_region(0.99)


@pytest.mark.parametrize("dim", [2, 8])
def test_gaussian_data_scores_the_level(dim: int) -> None:
    data = GaussianData(GaussianDataConfig(dim=dim, mean=[1.0], std=[0.5]))
    metric = InSupport(InSupportConfig(level=0.9))
    x = draw(data, 200_000, 0)
    assert metric.nominal(data) == 0.9
    assert abs(metric(x, x, data) - 0.9) < 5 * math.sqrt(0.09 / len(x))
    # a sample 1.6x too wide: P(chi^2_dim <= q / 1.6^2)
    too_wide = data.mean + 1.6 * (x.double() - data.mean)
    q = chi2_quantile(0.9, dim)
    expected = float(torch.special.gammainc(torch.tensor(dim / 2, dtype=torch.float64),
                                            torch.tensor(q / (2 * 1.6**2), dtype=torch.float64)))
    assert expected < 0.6
    assert abs(metric(too_wide, x, data) - expected) < 5 * math.sqrt(expected * (1 - expected) / len(x))


def test_data_without_a_region() -> None:
    moons = TwoMoons(TwoMoonsConfig())
    x = draw(moons, 100, 0)
    assert math.isnan(InSupport()(x, x, moons))
    points = TensorDataSource(torch.randn(10, 3))
    with pytest.raises(ValueError, match="support region"):
        InSupport()(points.data, points.data, points)
