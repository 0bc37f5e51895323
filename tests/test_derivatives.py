"""Every JVP-based derivative agrees with the float64 central difference on a smooth network.

The network is fmmkit's MLP (random, non-zero output layer, default sinusoidal time embedding with
frequencies up to 1000) in float64. Helpers are compared on values and on the gradient they pass to
the parameters; every loss with a ``derivative`` option gives the same loss value and parameter
gradient with either method. Tolerance: max |jvp - fd| <= 1e-5 max |jvp| (the central difference
with h = 1e-6 is accurate to ~1e-7 relative on this network; with h = 1e-4 it was off by 1e-3).
A backbone without forward-mode AD fails at build time, naming the finite-difference fallback.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fmmkit.core import derivatives as D
from fmmkit.core import Backbone, Batch, BuildContext, FlowMap
from fmmkit.core.loss import LossBuildError
from fmmkit.exact import GaussianFlowMap
from fmmkit.registry import get_registry
from fmmkit.spec.loader import _component

B = 64


def smooth_model(seed: int = 0) -> FlowMap:
    registry = get_registry()
    spec = _component({"kind": "mlp", "width": 32, "depth": 3, "zero_init_output": False}, "backbone", "model",
                      "test", registry)
    torch.manual_seed(seed)
    backbone = registry.build("backbone", "mlp", spec.config, BuildContext(data_shape=(2,)))
    return FlowMap(backbone).double()


def inputs(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 2, generator=g, dtype=torch.float64)
    a, b = torch.rand(B, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64)
    dx = torch.randn(B, 2, generator=g, dtype=torch.float64)
    return x, torch.minimum(a, b), torch.maximum(a, b), dx


def assert_close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    """max |got - want| <= rel * max |want| (norm-wise: elements near 0 are judged on the whole's scale)."""
    err, scale = float((got - want).abs().max()), float(want.abs().max())
    assert err <= rel * scale, f"max error {err:.3g} exceeds {rel:g} x {scale:.3g}"


def grads(model: torch.nn.Module) -> torch.Tensor:
    """All parameter gradients, flattened (zeros where a parameter got none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def assert_methods_agree(fn: Any) -> None:
    """fn(model, method) -> (value, derivative): compare jvp and finite_difference, values and gradients."""
    out = {}
    for method in ("jvp", "finite_difference"):
        model = smooth_model()
        value, deriv = fn(model, method)
        w = torch.linspace(-1, 1, deriv.numel(), dtype=torch.float64).reshape(deriv.shape)
        (deriv * w).sum().backward()
        out[method] = (value.detach(), deriv.detach(), grads(model))
    for fd, exact in zip(out["finite_difference"], out["jvp"]):
        assert_close(fd, exact)


HELPERS = {
    "time_derivative": lambda m, x, s, t, dx, k: D.time_derivative(m, x, s, t, method=k),
    "eulerian_derivative": lambda m, x, s, t, dx, k: D.eulerian_derivative(m, x, s, t, dx, method=k),
    "directional_map": lambda m, x, s, t, dx, k: D.directional_derivative(
        m, x, s, t, (dx, torch.full_like(s, 0.3), torch.full_like(t, -0.7)), method=k),
    "velocity_derivative": lambda m, x, s, t, dx, k: D.velocity_derivative(
        m, x, s, t, (dx, torch.full_like(s, -0.4), torch.full_like(t, 0.9)), method=k),
    "eulerian_velocity_derivative": lambda m, x, s, t, dx, k: D.eulerian_velocity_derivative(m, x, s, t, dx, method=k),
    "lagrangian_velocity_derivative": lambda m, x, s, t, dx, k: D.lagrangian_velocity_derivative(m, x, s, t, method=k),
}


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_jvp_matches_finite_difference(name: str) -> None:
    x, s, t, dx = inputs()
    assert_methods_agree(lambda model, method: HELPERS[name](model, x, s, t, dx, method))


def test_eulerian_map_and_velocity_forms_agree() -> None:
    """d/ds X + grad_x X b = b - v + (t - s)(d/ds v + grad_x v b), with X = x + (t - s) v."""
    model, (x, s, t, b) = smooth_model(), inputs()
    _, dx_map = D.eulerian_derivative(model, x, s, t, b)
    v, dv = D.eulerian_velocity_derivative(model, x, s, t, b)
    torch.testing.assert_close(dx_map, b - v + (t - s)[:, None] * dv, rtol=1e-10, atol=1e-12)


def test_lagrangian_map_and_velocity_forms_agree() -> None:
    """d/dt X_{s,t} = v + (t - s) d/dt v."""
    model, (x, s, t, _) = smooth_model(), inputs()
    _, dt_map = D.time_derivative(model, x, s, t)
    v, dt_v = D.lagrangian_velocity_derivative(model, x, s, t)
    torch.testing.assert_close(dt_map, v + (t - s)[:, None] * dt_v, rtol=1e-10, atol=1e-12)


def config_fields(name: str) -> set[str]:
    return {f.name for f in get_registry().get("loss", name).config.__attrs_attrs__}


def derivative_losses() -> list[str]:
    registry = get_registry()
    names = [n for n in registry.names("loss") if registry.get("loss", n).plugin.startswith("fmmkit.")]
    return [n for n in names if "derivative" in config_fields(n)]


def test_losses_with_a_derivative_option_are_the_expected_ones() -> None:
    assert set(derivative_losses()) == {
        "lagrangian_distillation", "eulerian_distillation", "ayf_eulerian", "ayf_lagrangian",
        "direct_flow_map_matching", "lagrangian_self_distillation", "eulerian_self_distillation", "meanflow",
        "consistency_training", "consistency_distillation",
    }


def make_loss(name: str, **config: Any) -> Any:
    registry = get_registry()
    ip_spec = _component({"kind": "linear"}, "interpolant", "interpolant", "test", registry)
    ip = registry.build("interpolant", "linear", ip_spec.config, BuildContext())
    spec = _component({"kind": name, **config}, "loss", "loss", "test", registry)
    return registry.build("loss", name, spec.config, BuildContext(data_shape=(2,), interpolant=ip)), ip


@pytest.mark.parametrize("name", derivative_losses())
def test_loss_value_and_gradient_agree_across_methods(name: str) -> None:
    """The whole loss (value and parameter gradient) is the same with jvp and finite_difference."""
    batch = Batch(torch.randn(B, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 1)
    out = {}
    for method in ("jvp", "finite_difference"):
        warmup = {"warmup_steps": 0} if "warmup_steps" in config_fields(name) else {}
        loss, ip = make_loss(name, derivative=method, **warmup)
        assert loss.needs_forward_ad == (method == "jvp")
        model = smooth_model()
        torch.manual_seed(3)
        teacher = GaussianFlowMap(ip, torch.tensor([0.5, -1.0]), torch.tensor([0.7, 1.2]))
        value = loss(model, batch, teacher=teacher, step=10).loss
        value.backward()
        out[method] = (value.detach().reshape(1), grads(model))
    for fd, exact in zip(out["finite_difference"], out["jvp"]):
        assert_close(fd, exact)


class NoForwardAD(Backbone):
    supports_forward_ad = False

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.lin(x)


@pytest.mark.parametrize("name", derivative_losses())
def test_jvp_losses_refuse_a_backbone_without_forward_ad(name: str) -> None:
    model = FlowMap(NoForwardAD())
    teacher = GaussianFlowMap(make_loss(name)[1], torch.zeros(2), torch.ones(2))
    with pytest.raises(LossBuildError, match="finite_difference"):
        make_loss(name)[0].check_model(model, teacher)
    make_loss(name, derivative="finite_difference")[0].check_model(model, teacher)
