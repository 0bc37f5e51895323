"""Attention backends: the forward-mode attention Function against ``math`` (value, JVP, gradient,
gradient of the JVP), the registry, and the automatic switch away from ``sdpa`` for derivatives."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn import functional as F

from fmmkit.core import FlowMap
from fmmkit.core.attention import AttentionBackendError
from fmmkit.core.derivatives import time_derivative
from fmmkit.nets.attention import SelfAttention, resolve_backend
from fmmkit.nets.attention.functional import ForwardADAttention, forward_ad_attention, math_attention
from fmmkit.nets.unet import UNet, UNetConfig
from fmmkit.registry import load_registry
from fmmkit.spec import SpecError, load_spec
from fmmkit.training.build import build_pipeline

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(n: int = 5, m: int = 7, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, n, d, generator=g, dtype=F64)
    k = torch.randn(2, 3, m, d, generator=g, dtype=F64)
    v = torch.randn(2, 3, m, d + 1, generator=g, dtype=F64)
    return q, k, v


def test_values_agree_with_math_and_sdpa() -> None:
    q, k, v = qkv()
    reference = math_attention(q, k, v)
    torch.testing.assert_close(forward_ad_attention(q, k, v), reference, rtol=0, atol=1e-13)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), reference, rtol=0, atol=1e-12)
    # softmax rows sum to 1: attention of constant values returns the constant
    ones = torch.ones_like(v)
    torch.testing.assert_close(forward_ad_attention(q, k, ones), torch.ones(2, 3, 5, 5, dtype=F64))


def test_jvp_agrees_with_math() -> None:
    q, k, v = qkv()
    tangents = qkv(seed=1)
    out_f, jvp_f = torch.func.jvp(forward_ad_attention, (q, k, v), tangents)
    out_m, jvp_m = torch.func.jvp(math_attention, (q, k, v), tangents)
    torch.testing.assert_close(out_f, out_m, rtol=0, atol=1e-13)
    torch.testing.assert_close(jvp_f, jvp_m, rtol=0, atol=1e-12)
    assert jvp_m.abs().max() > 0.1  # a non-trivial tangent


def test_gradients_agree_with_math() -> None:
    """The VJP of a scalar of the output, and the gradient of a scalar of the JVP (a JVP loss)."""
    q, k, v = qkv()
    tangents = qkv(seed=1)
    weights = torch.randn(2, 3, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(2))

    def grads(fn):  # type: ignore[no-untyped-def]
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out, tangent = torch.func.jvp(fn, tuple(leaves), tangents)
        loss = (weights * out).sum() + tangent.pow(2).sum() + (out * tangent).sum()
        return torch.autograd.grad(loss, leaves)

    for g_f, g_m in zip(grads(forward_ad_attention), grads(math_attention)):
        torch.testing.assert_close(g_f, g_m, rtol=0, atol=1e-11)


def test_gradcheck_both_modes() -> None:
    """Finite differences against the hand-written VJP and JVP rules (and the P output's cotangent)."""
    q, k, v = (x[:1, :2, :3, :3].clone().requires_grad_() for x in qkv())
    fn = lambda a, b, c: ForwardADAttention.apply(a, b, c, 0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), check_forward_ad=True, check_backward_ad=True)


def test_vmap_over_the_function() -> None:
    """generate_vmap_rule: the Function vmaps over a leading dimension (per-sample (H, N, D) inputs)."""
    q, k, v = qkv()
    batched = torch.func.vmap(lambda a, b, c: ForwardADAttention.apply(a, b, c, 0.5)[0])(q, k, v)
    torch.testing.assert_close(batched, math_attention(q, k, v, scale=0.5))


def test_registry_lists_the_backends_and_flags() -> None:
    registry = load_registry(entry_points=False)
    names = set(registry.names("attention_backend"))
    assert {"sdpa", "math", "forward_ad"} <= names
    flags = {n: registry.get("attention_backend", n).component.supports_forward_ad for n in ("sdpa", "math", "forward_ad")}
    assert flags == {"sdpa": False, "math": True, "forward_ad": True}


def test_unknown_backend_is_a_one_line_error() -> None:
    with pytest.raises(AttentionBackendError) as info:
        resolve_backend("forward_a", "attention")
    assert "\n" not in str(info.value) and "did you mean 'forward_ad'" in str(info.value)
    assert str(info.value).startswith("model.attention: ")


def test_sdpa_has_no_forward_ad_here() -> None:
    """The pitfall the switch exists for: torch.func.jvp through fused SDPA raises on this CPU."""
    q, k, _ = (x.float() for x in qkv(n=8, m=8, d=8))
    v = k.clone()  # equal head widths: the shape the CPU flash kernel takes
    with pytest.raises(NotImplementedError):
        torch.func.jvp(F.scaled_dot_product_attention, (q, k, v), (q, k, v))


def _unet(attention: str, forward_ad_attention: str = "forward_ad") -> FlowMap:
    torch.manual_seed(0)
    cfg = UNetConfig(channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[8, 4], groups=4,
                     num_heads=2, time_dim=8, dropout=0.0, attention=attention, forward_ad_attention=forward_ad_attention)
    model = FlowMap(UNet(cfg, (1, 8, 8))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_switch_makes_sdpa_backbone_jvp_work() -> None:
    """directional_derivative enters forward_ad_mode(): an sdpa UNet gives the JVP of a math UNet (in float64, so
    that the two attention kernels' float rounding, which differs between CPUs, stays far below the tolerance)."""
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    s, t = torch.rand(3, dtype=torch.float64) * 0.5, 0.5 + torch.rand(3, dtype=torch.float64) * 0.5
    sdpa_model, math_model = _unet("sdpa").double(), _unet("math", "math").double()
    math_model.load_state_dict(sdpa_model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the mode selected forward_ad up front
        f1, d1 = time_derivative(sdpa_model, x, s, t)
    f2, d2 = time_derivative(math_model, x, s, t)
    torch.testing.assert_close(f1, f2, rtol=0, atol=1e-10)
    torch.testing.assert_close(d1, d2, rtol=0, atol=1e-10)
    layers = sdpa_model.backbone.attention_layers()
    assert len(layers) >= 3 and all(layer.forward_ad_depth == 0 for layer in layers)  # the mode was left


def test_direct_torch_func_jvp_falls_back_with_a_warning() -> None:
    model = _unet("sdpa")
    x, s, t = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.ones(2)
    with pytest.warns(RuntimeWarning, match="using ForwardADAttentionBackend instead"):
        out, tangent = torch.func.jvp(lambda t_: model(x, s, t_), (t,), (torch.ones(2),))
    _, expected = time_derivative(model, x, s, t)  # fmmkit's dual-number JVP: the same up to float32 rounding
    torch.testing.assert_close(tangent, expected, rtol=1e-4, atol=1e-4)


def test_derivative_backend_without_forward_ad_fails_a_jvp_loss_at_build() -> None:
    raw = {"data": {"kind": "digits"}, "loss": {"kind": "lagrangian_self_distillation"}, "train": {"device": "cpu"},
           "model": {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4,
                     "num_heads": 2, "time_dim": 8, "attention_resolutions": [4], "forward_ad_attention": "sdpa"}}
    with pytest.raises(SpecError, match="does not support torch.func.jvp"):
        build_pipeline(load_spec(raw))
    raw["loss"] = {"kind": "flow_matching"}  # no derivative: builds
    assert not build_pipeline(load_spec(raw)).model.supports_forward_ad


def test_layer_uses_backend_per_mode() -> None:
    sdpa, fwd = resolve_backend("sdpa", "attention"), resolve_backend("forward_ad", "forward_ad_attention")
    layer = SelfAttention(8, 2, sdpa, fwd)
    assert layer.active_backend() is sdpa
    layer.forward_ad_depth += 1
    assert layer.active_backend() is fwd
