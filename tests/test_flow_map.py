"""The FlowMap parametrisation X_{s,t} = x + (t - s) v_{s,t} and the MLP backbone."""

from __future__ import annotations

import pytest
import torch

from fmmkit.core import BuildContext, FlowMap
from fmmkit.core.derivatives import time_derivative
from fmmkit.nets.mlp import MLP, MLPConfig


def make_map(pair: str = "s_t", embedding: str = "sinusoidal", num_classes: int | None = None) -> FlowMap:
    config = MLPConfig(width=32, depth=2, time_embedding=embedding, time_pair=pair, zero_init_output=False)
    return FlowMap(MLP.build(config, BuildContext(data_shape=(3,), num_classes=num_classes))).double()


@pytest.mark.parametrize("pair", ["s_t", "t_delta"])
@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier", "identity"])
def test_identity_on_the_diagonal_is_exact(pair: str, embedding: str) -> None:
    model = make_map(pair, embedding)
    x = torch.randn(16, 3, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64)
    assert torch.equal(model(x, t, t), x)
    assert not torch.allclose(model(x, t, (t + 0.3).clamp(max=1)), x)


def test_per_sample_times_are_independent() -> None:
    model = make_map()
    x = torch.randn(4, 3, dtype=torch.float64)
    s = torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64)
    t = torch.tensor([1.0, 0.7, 0.5, 0.2], dtype=torch.float64)
    batched = model(x, s, t)
    one_by_one = torch.cat([model(x[i : i + 1], s[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, one_by_one)


def test_tangent_on_the_diagonal_is_the_velocity() -> None:
    model = make_map()
    x = torch.randn(8, 3, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64)
    _, dt_x = time_derivative(model, x, t, t)
    torch.testing.assert_close(dt_x, model.velocity(x, t))


def test_class_conditioning_changes_the_output() -> None:
    model = make_map(num_classes=3)
    x = torch.randn(6, 3, dtype=torch.float64)
    s, t = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    y0, y1 = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    assert not torch.allclose(model(x, s, t, y0), model(x, s, t, y1))
    assert model(x, s, t, None).shape == x.shape  # unconditional: the null label


def test_wrong_point_shape_names_the_shape() -> None:
    with pytest.raises(AssertionError, match=r"\(3,\), got \(4,\)"):
        make_map()(torch.randn(2, 4, dtype=torch.float64), 0.0, 1.0)


def test_max_frequency_bounds_the_time_derivative_of_the_features() -> None:
    from fmmkit.nets.embeddings import TwoTimeEmbedding

    t = torch.rand(32, dtype=torch.float64)
    for max_frequency in (10.0, 1000.0):
        embed = TwoTimeEmbedding(8, max_frequency=max_frequency).double()
        _, d_features = torch.func.jvp(lambda t_: embed(t_, t_), (t,), (torch.ones_like(t),))
        assert d_features.abs().max() <= max_frequency + 1e-9
        assert d_features.abs().max() > 0.5 * max_frequency


@pytest.mark.parametrize("pair", ["s_t", "t_delta"])
def test_identity_time_embedding_is_the_raw_times(pair: str) -> None:
    from fmmkit.nets.embeddings import TwoTimeEmbedding

    s, t = torch.tensor([0.1, 0.4], dtype=torch.float64), torch.tensor([0.5, 0.9], dtype=torch.float64)
    embed = TwoTimeEmbedding(64, "identity", pair)
    second = t if pair == "s_t" else t - s
    assert embed.dim == 2
    torch.testing.assert_close(embed(s, t), torch.stack([s if pair == "s_t" else t, second], dim=1))
    _, d_features = torch.func.jvp(lambda t_: embed(s, t_), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(d_features, torch.tensor([[0.0, 1.0]] * 2, dtype=torch.float64) if pair == "s_t"
                               else torch.tensor([[1.0, 1.0]] * 2, dtype=torch.float64))
    mlp = MLP.build(MLPConfig(width=16, depth=2, time_embedding="identity"), BuildContext(data_shape=(3,)))
    assert mlp.inp.in_features == 3 + 2
