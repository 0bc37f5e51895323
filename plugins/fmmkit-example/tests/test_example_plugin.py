"""The example plugin's own tests, written with fmmkit's testing kit (``fmmkit.testing``) and the
fixtures of fmmkit's pytest plugin (``registered_interpolant``, ``gaussian_oracle``,
``fmmkit_registry``), which pytest loads through the ``pytest11`` entry point of fmmkit.

Run them with ``python -m pytest plugins/fmmkit-example/tests`` (fmmkit's own pytest configuration
also collects them).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from fmmkit.core import BuildContext, Interpolant
from fmmkit.testing import (
    GaussianProblem,
    assert_flow_map_laws,
    assert_interpolant_valid,
    assert_loss_minimised_by_exact_map,
    gaussian_problems,
    interpolants,
    time_triples,
)
from fmmkit_example import __version__
from fmmkit_example.components import PseudoHuberFlowMatching, QuadraticInterpolant, Ring

PLUGIN = "fmmkit-example"


def test_the_plugin_registers_its_components(fmmkit_registry) -> None:  # type: ignore[no-untyped-def]
    for kind, name in (("interpolant", "quadratic"), ("dataset", "ring"), ("loss", "pseudo_huber_flow_matching")):
        entry = fmmkit_registry.get(kind, name)
        assert entry.plugin == PLUGIN and entry.version == __version__


def test_every_registered_interpolant_is_valid_with_the_plugin_installed(registered_interpolant: Interpolant) -> None:
    assert_interpolant_valid(registered_interpolant)


@pytest.mark.parametrize("noise", [0.0, 0.3, 1.0])
def test_quadratic_interpolant_is_valid(noise: float) -> None:
    assert_interpolant_valid(QuadraticInterpolant(QuadraticInterpolant.Config(noise=noise)))


@settings(deadline=None)
@given(problem=gaussian_problems(interpolant=interpolants(["quadratic"])), triple=time_triples(order="both"))
def test_exact_gaussian_map_under_the_quadratic_interpolant_obeys_the_laws(
    problem: GaussianProblem, triple: tuple[float, float, float]
) -> None:
    s, u, t = triple
    assert_flow_map_laws(problem.oracle, problem.points(8, s), s, u, t, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("interpolant", ["quadratic", "linear"])
def test_pseudo_huber_loss_is_minimised_by_the_exact_map(interpolant: str, gaussian_oracle) -> None:  # type: ignore[no-untyped-def]
    """For Gaussian data dI/dt given I_t is Gaussian, hence symmetric about b_t: the robust loss keeps
    the conditional mean as its minimiser."""
    oracle = gaussian_oracle(interpolant, dim=2, seed=3)
    loss = PseudoHuberFlowMatching.build(PseudoHuberFlowMatching.Config(delta=0.1),
                                         BuildContext(data_shape=(2,), interpolant=oracle.interpolant))
    assert_loss_minimised_by_exact_map(loss, oracle, check_value=True)


def test_ring_samples_lie_on_the_ring() -> None:
    ring = Ring(Ring.Config(radius=1.5, width=0.05))
    x = ring.sample(2000, torch.Generator().manual_seed(0)).x1
    assert x.shape == (2000, 2)
    radius = x.norm(dim=1)
    assert abs(float(radius.mean()) - 1.5) < 0.01 and float(radius.std()) < 0.07
    lo, hi = ring.bounds()
    assert lo < float(x.min()) and float(x.max()) < hi


def test_the_plugin_loss_gets_fmmkits_loss_tables() -> None:
    """A FlowMapLoss subclass: the spec's [loss.times] reaches it, as for a built-in loss."""
    from pathlib import Path

    from fmmkit.losses import FlowMapLoss
    from fmmkit.spec import load_spec

    assert issubclass(PseudoHuberFlowMatching, FlowMapLoss)
    spec = load_spec(Path(__file__).parents[1] / "spec.toml")
    assert spec.loss.config.times.distribution == "logit_normal" and spec.loss.config.delta == 0.1
    loss = PseudoHuberFlowMatching.build(spec.loss.config, BuildContext(data_shape=(2,), interpolant=QuadraticInterpolant()))
    times = loss.sample_times(20000, torch.zeros(1))
    assert abs(float(times.mean()) - 0.5) < 0.01 and float(times.std()) < 0.25  # logit-normal, not uniform (0.29)
