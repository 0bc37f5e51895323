"""fmmkit.testing, the kit for plugin authors: strategies draw what they promise, the assertion helpers
pass on exact objects and name what is wrong on broken ones, and the pytest plugin is active."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import find, given
from torch import Tensor

from fmmkit.core import Batch, BuildContext, FlowMap, Loss, LossOutput, VelocityField
from fmmkit.core.shapes import mean_squares
from fmmkit.exact import GaussianFlowMap
from fmmkit.losses.times import DiagonalHeavyTimes
from fmmkit.registry import get_registry
from fmmkit.testing import (
    assert_flow_map_laws,
    assert_loss_minimised_by_exact_map,
    batches,
    build_interpolant,
    interpolant_cases,
    time_pairs,
    time_triples,
    times,
)

pytest_plugins = ["pytester"]
F64 = torch.float64


@given(triple=time_triples(order="forward"))
def test_forward_triples_are_ordered(triple: tuple[float, float, float]) -> None:
    s, u, t = triple
    assert 0.0 <= s <= u <= t <= 1.0


def test_strategies_reach_reversed_orders_and_endpoints() -> None:
    s, u, t = find(time_triples(order="both"), lambda p: p[0] > p[1] > p[2])
    assert s > u > t
    assert find(times(), lambda t: t in (0.0, 1.0)) in (0.0, 1.0)
    assert find(time_pairs(order="forward", lo=0.2, hi=0.4), lambda p: p[1] - p[0] > 0.15)[0] >= 0.2


@given(x=batches(dims=(2, 5), sizes=(3, 7)))
def test_batches_shape_and_dtype(x: Tensor) -> None:
    assert x.dtype == F64 and 3 <= x.shape[0] <= 7 and 2 <= x.shape[1] <= 5
    assert bool(torch.isfinite(x).all())


class BentMap(GaussianFlowMap):
    """X*_{s,t}(x) + eps (t - s)^2 sin(x): identity and tangent hold, semigroup and Lagrangian do not."""

    eps = 0.05

    def forward(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        gap = torch.as_tensor(t, dtype=x.dtype) - torch.as_tensor(s, dtype=x.dtype)
        gap = gap.reshape(-1, *([1] * (x.ndim - 1))) if gap.ndim else gap
        return super().forward(x, s, t) + self.eps * gap**2 * torch.sin(x)


def _oracle(cls: type[GaussianFlowMap] = GaussianFlowMap) -> GaussianFlowMap:
    return cls(build_interpolant("linear"), torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64))


def test_flow_map_laws_pass_on_the_exact_map_and_name_the_broken_laws() -> None:
    x = torch.randn(32, 2, dtype=F64)
    assert_flow_map_laws(_oracle(), x, 0.1, 0.6, 0.9)
    bent = _oracle(BentMap)
    assert_flow_map_laws(bent, x, 0.1, 0.6, 0.9, laws=("identity", "tangent"))
    with pytest.raises(AssertionError) as info:
        assert_flow_map_laws(bent, x, 0.1, 0.6, 0.9, laws=("semigroup", "lagrangian", "invertibility"))
    message = str(info.value)
    assert "semigroup:" in message and "lagrangian:" in message and "invertibility:" in message
    assert "s = 0.1" in message


def test_a_wrong_velocity_breaks_the_differential_laws_only() -> None:
    x = torch.randn(16, 2, dtype=F64)
    other = GaussianFlowMap(build_interpolant("linear"), torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.6, 1.5], dtype=F64))
    assert_flow_map_laws(_oracle(), x, 0.2, 0.5, 0.7, velocity=other, laws=("identity", "semigroup", "invertibility"))
    with pytest.raises(AssertionError, match="lagrangian"):
        assert_flow_map_laws(_oracle(), x, 0.2, 0.5, 0.7, velocity=other, laws=("lagrangian",))


def _loss(name: str, interpolant: str = "linear", **config: object):  # type: ignore[no-untyped-def]
    entry = get_registry().get("loss", name)
    return entry.build(entry.config(**config), BuildContext(data_shape=(2,), interpolant=build_interpolant(interpolant)))


def _mean_conditional_variance(oracle: GaussianFlowMap) -> float:
    t = (torch.arange(4000, dtype=F64) + 0.5) / 4000  # midpoint rule for E_{t ~ U[0,1]}
    return float(oracle.conditional_variance(t).mean())


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
def test_flow_matching_is_minimised_at_the_conditional_variance(interpolant: str) -> None:
    loss = _loss("flow_matching", interpolant)
    oracle = GaussianFlowMap(loss.interpolant, torch.tensor([1.0, -0.5]), torch.tensor([0.6, 1.4]))
    values = assert_loss_minimised_by_exact_map(loss, oracle, check_value=True, expected=_mean_conditional_variance(oracle))
    assert values["exact"] > 0.1  # the floor is not 0


def test_distillation_is_zero_at_the_exact_map_and_self_distillation_at_eta_times_the_variance() -> None:
    assert_loss_minimised_by_exact_map(_loss("lagrangian_distillation"), check_value=True, expected=0.0, directions=2)
    lsd = _loss("lagrangian_self_distillation", times=DiagonalHeavyTimes(diagonal_fraction=0.75))
    oracle = GaussianFlowMap(lsd.interpolant, torch.tensor([1.0, -0.5]), torch.tensor([0.6, 1.4]))
    assert_loss_minimised_by_exact_map(lsd, oracle, directions=2, expected=0.75 * _mean_conditional_variance(oracle))


@attrs.define(frozen=True)
class _BiasedConfig:
    bias: float = 1.2


class BiasedFlowMatching(Loss):
    """|v_tt(I_t) - 1.2 dI_t/dt|^2: its minimiser is 1.2 b_t, not the exact velocity."""

    Config = _BiasedConfig

    def __call__(self, model: FlowMap, batch: Batch, *, teacher: VelocityField | None = None, step: int = 0) -> LossOutput:
        t = torch.rand(len(batch), dtype=batch.x1.dtype)
        path = self.interpolant.draw(batch.x1, t)
        return LossOutput(mean_squares(model.velocity(path.x_t, t) - self.config.bias * path.dx_t).mean())


def test_a_loss_with_the_wrong_minimiser_is_caught() -> None:
    loss = BiasedFlowMatching(_BiasedConfig(), build_interpolant("linear"))
    with pytest.raises(AssertionError, match="gradient vanishes at e = "):
        assert_loss_minimised_by_exact_map(loss, directions=3)


def test_the_pytest_plugin_is_registered_and_offers_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_interpolant(registered_interpolant):
            from fmmkit.testing import assert_interpolant_valid
            assert_interpolant_valid(registered_interpolant)

        def test_oracle(gaussian_oracle, fmmkit_registry):
            oracle = gaussian_oracle("trig", dim=3, seed=1)
            assert oracle.mean.shape == (3,) and "trig" in fmmkit_registry.names("interpolant")
        """
    )
    result = pytester.runpytest_inprocess("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(interpolant_cases()) + 1)
    result.stdout.fnmatch_lines(["*test_interpolant?linear-noise0.5? PASSED*"])
