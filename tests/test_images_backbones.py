"""The image backbones ``unet`` and ``dit``: shapes, conditioning, X_{t,t} = id, float32 time
embeddings, JVP against finite differences, dropout masks, and build errors."""

from __future__ import annotations

import pytest
import torch

from fmmkit.core import FlowMap
from fmmkit.core.errors import UserError
from fmmkit.core.derivatives import directional_derivative
from fmmkit.nets.conditioning import BackboneConfigError
from fmmkit.nets.dit import DiT, DiTConfig
from fmmkit.nets.unet import UNet, UNetConfig

TINY_UNET = dict(channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], groups=4, num_heads=2,
                 time_dim=8, dropout=0.0)
TINY_DIT = dict(depth=2, hidden_size=16, num_heads=2, patch_size=2, time_dim=8)

pytestmark = pytest.mark.usefixtures("one_thread")


def make(kind: str, shape: tuple[int, ...], num_classes: int | None = None, **overrides: object) -> torch.nn.Module:
    """A tiny backbone with every parameter perturbed (so zero-initialised layers do not hide anything)."""
    torch.manual_seed(0)
    if kind == "unet":
        model = UNet(UNetConfig(**{**TINY_UNET, **overrides}), shape, num_classes)  # type: ignore[arg-type]
    else:
        model = DiT(DiTConfig(**{**TINY_DIT, **overrides}), shape, num_classes)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


KINDS = ["unet", "dit"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
def test_output_shape_matches_input(kind: str, shape: tuple[int, ...]) -> None:
    model = make(kind, shape)
    x = torch.randn(4, *shape)
    v = model(x, torch.rand(4), torch.rand(4))
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_network_is_the_identity_map(kind: str) -> None:
    """Zero-initialised output layers: v = 0, so X_{s,t} = x before training."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY_UNET), (1, 8, 8)) if kind == "unet" else DiT(DiTConfig(**TINY_DIT), (1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(FlowMap(model)(x, torch.zeros(3), torch.ones(3)), x)


@pytest.mark.parametrize("kind", KINDS)
def test_diagonal_is_exactly_the_identity(kind: str) -> None:
    flow_map = FlowMap(make(kind, (1, 8, 8), num_classes=10))
    x, t = torch.randn(5, 1, 8, 8), torch.rand(5)
    assert torch.equal(flow_map(x, t, t, torch.arange(5)), x)
    assert not torch.equal(flow_map(x, t * 0.5, t, torch.arange(5)), x)  # ... and only there


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pair", ["s_t", "t_delta"])
def test_output_depends_on_both_times(kind: str, pair: str) -> None:
    model = make(kind, (1, 8, 8), time_pair=pair)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.7)
    v1, v2 = model(x, torch.full((2,), 0.1), t), model(x, torch.full((2,), 0.4), t)
    v3 = model(x, torch.full((2,), 0.1), torch.full((2,), 0.9))
    assert (v1 - v2).abs().max() > 1e-4 and (v1 - v3).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_class_conditioning_and_null_label(kind: str) -> None:
    model = make(kind, (1, 8, 8), num_classes=10)
    x, s, t = torch.randn(3, 1, 8, 8).expand(2, 3, 1, 8, 8).reshape(6, 1, 8, 8), torch.zeros(6), torch.ones(6) * 0.8
    v = model(x, s, t, torch.tensor([0, 1, 2, 3, 4, 5]))
    assert (v[0] - v[3]).abs().max() > 1e-4  # same input, different labels
    v_null = model(x, s, t, None)
    torch.testing.assert_close(v_null, model(x, s, t, torch.full((6,), 10)))  # None = the null class
    unconditional = make(kind, (1, 8, 8))
    torch.testing.assert_close(unconditional(x, s, t, torch.arange(6)), unconditional(x, s, t))


@pytest.mark.parametrize("kind", KINDS)
def test_label_dropout_drops_to_the_null_class_in_training_only(kind: str) -> None:
    model = make(kind, (1, 8, 8), num_classes=10, label_dropout=1.0)
    x, s, t, y = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.ones(2), torch.tensor([3, 7])
    null = model(x, s, t, None)
    assert (model(x, s, t, y) - null).abs().max() > 1e-4  # eval: labels kept
    model.train()
    torch.testing.assert_close(model(x, s, t, y), null)  # p = 1: always the null class


@pytest.mark.parametrize("kind", KINDS)
def test_time_embedding_stays_float32_under_autocast(kind: str) -> None:
    model = make(kind, (1, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = model.cond(torch.rand(2), torch.rand(2))
        v = model(torch.randn(2, 1, 8, 8), torch.rand(2), torch.rand(2))
    assert c.dtype == torch.float32 and torch.isfinite(v).all()


@pytest.mark.parametrize("kind", KINDS)
def test_jvp_matches_finite_differences(kind: str) -> None:
    """d/de X_{s + e ds, t + e dt}(x + e dx) by torch.func.jvp and by central differences (float64)."""
    flow_map = FlowMap(make(kind, (1, 8, 8), num_classes=10)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    s, t = torch.rand(3, generator=g, dtype=torch.float64) * 0.5, 0.5 + torch.rand(3, generator=g, dtype=torch.float64) * 0.5
    tangent = {"dx": torch.randn_like(x), "ds": torch.randn(3, generator=g, dtype=torch.float64),
               "dt": torch.ones(3, dtype=torch.float64)}
    y = torch.tensor([1, 5, 9])
    for output in ("map", "average_velocity"):
        f_j, d_j = directional_derivative(flow_map, x, s, t, **tangent, y=y, output=output, method="jvp")  # type: ignore[arg-type]
        f_f, d_f = directional_derivative(flow_map, x, s, t, **tangent, y=y, output=output,  # type: ignore[arg-type]
                                          method="finite_difference", fd_step=1e-6)
        torch.testing.assert_close(f_j, f_f, rtol=0, atol=1e-12)
        scale = float(d_f.detach().abs().max())
        assert scale > 1e-2
        torch.testing.assert_close(d_j, d_f, rtol=0, atol=1e-5 * scale)


def test_dropout_mask_is_shared_by_a_jvp_and_a_replayed_forward() -> None:
    """In training mode, a JVP and a second forward from the same RNG state see the same mask."""
    flow_map = FlowMap(make("unet", (1, 8, 8), dropout=0.5)).train()
    x, s, t = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.ones(2)
    state = torch.get_rng_state()
    value, _ = directional_derivative(flow_map, x, s, t, dt=torch.ones(2))
    torch.set_rng_state(state)
    replay = flow_map(x, s, t)
    other = flow_map(x, s, t)  # a fresh mask
    torch.testing.assert_close(value, replay, rtol=0, atol=1e-6)
    assert (other - replay).abs().max() > 1e-4


def test_dit_presets_resolve() -> None:
    b2 = DiTConfig(preset="B/2")
    assert (b2.resolved_depth, b2.resolved_hidden, b2.resolved_heads, b2.resolved_patch) == (12, 768, 12, 2)
    xl8 = DiTConfig(preset="XL/8", depth=2)
    assert (xl8.resolved_depth, xl8.resolved_hidden, xl8.resolved_heads, xl8.resolved_patch) == (2, 1152, 16, 8)
    model = DiT(DiTConfig(preset="S/4", depth=1), (3, 16, 16))
    assert model.grid == (4, 4) and model.positions.shape == (1, 16, 384)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: UNet(UNetConfig(**TINY_UNET), (2,)), "needs image data of shape"),
    (lambda: UNet(UNetConfig(**{**TINY_UNET, "channel_mult": [1, 1, 1, 1, 1]}), (1, 8, 8)), "divisible by 16"),
    (lambda: DiT(DiTConfig(**{**TINY_DIT, "patch_size": 3}), (1, 8, 8)), "patch 3 does not divide"),
])
def test_build_errors_are_one_line_user_errors(build, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackboneConfigError, match=match) as info:
        build()
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def test_config_validation_names_the_key() -> None:
    from fmmkit.core.validators import SpecValueError

    with pytest.raises(SpecValueError, match="groups"):
        UNetConfig(channels=12, groups=8)
    with pytest.raises(SpecValueError, match="num_heads"):
        DiTConfig(hidden_size=20, num_heads=3)


@pytest.mark.parametrize("kind", KINDS)
def test_max_frequency_reaches_the_condition_embedding(kind: str) -> None:
    """``max_frequency`` bounds the time derivative of the image backbones' time features (both times, and the
    second-time embedding a student from a one-time teacher adds), so a detached-derivative target stays small."""
    t = torch.rand(16, dtype=torch.float64)
    for max_frequency in (10.0, 1000.0):
        model = make(kind, (1, 8, 8), max_frequency=max_frequency)
        model.enable_second_time()
        cond = model.cond.double()
        for embed in (lambda u: cond.time(u, u), lambda u: cond.second.embed(u)):
            _, d_features = torch.func.jvp(embed, (t,), (torch.ones_like(t),))
            assert 0.5 * max_frequency < d_features.abs().max() <= max_frequency + 1e-9
