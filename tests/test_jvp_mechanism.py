"""The faster derivative machinery of issue 13 computes what the formulation it replaced computed.

Reference implementations live here, not in the package: ``torch.func.jvp`` for :func:`fmmkit.core.jvp.jvp`,
and the shared loss machinery as it was before (one JVP over every row in ``eulerian_parts`` and
``lagrangian_parts``). Every
registered loss, on the MLP and on the attention UNet, gives the same value and the same parameter
gradients at a fixed seed with the package's machinery and with the references swapped in.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

import fmmkit.core.derivatives as derivatives_module
from fmmkit.core import Batch, BuildContext, FlowMap
from fmmkit.core.jvp import DualSiLU, FrozenWeightTangents, dual_numbers_unavailable, jvp
from fmmkit.core.shapes import broadcast_time
from fmmkit.core.derivatives import eulerian_velocity_derivative, time_derivative
from fmmkit.losses.base import FlowMapLoss
from fmmkit.registry import get_registry
from fmmkit.spec.loader import _component

from images_helpers import TINY_UNET_TABLE

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the references --------------------------------------------------------------------------------

def reference_jvp(fn: Any, primals: Any, tangents: Any, module: Any = None) -> tuple[Tensor, Tensor]:
    """fmmkit's JVP before issue 13."""
    return torch.func.jvp(fn, tuple(primals), tuple(tangents))


def reference_eulerian_parts(self: FlowMapLoss, model: FlowMap, x: Tensor, s: Tensor, t: Tensor, b: Tensor,
                             y: Tensor | None, *, diagonal: int = 0) -> tuple[Tensor, Tensor]:
    """``FlowMapLoss.eulerian_parts`` before issue 13: one JVP over every row, s = t rows included."""
    v, total = eulerian_velocity_derivative(model, x, s, t, dx=b, y=y, method=self.config.derivative)
    return v, broadcast_time(t - s, v).to(v.dtype) * total


def reference_lagrangian_parts(self: FlowMapLoss, model: FlowMap, x: Tensor, s: Tensor, t: Tensor,
                               y: Tensor | None, *, diagonal: int = 0) -> tuple[Tensor, Tensor]:
    """``FlowMapLoss.lagrangian_parts`` before issue 13, session 10: one JVP in t over every row."""
    return time_derivative(model, x, s, t, y=y, method=self.config.derivative)


@pytest.fixture
def reference_machinery(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A context manager that swaps the reference machinery in."""
    import contextlib

    @contextlib.contextmanager
    def swapped() -> Any:
        with monkeypatch.context() as m:
            m.setattr(derivatives_module, "jvp", reference_jvp)
            m.setattr(FlowMapLoss, "eulerian_parts", reference_eulerian_parts)
            m.setattr(FlowMapLoss, "lagrangian_parts", reference_lagrangian_parts)
            yield

    return swapped


def assert_close_to_scale(a: Tensor, b: Tensor, what: str, rel: float = 1e-4) -> None:
    """max |a - b| <= rel * max |b| (float32 rounding of sums whose terms are far larger than some entries)."""
    scale = float(b.abs().max())
    assert float((a - b).abs().max()) <= rel * scale + 1e-12, f"{what}: max difference {float((a - b).abs().max()):.3g} " \
        f"against a scale of {scale:.3g}"


# ---- the JVP itself ----------------------------------------------------------------------------------

def build_model(table: dict[str, Any], shape: tuple[int, ...], num_classes: int | None = None) -> FlowMap:
    registry = get_registry()
    component = _component(table, "backbone", "model", "test", registry)
    backbone = registry.build("backbone", table["kind"], component.config,
                              BuildContext(data_shape=shape, num_classes=num_classes))
    return FlowMap(backbone)


MLP_TABLE = {"kind": "mlp", "width": 32, "depth": 3, "time_dim": 8, "zero_init_output": False}
DIT_TABLE = {"kind": "dit", "patch_size": 2, "hidden_size": 16, "depth": 1, "num_heads": 2, "time_dim": 8}


def nonzero_output(model: FlowMap) -> FlowMap:
    """Zero-initialised output layers would hide most of the network from the gradients: randomise them."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("table, shape", [(MLP_TABLE, (2,)), (TINY_UNET_TABLE, (1, 8, 8)), (DIT_TABLE, (1, 8, 8))],
                         ids=["mlp", "unet", "dit"])
def test_jvp_and_its_gradients_equal_torch_func_jvp(table: dict[str, Any], shape: tuple[int, ...]) -> None:
    model = nonzero_output(build_model(table, shape, num_classes=3))
    n = 6
    x, dx = torch.randn(n, *shape), torch.randn(n, *shape)
    s, t = torch.rand(n) * 0.5, 0.5 + torch.rand(n) * 0.5
    ds, dt = torch.randn(n), torch.randn(n)
    y = torch.randint(0, 3, (n,))

    def fn(x_: Tensor, s_: Tensor, t_: Tensor) -> Tensor:
        return model(x_, s_, t_, y)

    results = []
    for mechanism in (jvp, reference_jvp):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks
        with model.forward_ad_mode():
            value, tangent = mechanism(fn, (x, s, t), (dx, ds, dt))
        (value.square().sum() + (value * tangent).sum() + tangent.square().sum()).backward()
        results.append((value.detach(), tangent.detach(), [p.grad.clone() for p in model.parameters()]))
    (v, d, g), (v_ref, d_ref, g_ref) = results
    assert_close_to_scale(v, v_ref, "value", 1e-5)
    assert_close_to_scale(d, d_ref, "tangent", 1e-5)
    for (name, _), a, b in zip(model.named_parameters(), g, g_ref):
        assert_close_to_scale(a, b, f"gradient of {name}")


def test_frozen_weight_tangents_skip_only_the_zero_weight_product() -> None:
    """Inside the mode a dual input takes two products (primal, tangent); a dual weight keeps forward AD."""
    lin = nn.Linear(3, 4)
    x, dx, dw = torch.randn(5, 3), torch.randn(5, 3), torch.randn(4, 3)
    with fwAD.dual_level(), FrozenWeightTangents():
        out = fwAD.unpack_dual(lin(fwAD.make_dual(x, dx)))
        torch.testing.assert_close(out.tangent, dx @ lin.weight.T)
        torch.testing.assert_close(out.primal, lin(x))
        both = fwAD.unpack_dual(nn.functional.linear(fwAD.make_dual(x, dx), fwAD.make_dual(lin.weight.detach(), dw)))
        torch.testing.assert_close(both.tangent, dx @ lin.weight.T + x @ dw.T)


def test_dual_silu_is_silu_and_its_derivative_with_exact_gradients() -> None:
    z = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    dz = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    h, dh = DualSiLU.apply(z, dz)
    (slope,) = torch.autograd.grad(nn.functional.silu(z).sum(), z)
    torch.testing.assert_close(h, nn.functional.silu(z))
    torch.testing.assert_close(dh, slope * dz)
    assert torch.autograd.gradcheck(DualSiLU.apply, (z, dz))
    assert torch.autograd.gradgradcheck(DualSiLU.apply, (z, dz))


#: a dual number a (5, 1) against a factor c (1, 3) without a tangent: products, quotients, sums, differences
CONSTANT_FACTOR_OPS: dict[str, Any] = {
    "a * c": lambda a, c: a * c, "c * a": lambda a, c: c * a, "2.5 * a": lambda a, c: 2.5 * a,
    "torch.mul(a, c)": lambda a, c: torch.mul(a, c), "a.mul(c)": lambda a, c: a.mul(c),
    "a / c": lambda a, c: a / c, "c / a": lambda a, c: c / a, "a / 4": lambda a, c: a / 4,
    "a + c": lambda a, c: a + c, "c + a": lambda a, c: c + a, "a - c": lambda a, c: a - c,
    "c - a": lambda a, c: c - a, "1 - a": lambda a, c: 1 - a,
    "torch.add(c, a, alpha=3)": lambda a, c: torch.add(c, a, alpha=3.0),
    "torch.sub(c, a, alpha=2)": lambda a, c: torch.sub(c, a, alpha=2.0),
    "a.float() * c (dtype promotion)": lambda a, c: a.float() * c,
    "(3 a + 1) / c - 2 a": lambda a, c: (a * 3 + 1) / c - 2 * a,
}


@pytest.mark.parametrize("op", sorted(CONSTANT_FACTOR_OPS))
def test_a_dual_number_times_a_constant_equals_torch_func_jvp(op: str) -> None:
    """Value, tangent (same shape as the value) and the gradients through both, against torch.func.jvp."""
    fn = CONSTANT_FACTOR_OPS[op]
    a = torch.rand(5, 1, dtype=torch.float64, requires_grad=True)
    c, da = torch.rand(1, 3, dtype=torch.float64) + 0.5, torch.rand(5, 1, dtype=torch.float64)
    got, ref = jvp(lambda x: fn(x, c), (a,), (da,)), torch.func.jvp(lambda x: fn(x, c), (a,), (da,))
    assert got[1].shape == got[0].shape == ref[0].shape
    for mine, theirs in zip(got, ref):
        torch.testing.assert_close(mine.double(), theirs.double())
    grads = [torch.autograd.grad(value.sum() + (tangent ** 2).sum(), a)[0] for value, tangent in (got, ref)]
    torch.testing.assert_close(*grads)


@pytest.mark.parametrize("norm", ["group_norm", "layer_norm"])
@pytest.mark.parametrize("affine", ["weight and bias", "weight", "bias"])
def test_a_normalization_with_a_constant_affine_map_equals_torch_func_jvp(norm: str, affine: str) -> None:
    """Value, tangent and the gradients through both (input, weight and bias) against torch.func.jvp."""
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    dx = torch.randn(3, 4, 5, dtype=torch.float64)
    shape = (4,) if norm == "group_norm" else (4, 5)
    weight = (torch.randn(shape, dtype=torch.float64) + 2).requires_grad_() if "weight" in affine else None
    bias = torch.randn(shape, dtype=torch.float64).requires_grad_() if "bias" in affine else None

    def fn(u: Tensor) -> Tensor:
        if norm == "group_norm":
            return nn.functional.group_norm(u, 2, weight, bias, eps=1e-5)
        return nn.functional.layer_norm(u, (4, 5), weight=weight, bias=bias)

    got, ref = jvp(fn, (x,), (dx,)), torch.func.jvp(fn, (x,), (dx,))
    for mine, theirs in zip(got, ref):
        torch.testing.assert_close(mine, theirs)
    leaves = [p for p in (x, weight, bias) if p is not None]
    grads = [torch.autograd.grad(value.sin().sum() + (tangent ** 2).sum(), leaves) for value, tangent in (got, ref)]
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs)


def test_a_constant_factor_makes_no_efficient_zero_tangent() -> None:
    """This torch's own forward-mode rule for a * c with c tangent-free builds an "efficient zero" tangent
    for c, whose kernels add a fixed ~0.16 ms per call (30x a product of two small dual numbers; RESULTS.md,
    "Issue 13, session 10"); :func:`jvp` takes the product's tangent as da * c instead."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    t, c = torch.rand(16), torch.rand(1, 4)
    with Ops() as ops:
        jvp(lambda x: x[:, None] * c - 1.0, (t,), (torch.ones_like(t),))
    with Ops() as reference:
        torch.func.jvp(lambda x: x[:, None] * c - 1.0, (t,), (torch.ones_like(t),))
    assert any("_efficientzerotensor" in name for name in reference.names)  # what the rule avoids
    assert not any("_efficientzerotensor" in name for name in ops.names), ops.names


def test_jvp_composes_with_functorch_transforms() -> None:
    """Under vmap (no batching rule for dual numbers) it falls back to torch.func.jvp; under jvp and grad
    dual numbers run inside the transform."""
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    x, dx, dx2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    assert not dual_numbers_unavailable()
    torch.testing.assert_close(torch.func.vmap(lambda a, d: jvp(net, (a,), (d,))[1])(x, dx),
                               torch.func.vmap(lambda a, d: reference_jvp(net, (a,), (d,))[1])(x, dx))
    torch.testing.assert_close(torch.func.jvp(lambda a: jvp(net, (a,), (dx,))[1], (x,), (dx2,))[1],
                               torch.func.jvp(lambda a: reference_jvp(net, (a,), (dx,))[1], (x,), (dx2,))[1])
    torch.testing.assert_close(torch.func.grad(lambda a: jvp(net, (a,), (dx,))[1].sum())(x),
                               torch.func.grad(lambda a: reference_jvp(net, (a,), (dx,))[1].sum())(x))


# ---- every loss -------------------------------------------------------------------------------------

def make_loss(name: str, shape: tuple[int, ...], teacher: Any, table: dict[str, Any] | None = None) -> Any:
    registry = get_registry()
    component = _component({"kind": name, **(table or {})}, "loss", "loss", "test", registry)
    ip = registry.build("interpolant", "linear", _component({"kind": "linear"}, "interpolant", "interpolant", "test",
                                                             registry).config, BuildContext())
    return registry.build("loss", name, component.config,
                          BuildContext(data_shape=shape, interpolant=ip, teacher=teacher))


def loss_and_gradients(loss: Any, model: FlowMap, batch: Batch, teacher: Any, seed: int) -> tuple[Tensor, list[Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = loss(model, batch, teacher=teacher, step=10_000)
    out.loss.backward()
    return out.loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def assert_same_loss(name: str, table: dict[str, Any], shape: tuple[int, ...], reference_machinery: Any,
                     n: int = 64, loss_table: dict[str, Any] | None = None) -> None:
    model = nonzero_output(build_model(table, shape))
    teacher = nonzero_output(build_model(table, shape)).eval().requires_grad_(False)
    batch = Batch(torch.randn(n, *shape))
    for seed in (0, 1):
        fast = loss_and_gradients(make_loss(name, shape, teacher, loss_table), model, batch, teacher, seed)
        with reference_machinery():
            ref = loss_and_gradients(make_loss(name, shape, teacher, loss_table), model, batch, teacher, seed)
        assert_close_to_scale(fast[0], ref[0], f"{name}: loss value", 1e-5)
        for (pname, _), a, b in zip(model.named_parameters(), fast[1], ref[1]):
            assert_close_to_scale(a, b, f"{name}: gradient of {pname}")


@pytest.mark.parametrize("name", sorted(get_registry().names("loss")))
def test_every_loss_equals_its_reference_formulation_on_the_mlp(name: str, reference_machinery: Any) -> None:
    assert_same_loss(name, MLP_TABLE, (2,), reference_machinery)


#: the distillation losses whose s = t rows skip the JVP, with the semigradient variants where they exist
DIAGONAL_SPLIT = [("lagrangian_distillation", {}), ("lagrangian_distillation", {"semigradient": True}),
                  ("eulerian_distillation", {}), ("eulerian_distillation", {"semigradient": True}),
                  ("ayf_eulerian", {})]


@pytest.mark.parametrize(("name", "extra"), DIAGONAL_SPLIT)
def test_distillation_s_equal_t_rows_without_a_jvp_equal_one_jvp_over_every_row(
        name: str, extra: dict[str, Any], reference_machinery: Any) -> None:
    """With half the batch on s = t (``[loss.times] diagonal_fraction = 0.5``), LMD's and EMD's plain passes on
    those rows (X_{t,t} = x, d/dt X = v_{t,t}; the Eulerian transport term is 0) give the value and the
    parameter gradients of one JVP over every row."""
    loss_table = {"times": {"diagonal_fraction": 0.5}, **extra}
    assert make_loss(name, (2,), None, loss_table).diagonal_rows(64) == 32
    assert_same_loss(name, MLP_TABLE, (2,), reference_machinery, loss_table=loss_table)


@pytest.mark.parametrize("name", ["lagrangian_self_distillation", "meanflow", "lagrangian_distillation",
                                  "eulerian_distillation"])
def test_derivative_losses_equal_their_reference_formulation_on_the_unet(name: str, reference_machinery: Any) -> None:
    """Dropout off: where the machinery splits a batch into two passes (MeanFlow's s = t rows), dropout
    draws its masks in two calls instead of one, the same distribution but not the same draws."""
    assert_same_loss(name, {**TINY_UNET_TABLE, "dropout": 0.0}, (1, 8, 8), reference_machinery, n=8)
