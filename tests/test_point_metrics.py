"""Point-cloud metrics: exact values on constructed inputs, ~0 for equal laws, large for different ones."""

from __future__ import annotations

import math

import pytest
import torch

import fmmkit.metrics.point_cloud as pc
from fmmkit.core import BuildContext
from fmmkit.data.toy2d import Checkerboard, CheckerboardConfig, TwoMoons, TwoMoonsConfig
from fmmkit.metrics.point_cloud import EnergyDistance, EnergyDistanceConfig, HistogramKL, HistogramKLConfig, SlicedW2, SlicedW2Config
from fmmkit.registry import load_registry


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def brute_energy(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> float:
    x, y = x.double(), y.double()
    n, m = len(x), len(y)
    d = 1 if unbiased else 0
    dist = lambda a, b: (a[:, None] - b[None]).norm(dim=-1)  # noqa: E731
    xy = dist(x, y).mean()
    xx = dist(x, x).sum() / (n * (n - d))
    yy = dist(y, y).sum() / (m * (m - d))
    return float(2 * xy - xx - yy)


def test_metrics_are_registered() -> None:
    reg = load_registry(entry_points=False)
    assert {"energy_distance", "sliced_w2", "histogram_kl"} <= set(reg.names("metric"))
    entry = reg.get("metric", "sliced_w2")
    assert isinstance(entry.build(entry.config(num_projections=8), BuildContext()), SlicedW2)


@pytest.mark.parametrize("unbiased", [True, False])
def test_energy_distance_chunking_matches_brute_force(monkeypatch: pytest.MonkeyPatch, unbiased: bool) -> None:
    x, y = randn(157, 3, seed=0), randn(211, 3, seed=1) + 0.3
    metric = EnergyDistance(EnergyDistanceConfig(unbiased=unbiased))
    expected = brute_energy(x, y, unbiased)
    whole = metric(x, y, None)  # type: ignore[arg-type]
    assert whole == pytest.approx(expected, abs=1e-6)  # float32 distances, float64 sums
    monkeypatch.setattr(pc, "_CHUNK_ELEMENTS", 500)  # several uneven chunks of rows
    assert metric(x, y, None) == pytest.approx(whole, abs=1e-7)  # type: ignore[arg-type]


def test_energy_distance_values() -> None:
    metric = EnergyDistance()
    zeros, ones = torch.zeros(50, 1), torch.ones(40, 1)
    assert metric(zeros, ones, None) == pytest.approx(2.0)  # type: ignore[arg-type]  # 2|0 - 1|
    same = metric(randn(3000, 2, seed=0), randn(3000, 2, seed=1), None)  # type: ignore[arg-type]
    shifted = metric(randn(3000, 2, seed=0), randn(3000, 2, seed=1) + torch.tensor([1.0, 0.0]), None)  # type: ignore[arg-type]
    assert abs(same) < 0.005 and shifted > 0.3
    assert metric(randn(3000, 2, seed=0), 2 * randn(3000, 2, seed=1), None) > 0.1  # type: ignore[arg-type]


def test_energy_distance_on_images_flattens() -> None:
    x, y = randn(64, 3, 4, 4, seed=0), randn(80, 3, 4, 4, seed=1)
    assert EnergyDistance()(x, y, None) == pytest.approx(brute_energy(x.flatten(1), y.flatten(1), True), abs=1e-6)  # type: ignore[arg-type]


def test_sliced_w2_exact_cases() -> None:
    metric = SlicedW2(SlicedW2Config(num_projections=256))
    x = randn(1000, 3, seed=0)
    assert metric(x, x.clone(), None) == pytest.approx(0.0, abs=1e-12)  # type: ignore[arg-type]
    # a sample and the same sample repeated twice are the same empirical law (the quantile path)
    assert metric(x, torch.cat([x, x]), None) == pytest.approx(0.0, abs=1e-12)  # type: ignore[arg-type]
    # a translation by c moves every projection by <theta, c>: SW2^2 = mean <theta, c>^2 ~ |c|^2 / d
    c = torch.tensor([1.0, 2.0, -2.0])
    shifted = metric(x, x + c, None)  # type: ignore[arg-type]
    shifted_uneven = metric(x, torch.cat([x, x]) + c, None)  # type: ignore[arg-type]
    assert shifted == pytest.approx(shifted_uneven, abs=1e-9)
    assert shifted == pytest.approx(3.0 / math.sqrt(3), rel=0.1)


def test_sliced_w2_same_and_different_laws_and_seed() -> None:
    metric = SlicedW2()
    same = metric(randn(4000, 2, seed=0), randn(3000, 2, seed=1), None)  # type: ignore[arg-type]
    scaled = metric(randn(4000, 2, seed=0), 3 * randn(3000, 2, seed=1), None)  # type: ignore[arg-type]
    assert same < 0.06 and scaled > 1.5  # W2(N(0, I), N(0, 9 I)) in 1D is 2
    x, y = randn(500, 5, seed=0), randn(500, 5, seed=1)
    assert metric(x, y, None) == SlicedW2()(x, y, None)  # type: ignore[arg-type]
    assert metric(x, y, None) != SlicedW2(SlicedW2Config(seed=1))(x, y, None)  # type: ignore[arg-type]


def test_histogram_kl_exact_on_bin_centres() -> None:
    board = Checkerboard(CheckerboardConfig())
    metric = HistogramKL(HistogramKLConfig(bins=100))  # bin width 0.04, 25 bins per square
    c = -2 + 0.04 * (torch.arange(100, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1).reshape(-1, 2)
    on_black = grid[board.density(grid) > 0]
    assert len(on_black) == 5000
    assert metric(on_black, on_black, board) == pytest.approx(0.0, abs=1e-6)  # only the eps smoothing
    one_square = on_black[((on_black >= 0) & (on_black < 1)).all(dim=1)]  # q = 1/625 there, 0 elsewhere
    expected = (1 / 8) * math.log(1 / 8) + (7 / 8) * math.log((1 / 5000) / 1e-10)
    assert metric(one_square, on_black, board) == pytest.approx(expected, rel=1e-9)


def test_histogram_kl_true_samples_versus_noise() -> None:
    board = Checkerboard(CheckerboardConfig())
    gen = torch.Generator().manual_seed(0)
    true = board.sample(400_000, gen).x1
    ref = board.sample(1000, gen).x1  # unused: the density is known
    metric = HistogramKL()
    assert metric(true, ref, board) < 0.015
    assert metric(randn(400_000, 2, seed=3), ref, board) > 1.0


def test_histogram_kl_from_reference_histogram_without_density() -> None:
    moons = TwoMoons(TwoMoonsConfig())
    gen = torch.Generator().manual_seed(0)
    metric = HistogramKL(HistogramKL.Config(bins=50))
    close = metric(moons.sample(300_000, gen).x1, moons.sample(300_000, gen).x1, moons)
    far = metric(randn(300_000, 2, seed=1), moons.sample(300_000, gen).x1, moons)
    assert close < 0.02 and far > 1.0


def test_histogram_kl_rejects_other_dimensions() -> None:
    with pytest.raises(ValueError, match="2D points"):
        HistogramKL()(torch.zeros(10, 3), torch.zeros(10, 3), Checkerboard(CheckerboardConfig()))


def test_energy_distance_reuses_the_reference_term_only_for_the_same_unchanged_reference() -> None:
    from fmmkit.metrics.point_cloud import EnergyDistance

    g = torch.Generator().manual_seed(0)
    reference, a, b = (torch.randn(300, 2, generator=g) for _ in range(3))
    cached = EnergyDistance()
    first, second = cached(a, reference), cached(b, reference)
    assert first == EnergyDistance()(a, reference) and second == EnergyDistance()(b, reference)
    reference.mul_(2.0)  # changed in place: the cached term must not be reused
    assert cached(a, reference) == EnergyDistance()(a, reference)
    other = reference.clone()
    assert cached(b, other) == EnergyDistance()(b, other)
