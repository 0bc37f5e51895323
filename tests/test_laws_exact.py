"""Property tests: the exact Gaussian (and Gaussian-mixture) flow maps obey every flow-map law.

Drawn by hypothesis: every registered interpolant (a plugin's too) with and without gamma noise,
dimensions 1..8, means in [-3, 3], stds in [0.1, 3], points at the first time, and time triples
anywhere in [0, 1] in any order (reversed maps and the endpoints included). Tolerances (float64):
|residual| <= 1e-9 + 1e-9 |reference| for the closed form; the derivative laws go through
fmmkit.core.derivatives (torch.func.jvp), as in the losses. The mixture map is an RK4 solve, so its laws
hold to the solver's accuracy.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmmkit.exact import GaussianFlowMap, GaussianMixtureFlowMap, gaussian_moments
from fmmkit.testing import (
    GaussianProblem,
    assert_flow_map_laws,
    build_interpolant,
    gaussian_problems,
    interpolant_cases,
    interpolants,
    time_triples,
)

F64 = torch.float64
TOL = 1e-9
#: The mixture map is an ODE solve: a quarter of the profile's examples (7 in "ci", 250 in "deep").
ODE_EXAMPLES = max(5, settings.default.max_examples // 4)


@given(problem=gaussian_problems(), triple=time_triples(order="any"), n=st.integers(1, 16))
def test_exact_gaussian_map_obeys_every_law(problem: GaussianProblem, triple: tuple[float, float, float], n: int) -> None:
    s, u, t = triple
    x = problem.points(n, s)
    assert_flow_map_laws(problem.oracle, x, s, u, t, atol=TOL, rtol=TOL)


@given(problem=gaussian_problems(), s=st.floats(0, 1), t=st.floats(0, 1))
def test_laws_by_finite_differences_agree_with_jvp(problem: GaussianProblem, s: float, t: float) -> None:
    """The same Lagrangian and Eulerian laws with central differences instead of forward-mode AD."""
    s, t = min(max(s, 1e-3), 1 - 1e-3), min(max(t, 1e-3), 1 - 1e-3)  # room for the difference stencil
    x = problem.points(8, s)
    assert_flow_map_laws(problem.oracle, x, s, s, t, laws=("tangent", "lagrangian", "eulerian"),
                         derivative="finite_difference", atol=1e-5, rtol=1e-5)


@given(problem=gaussian_problems(), s=st.floats(0, 1), t=st.floats(0, 1))
def test_map_is_affine_with_the_stated_moments(problem: GaussianProblem, s: float, t: float) -> None:
    """X_{s,t} pushes N(mu_s, S_s) to N(mu_t, S_t): it maps mu_s to mu_t and scales by sqrt(S_t / S_s)."""
    oracle, ip = problem.oracle, problem.interpolant
    mu = {}
    var = {}
    for name, time in (("s", s), ("t", t)):
        tt = torch.tensor(time, dtype=F64)
        mu[name], var[name], _, _ = gaussian_moments(ip, tt, problem.mean, problem.std**2)
    x = torch.stack([mu["s"], mu["s"] + 1.0])
    out = oracle(x, s, t)
    torch.testing.assert_close(out[0], mu["t"], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out[1] - out[0], torch.sqrt(var["t"] / var["s"]), atol=1e-10, rtol=1e-10)


def test_endpoint_map_of_every_registered_interpolant_is_the_data_law() -> None:
    """X_{0,1}(x) = m + std * x whatever the interpolant: the end map does not depend on the path."""
    mean, std = torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([0.3, 1.0, 2.5], dtype=F64)
    x = torch.randn(32, 3, dtype=F64)
    for name, noise in interpolant_cases():
        oracle = GaussianFlowMap(build_interpolant(name, noise), mean, std)
        torch.testing.assert_close(oracle(x, 0.0, 1.0), mean + std * x, atol=1e-12, rtol=0, msg=name)


@settings(max_examples=ODE_EXAMPLES)
@given(problem=gaussian_problems(dims=(1, 3)), k=st.integers(1, 3), data=st.data())
def test_mixture_map_obeys_the_laws_to_solver_accuracy(problem: GaussianProblem, k: int, data: st.DataObject) -> None:
    """Mixture of k Gaussians under any registered interpolant: the map laws hold to RK4 accuracy (1e-5),
    the Lagrangian law (d/dt of the discrete solution, by central differences) to 1e-4.
    """
    g = torch.Generator().manual_seed(problem.seed % 2**31)
    means = 2 * torch.randn(k, problem.dim, generator=g, dtype=F64)
    stds = 0.3 + torch.rand(k, generator=g, dtype=F64)
    mix = GaussianMixtureFlowMap(torch.rand(k, generator=g, dtype=F64) + 0.2, means, stds, steps=48,
                                 interpolant=problem.interpolant)
    s, u, t = data.draw(time_triples(order="any"))
    x = problem.points(6, s)
    assert_flow_map_laws(mix, x, s, u, t, laws=("identity", "semigroup", "invertibility"), atol=1e-5, rtol=1e-5)
    s, t = min(max(s, 1e-3), 1 - 1e-3), min(max(t, 1e-3), 1 - 1e-3)
    assert_flow_map_laws(mix, x, s, u, t, laws=("lagrangian",), derivative="finite_difference", atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "noise"), interpolant_cases(), ids=lambda v: str(v))
def test_mixture_velocity_is_the_conditional_mean(name: str, noise: float) -> None:
    """E[(dI_t/dt - b_t(I_t)) f(I_t)] = 0 for test functions f: b is E[dI_t/dt | I_t] (Monte Carlo, 4 sigma).

    A velocity computed for the wrong interpolant fails the same check, so the test has power.
    """
    ip = build_interpolant(name, noise)
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.tensor([[2.0, -1.0], [-1.5, 1.0]], dtype=F64)
    stds = torch.tensor([[0.4, 0.8], [0.6, 0.3]], dtype=F64)
    mix = GaussianMixtureFlowMap(weights, means, stds, interpolant=ip)
    wrong = GaussianMixtureFlowMap(weights, means, stds, interpolant=build_interpolant("trig" if name != "trig" else "linear"))
    n = 200_000
    g = torch.Generator().manual_seed(1)
    x1 = mix.sample(n, g, dtype=F64)
    t = torch.full((n,), 0.6, dtype=F64)
    path = ip.draw(x1, t, generator=g)
    features = torch.cat([torch.ones(n, 1, dtype=F64), path.x_t, path.x_t**2, torch.sin(path.x_t)], dim=1)

    def max_z(field: GaussianMixtureFlowMap) -> float:
        residual = path.dx_t - field.velocity(path.x_t, t)  # (n, 2)
        prod = (residual[:, :, None] * features[:, None, :]).reshape(n, -1)
        return float((prod.mean(0).abs() / (prod.std(0) / math.sqrt(n))).max())

    assert max_z(mix) < 4.5
    assert max_z(wrong) > 10


@settings(max_examples=ODE_EXAMPLES)
@given(ip=interpolants(), dim=st.integers(1, 4))
def test_mixture_with_one_component_is_the_gaussian_map(ip, dim: int) -> None:  # type: ignore[no-untyped-def]
    mean = torch.linspace(-1, 1, dim, dtype=F64)
    std = torch.linspace(0.5, 1.5, dim, dtype=F64)
    mix = GaussianMixtureFlowMap(torch.ones(1), mean[None], std[None], steps=40, interpolant=ip)
    gauss = GaussianFlowMap(ip, mean, std)
    x = torch.randn(16, dim, dtype=F64)
    t = torch.rand(16, dtype=F64)
    torch.testing.assert_close(mix.velocity(x, t), gauss.velocity(x, t), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(mix(x, 0.0, t), gauss(x, 0.0, t), atol=1e-6, rtol=1e-6)


def test_jvp_at_the_endpoints_is_finite_for_noisy_interpolants() -> None:
    """gamma^2 = a^2 t (1 - t) in closed form: forward-mode derivatives at t = 0, 1 stay finite."""
    oracle = GaussianFlowMap(build_interpolant("linear", 0.8), torch.zeros(2), torch.ones(2) * 0.5)
    x = torch.randn(4, 2, dtype=F64)
    assert_flow_map_laws(oracle, x, torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64), 0.5,
                         torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64), atol=TOL, rtol=TOL)


def test_gaussian_data_set_draws_its_law_and_gives_its_exact_map() -> None:
    from fmmkit.core import BuildContext
    from fmmkit.registry import get_registry

    entry = get_registry().get("dataset", "gaussian")
    fresh = entry.build(entry.config(dim=3, mean=[1.0, -1.0, 0.5], std=[0.5]), BuildContext())
    x = fresh.sample(50_000, torch.Generator().manual_seed(0)).x1
    assert x.shape == (50_000, 3) and x.dtype == torch.float32
    torch.testing.assert_close(x.mean(0).double(), torch.tensor([1.0, -1.0, 0.5], dtype=F64), atol=0.02, rtol=0)
    torch.testing.assert_close(x.std(0).double(), torch.full((3,), 0.5, dtype=F64), atol=0, rtol=0.02)
    fixed = entry.build(entry.config(dim=3, mean=[0.0], std=[1.0], num_points=10, data_seed=3), BuildContext())
    drawn = fixed.sample(200, torch.Generator().manual_seed(1)).x1
    assert len({tuple(row.tolist()) for row in drawn}) <= 10  # resampled from the fixed set of 10 points
    oracle = fresh.exact_flow_map(build_interpolant("trig"))
    torch.testing.assert_close(oracle(x[:5].double(), 0.0, 1.0), torch.tensor([1.0, -1.0, 0.5], dtype=F64) + 0.5 * x[:5].double())
    density = fresh.density(torch.tensor([[1.0, -1.0, 0.5]]))
    torch.testing.assert_close(density, torch.tensor([(2 * math.pi * 0.25) ** -1.5]), rtol=1e-5, atol=0)


def test_mixture_teacher_spec_errors_name_the_key() -> None:
    from fmmkit.spec import SpecError, load_spec

    base = {"data": {"kind": "eight_gaussians"}, "loss": {"kind": "lagrangian_distillation"}}
    with pytest.raises(SpecError, match="teacher.stds"):
        load_spec({**base, "teacher": {"kind": "gaussian_mixture", "weights": [1.0, 1.0], "means": [[0.0], [1.0]],
                                       "stds": [0.5]}})
    with pytest.raises(SpecError, match="teacher.weights"):
        load_spec({**base, "teacher": {"kind": "gaussian_mixture", "weights": [1.0, -1.0], "means": [[0.0], [1.0]],
                                       "stds": [0.5, 0.5]}})
