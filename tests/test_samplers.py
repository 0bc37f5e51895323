"""Samplers: ODE solvers converge at their order on the exact Gaussian velocity; dopri5 meets its
tolerance and counts its evaluations; flow-map jumps with the exact map are exact at any K."""

from __future__ import annotations

import math

import pytest
import torch

from fmmkit.core import BuildContext, FlowMap
from fmmkit.core.validators import SpecValueError
from fmmkit.exact import GaussianFlowMap
from fmmkit.interpolants.config import InterpolantConfig
from fmmkit.interpolants.linear import LinearInterpolant
from fmmkit.interpolants.trig import TrigInterpolant
from fmmkit.registry import load_registry
from fmmkit.samplers.flow_map import FlowMapSampler, FlowMapSamplerConfig
from fmmkit.samplers.ode import RK4, Dopri5, Dopri5Config, Euler, FixedStepConfig, Heun, Midpoint, ODEError

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry(entry_points=False)


def x0(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class CountingVelocity:
    """Wraps a velocity field and counts how many times (per sample) it is evaluated."""

    def __init__(self, inner: GaussianFlowMap) -> None:
        self.inner, self.calls = inner, 0

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        self.calls += 1
        return self.inner.velocity(x, t, y)


def test_registry_has_samplers_and_builds_them(registry) -> None:  # type: ignore[no-untyped-def]
    assert {"euler", "heun", "midpoint", "rk4", "dopri5", "flow_map"} <= set(registry.names("sampler"))
    entry = registry.get("sampler", "rk4")
    sampler = entry.build(entry.config(steps=5), BuildContext())
    assert isinstance(sampler, RK4) and sampler.nfe == 20 and sampler.label == "rk4(5)"
    fm = registry.get("sampler", "flow_map")
    assert fm.build(fm.config(steps=4), BuildContext()).label == "flow_map(4)"
    assert fm.component.uses_flow_map and not entry.component.uses_flow_map


@pytest.mark.parametrize(("cls", "order", "stages"), [(Euler, 1, 1), (Heun, 2, 2), (Midpoint, 2, 2), (RK4, 4, 4)])
def test_fixed_step_solvers_converge_at_their_order(cls, order: int, stages: int) -> None:  # type: ignore[no-untyped-def]
    oracle = GaussianFlowMap(TrigInterpolant(), MEAN, STD)
    x = x0()
    exact = oracle(x, 0.0, 1.0)
    errors = []
    for steps in (16, 32):
        result = cls(FixedStepConfig(steps=steps))(oracle, x)
        assert result.nfe == steps * stages
        errors.append(float((result.x - exact).abs().max()))
    observed = math.log2(errors[0] / errors[1])
    assert order - 0.3 < observed < order + 0.5, (cls.__name__, errors, observed)


def test_fixed_step_counts_evaluations_and_keeps_trajectory() -> None:
    counter = CountingVelocity(GaussianFlowMap(LinearInterpolant(), MEAN, STD))
    result = Heun(FixedStepConfig(steps=7, keep_trajectory=True))(counter, x0())
    assert counter.calls == result.nfe == 14
    assert result.trajectory is not None and len(result.trajectory) == 8
    assert torch.equal(result.trajectory[-1], result.x)


def test_fixed_step_backwards_inverts_the_flow() -> None:
    oracle = GaussianFlowMap(LinearInterpolant(), MEAN, STD)
    data = oracle(x0(), 0.0, 1.0)
    back = RK4(FixedStepConfig(steps=200, t0=1.0, t1=0.0))(oracle, data).x
    torch.testing.assert_close(back, x0(), atol=1e-8, rtol=0)


@pytest.mark.parametrize("interpolant", [LinearInterpolant(), TrigInterpolant(), LinearInterpolant(InterpolantConfig(noise=0.5))])
def test_dopri5_reaches_tolerance_and_reports_nfe(interpolant) -> None:  # type: ignore[no-untyped-def]
    oracle = GaussianFlowMap(interpolant, MEAN, STD)
    x = x0()
    exact = oracle(x, 0.0, 1.0)
    nfes = []
    for tol in (1e-6, 1e-9):
        counter = CountingVelocity(oracle)
        result = Dopri5(Dopri5Config(rtol=tol, atol=tol))(counter, x)
        assert result.nfe == counter.calls
        assert (result.nfe - 2) % 6 == 0  # f0 + starting-step probe + 6 new stages per attempted step (FSAL)
        assert float((result.x - exact).abs().max()) < 10 * tol  # global error, max over elements
        nfes.append(result.nfe)
    assert nfes[1] > 2 * nfes[0]


def test_dopri5_first_step_and_step_budget() -> None:
    oracle = GaussianFlowMap(TrigInterpolant(), MEAN, STD)
    counter = CountingVelocity(oracle)
    result = Dopri5(Dopri5Config(first_step=0.1))(counter, x0())
    assert result.nfe == counter.calls and (result.nfe - 1) % 6 == 0  # no starting-step probe
    with pytest.raises(ODEError, match="max_steps"):
        Dopri5(Dopri5Config(rtol=1e-10, atol=1e-10, max_steps=3))(oracle, x0())


@pytest.mark.parametrize("interpolant", [LinearInterpolant(), TrigInterpolant()])
@pytest.mark.parametrize("config", [FlowMapSamplerConfig(steps=1), FlowMapSamplerConfig(steps=5), FlowMapSamplerConfig(grid=[0.0, 0.1, 0.75, 1.0])])
def test_flow_map_sampler_with_exact_map_is_exact_at_any_k(interpolant, config) -> None:  # type: ignore[no-untyped-def]
    oracle = GaussianFlowMap(interpolant, MEAN, STD)
    x = x0()
    result = FlowMapSampler(config)(oracle, x)
    torch.testing.assert_close(result.x, MEAN + STD * x, atol=1e-12, rtol=0)  # X_{0,1}(x) = m + std x
    assert result.nfe == len(FlowMapSampler(config).times) - 1


def test_flow_map_sampler_trajectory_and_times() -> None:
    oracle = GaussianFlowMap(LinearInterpolant(), MEAN, STD)
    sampler = FlowMapSampler(FlowMapSamplerConfig(grid=[0.0, 0.5, 0.9, 1.0], keep_trajectory=True))
    x = x0()
    result = sampler(oracle, x)
    assert sampler.label == "flow_map(3, grid)" and result.nfe == 3
    assert result.trajectory is not None and len(result.trajectory) == 4
    for t, xt in zip(sampler.times, result.trajectory):
        torch.testing.assert_close(xt, oracle(x, 0.0, t), atol=1e-12, rtol=0)


def test_grid_power_moves_the_inner_times_towards_the_data_and_stays_exact() -> None:
    assert FlowMapSampler(FlowMapSamplerConfig(steps=2, grid_power=2.0)).times == [0.0, 0.75, 1.0]
    assert FlowMapSampler(FlowMapSamplerConfig(steps=4, grid_power=2.0)).times == [0.0, 0.4375, 0.75, 0.9375, 1.0]
    assert FlowMapSampler(FlowMapSamplerConfig(steps=3)).times == [0.0, 1 / 3, 2 / 3, 1.0]  # power 1: i / K exactly
    sampler = FlowMapSampler(FlowMapSamplerConfig(steps=3, grid_power=2.5, keep_trajectory=True))
    assert sampler.label == "flow_map(3, power 2.5)"
    oracle, x = GaussianFlowMap(LinearInterpolant(), MEAN, STD), x0()
    result = sampler(oracle, x)
    for t, xt in zip(sampler.times, result.trajectory or []):
        torch.testing.assert_close(xt, oracle(x, 0.0, t), atol=1e-12, rtol=0)


def test_a_runs_k_step_rows_take_the_spec_grid_power(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fmmkit.evaluation.scores import flow_map_rows
    from fmmkit.runs.run import load_run
    from fmmkit.training.loop import train

    out = train({"name": "gp", "data": {"kind": "checkerboard"}, "model": {"kind": "mlp", "width": 8, "depth": 1},
                 "loss": {"kind": "lagrangian_self_distillation"}, "train": {"steps": 1, "batch_size": 16},
                 "sample": {"grid_power": 2.0, "num_pictures": 16}},
                out=tmp_path / "run", progress=False, pictures=False)
    run = load_run(out)
    assert [sampler.times for _, sampler, _, _ in flow_map_rows(run)][1] == [0.0, 0.75, 1.0]
    assert run.k_step_sampler(2, "consistency").times == [0.0, 0.75, 1.0]  # every flow-map sampler takes it
    torch.testing.assert_close(run.sample(8, steps=2, seed=3), run.sample(8, grid=[0.0, 0.75, 1.0], seed=3))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"grid": [0.1, 1.0]}, "grid"),
        ({"grid": [0.0, 0.9]}, "grid"),
        ({"grid": [0.0, 0.5, 0.5, 1.0]}, "grid"),
        ({"grid": [0.0, 0.7, 0.4, 1.0]}, "grid"),
        ({"grid": [0.0]}, "grid"),
        ({"steps": 0}, "steps"),
        ({"steps": 3, "grid": [0.0, 0.5, 1.0]}, "steps"),
        ({"steps": 2, "grid_power": 0.0}, "grid_power"),
    ],
)
def test_flow_map_config_rejects_bad_grids(kwargs: dict, field: str) -> None:
    with pytest.raises(SpecValueError) as info:
        FlowMapSamplerConfig(**kwargs)
    assert info.value.field == field


def test_samplers_run_a_real_flow_map_in_float32(registry) -> None:  # type: ignore[no-untyped-def]
    entry = registry.get("backbone", "mlp")
    backbone = entry.build(entry.config(width=16, depth=2, zero_init_output=False), BuildContext(data_shape=(2,)))
    model = FlowMap(backbone)
    x = torch.randn(10, 2)
    with torch.no_grad():
        for sampler in (FlowMapSampler(FlowMapSamplerConfig(steps=3)), Midpoint(FixedStepConfig(steps=4)), Dopri5(Dopri5Config(rtol=1e-3, atol=1e-3))):
            result = sampler(model, x)
            assert result.x.shape == x.shape and result.x.dtype == torch.float32
            assert torch.isfinite(result.x).all() and result.nfe > 0
