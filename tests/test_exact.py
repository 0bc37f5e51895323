"""The exact Gaussian oracle obeys the flow-map laws, and the mixture velocity agrees with it."""

from __future__ import annotations

import pytest
import torch

from fmmkit.core import BuildContext, FlowMapLike, VelocityField
from fmmkit.core.validators import SpecValueError
from fmmkit.exact import GaussianFlowMap, GaussianMixtureVelocity
from fmmkit.interpolants.config import InterpolantConfig
from fmmkit.interpolants.linear import LinearInterpolant
from fmmkit.interpolants.trig import TrigInterpolant
from fmmkit.metrics.point_cloud import EnergyDistance
from fmmkit.registry import load_registry

F64 = torch.float64
MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
STD = torch.tensor([0.5, 2.0, 1.0], dtype=F64)
INTERPOLANTS = [LinearInterpolant(), TrigInterpolant(), LinearInterpolant(InterpolantConfig(noise=0.7))]
IDS = ["linear", "trig", "linear-stochastic"]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(params=INTERPOLANTS, ids=IDS)
def oracle(request) -> GaussianFlowMap:  # type: ignore[no-untyped-def]
    return GaussianFlowMap(request.param, MEAN, STD)


def test_protocols_and_dtypes(oracle: GaussianFlowMap) -> None:
    assert isinstance(oracle, FlowMapLike) and isinstance(oracle, VelocityField)
    x = randn(5, 3)
    assert oracle(x, rand(5), rand(5, seed=1)).dtype == F64
    assert oracle.velocity(x.float(), rand(5).float()).dtype == torch.float32


def test_identity_semigroup_inverse(oracle: GaussianFlowMap) -> None:
    x = randn(200, 3)
    s, u, t = rand(200, seed=1), rand(200, seed=2), rand(200, seed=3)
    torch.testing.assert_close(oracle(x, t, t), x, atol=1e-14, rtol=0)
    torch.testing.assert_close(oracle(oracle(x, s, u), u, t), oracle(x, s, t), atol=1e-12, rtol=0)
    torch.testing.assert_close(oracle(oracle(x, s, t), t, s), x, atol=1e-12, rtol=0)


def test_endpoint_map_is_affine_push_forward(oracle: GaussianFlowMap) -> None:
    x = randn(100, 3)
    torch.testing.assert_close(oracle(x, 0.0, 1.0), MEAN + STD * x, atol=1e-13, rtol=0)


def test_lagrangian_equation_by_finite_differences(oracle: GaussianFlowMap) -> None:
    x = randn(100, 3)
    s, t = 0.05 + 0.9 * rand(100, seed=1), 0.05 + 0.9 * rand(100, seed=2)
    h = 1e-5
    d_dt = (oracle(x, s, t + h) - oracle(x, s, t - h)) / (2 * h)
    torch.testing.assert_close(d_dt, oracle.velocity(oracle(x, s, t), t), atol=1e-8, rtol=1e-8)
    tangent = (oracle(x, s, s + h) - oracle(x, s, s - h)) / (2 * h)  # tangent condition at t = s
    torch.testing.assert_close(tangent, oracle.velocity(x, s), atol=1e-8, rtol=1e-8)


def test_eulerian_equation_by_finite_differences(oracle: GaussianFlowMap) -> None:
    x = randn(100, 3)
    s, t = 0.05 + 0.9 * rand(100, seed=1), 0.05 + 0.9 * rand(100, seed=2)
    h = 1e-5
    d_ds = (oracle(x, s + h, t) - oracle(x, s - h, t)) / (2 * h)
    b = oracle.velocity(x, s)
    grad_b = (oracle(x + h * b, s, t) - oracle(x - h * b, s, t)) / (2 * h)  # grad_x X_{s,t}(x) b_s(x)
    torch.testing.assert_close(d_ds + grad_b, torch.zeros_like(x), atol=1e-7, rtol=0)


def test_average_velocity(oracle: GaussianFlowMap) -> None:
    x = randn(50, 3)
    s, t = rand(50, seed=1), rand(50, seed=2)
    t[:10] = s[:10]  # diagonal rows take the velocity
    v = oracle.average_velocity(x, s, t)
    torch.testing.assert_close(v[:10], oracle.velocity(x[:10], t[:10]), atol=0, rtol=0)
    torch.testing.assert_close(x + (t - s)[:, None] * v, oracle(x, s, t), atol=1e-12, rtol=0)


@pytest.mark.parametrize("interpolant", INTERPOLANTS, ids=IDS)
def test_conditional_variance_matches_monte_carlo(interpolant) -> None:  # type: ignore[no-untyped-def]
    oracle = GaussianFlowMap(interpolant, MEAN, STD)
    n = 200_000
    t = torch.full((n,), 0.3, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    x1 = oracle.sample(n, gen, dtype=F64)
    draw = interpolant.draw(x1, t, generator=gen)
    residual = (draw.dx_t - oracle.velocity(draw.x_t, t)).pow(2).mean()
    closed = oracle.conditional_variance(torch.tensor(0.3, dtype=F64))
    assert closed.ndim == 0 and float(closed) > 0.05
    assert abs(float(residual) / float(closed) - 1) < 0.02
    torch.testing.assert_close(oracle.conditional_variance(t[:4], reduction="sum"), 3 * closed.expand(4))


def test_sample_moments() -> None:
    oracle = GaussianFlowMap(LinearInterpolant(), MEAN, STD)
    x = oracle.sample(100_000, torch.Generator().manual_seed(0), dtype=F64)
    assert x.shape == (100_000, 3)
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), STD, atol=0, rtol=0.02)


def test_mixture_with_one_component_is_the_gaussian_map() -> None:
    mean, sigma = torch.tensor([1.0, -0.5], dtype=F64), 0.4
    mix = GaussianMixtureVelocity(torch.tensor([1.0]), mean[None], torch.tensor([sigma], dtype=F64), steps=100)
    gauss = GaussianFlowMap(LinearInterpolant(), mean, torch.full((2,), sigma, dtype=F64))
    x, s, t = randn(64, 2), rand(64, seed=1), rand(64, seed=2)
    torch.testing.assert_close(mix.velocity(x, t), gauss.velocity(x, t), atol=1e-13, rtol=0)
    torch.testing.assert_close(mix(x, s, t), gauss(x, s, t), atol=1e-9, rtol=0)


def test_mixture_velocity_is_posterior_weighted_gaussian_velocities() -> None:
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.0, -2.0]], dtype=F64)
    stds = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
    mix = GaussianMixtureVelocity(weights, means, stds)
    x, t = 2 * randn(100, 2), rand(100, seed=1)
    parts = [GaussianFlowMap(LinearInterpolant(), m, s.expand(2)) for m, s in zip(means, stds)]
    sd = [torch.sqrt((1 - t) ** 2 + t**2 * s**2)[:, None] for s in stds]
    log_p = torch.stack(
        [torch.distributions.Normal(t[:, None] * m, sd_k).log_prob(x).sum(1) + w.log() for w, m, sd_k in zip(weights, means, sd)],
        dim=1,
    )
    w = torch.softmax(log_p, dim=1)
    expected = sum(w[:, k : k + 1] * p.velocity(x, t) for k, p in enumerate(parts))
    torch.testing.assert_close(mix.velocity(x, t), expected, atol=1e-12, rtol=1e-12)


def test_mixture_flow_map_pushes_noise_to_the_mixture() -> None:
    weights = torch.tensor([0.5, 0.5], dtype=F64)
    means = torch.tensor([[2.0, 0.0], [-2.0, 0.0]], dtype=F64)
    stds = torch.tensor([0.3, 0.3], dtype=F64)
    mix = GaussianMixtureVelocity(weights, means, stds, steps=100)
    pushed = mix(randn(1000, 2), 0.0, 1.0)
    comp = torch.randint(2, (1000,), generator=torch.Generator().manual_seed(5))
    target = means[comp] + 0.3 * randn(1000, 2, seed=6)
    assert abs(EnergyDistance()(pushed, target, None)) < 0.02  # type: ignore[arg-type]
    assert EnergyDistance()(randn(1000, 2, seed=7), target, None) > 0.5  # type: ignore[arg-type]


def test_gaussian_teacher_from_registry() -> None:
    reg = load_registry(entry_points=False)
    entry = reg.get("teacher", "gaussian")
    ctx = BuildContext(data_shape=(2,), interpolant=LinearInterpolant())
    teacher = entry.build(entry.config(mean=[1.0, 2.0], std=[0.5]), ctx)
    assert isinstance(teacher, GaussianFlowMap) and isinstance(teacher, VelocityField)
    torch.testing.assert_close(teacher.std, torch.tensor([0.5, 0.5], dtype=F64))
    x = randn(8, 2).float()
    torch.testing.assert_close(teacher(x, 0.0, 1.0), torch.tensor([1.0, 2.0]) + 0.5 * x)
    with pytest.raises(SpecValueError, match="mean"):
        entry.build(entry.config(mean=[1.0, 2.0, 3.0], std=[1.0]), ctx)
    with pytest.raises(SpecValueError, match="std"):
        entry.config(mean=[0.0], std=[-1.0])


def _orthogonality_z_scores(velocity, t: float, n: int = 200_000) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """z-scores of E[(b_t(I_t) - dI_t/dt) f(I_t)] for test functions f: all ~N(0, 1) iff b is E[dI/dt | I_t]."""
    from fmmkit.data.toy2d import Checkerboard, CheckerboardConfig

    g = torch.Generator().manual_seed(3)
    x1 = Checkerboard(CheckerboardConfig()).sample(n, g).x1.double()
    x0 = torch.randn(n, 2, generator=g, dtype=F64)
    xt = (1 - t) * x0 + t * x1
    residual = velocity(xt, torch.full((n,), t, dtype=F64)) - (x1 - x0)  # (n, 2)
    tests = torch.stack([torch.ones(n), xt[:, 0], xt[:, 1], torch.sin(3 * xt[:, 0]), torch.cos(3 * xt[:, 1]),
                         (xt.floor().sum(1) % 2 == 0).double()], dim=1)  # (n, 6)
    products = residual[:, :, None] * tests[:, None, :]  # (n, 2, 6)
    return products.mean(0) / (products.std(0) / n**0.5)


def test_box_mixture_velocity_is_the_conditional_mean_of_the_checkerboard_path() -> None:
    from fmmkit.exact import BoxMixtureFlowMap

    exact = BoxMixtureFlowMap.checkerboard()
    for t in (0.3, 0.7, 0.9):
        assert float(_orthogonality_z_scores(exact.velocity, t).abs().max()) < 4.5
    # the test has power: the velocity of a nearby time fails it
    shifted = lambda x, t: exact.velocity(x, t + 0.05)  # noqa: E731
    assert float(_orthogonality_z_scores(shifted, 0.7).abs().max()) > 10


def test_box_mixture_flow_map_pushes_noise_into_the_squares() -> None:
    from fmmkit.data.toy2d import Checkerboard, CheckerboardConfig
    from fmmkit.exact import BoxMixtureFlowMap

    exact = BoxMixtureFlowMap.checkerboard(2.0, steps=50)
    x1 = exact(randn(2000, 2), 0.0, 1.0)
    assert float((Checkerboard(CheckerboardConfig(scale=2.0)).density(x1.float()) > 0).double().mean()) > 0.99
    with pytest.raises(ValueError, match="highs > lows"):
        BoxMixtureFlowMap(torch.zeros(2, 2), torch.zeros(2, 2))
