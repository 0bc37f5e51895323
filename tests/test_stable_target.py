"""The stable velocity target (``[loss] velocity_target = "stable"``): a low-variance, consistent estimate of
E[dI_t/dt | I_t] from the batch, checked against the exact Gaussian velocity."""

from __future__ import annotations

import pytest
import torch

from fmmkit.core import Batch
from fmmkit.exact import GaussianFlowMap
from fmmkit.interpolants.config import InterpolantConfig
from fmmkit.interpolants.linear import LinearInterpolant
from fmmkit.interpolants.trig import TrigInterpolant
from fmmkit.losses.stable_target import stable_velocity
from fmmkit.spec import SpecError, load_spec

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
STD = torch.tensor([0.5, 1.5], dtype=F64)


def gaussian_path(interpolant, n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    x1 = MEAN + STD * torch.randn(n, 2, generator=g, dtype=F64)
    t = 0.02 + 0.96 * torch.rand(n, generator=g, dtype=F64)
    torch.manual_seed(seed)
    return interpolant.draw(x1, t)


@pytest.mark.parametrize("interpolant", [LinearInterpolant(), TrigInterpolant(),
                                         LinearInterpolant(InterpolantConfig(noise=0.5))],
                         ids=["linear", "trig", "linear-stochastic"])
def test_stable_target_estimates_the_exact_velocity_with_far_less_variance(interpolant) -> None:  # type: ignore[no-untyped-def]
    exact = GaussianFlowMap(interpolant, MEAN, STD)
    errors = []
    for n, share in ((256, 0.5), (4096, 0.1)):
        path = gaussian_path(interpolant, n)
        b = exact.velocity(path.x_t, path.t)
        errors.append(float((stable_velocity(interpolant, path) - b).pow(2).mean()))
        conditional = float((path.dx_t - b).pow(2).mean())
        assert errors[-1] < share * conditional
    assert errors[1] < 0.4 * errors[0]  # consistent: the error falls with the batch


def test_a_larger_reference_that_holds_the_rows_lowers_the_error() -> None:
    """Rows of a 256-point part estimated over a 4096-point batch that holds them: the error is that of the
    bigger batch, and the rows' own reference is the default."""
    ip = LinearInterpolant()
    exact = GaussianFlowMap(ip, MEAN, STD)
    path = gaussian_path(ip, 4096)
    rows = ip.draw(path.x1[:256], path.t[:256])
    b = exact.velocity(rows.x_t, rows.t)
    own = float((stable_velocity(ip, rows) - b).pow(2).mean())
    batch = float((stable_velocity(ip, rows, reference=path.x1) - b).pow(2).mean())
    assert batch < 0.5 * own
    assert torch.equal(stable_velocity(ip, rows, reference=rows.x1), stable_velocity(ip, rows))


def test_self_distillation_takes_the_whole_batch_as_the_reference() -> None:
    """LSD's diagonal rows (half the batch) regress on the estimate over all the batch's data points."""
    from fmmkit.losses.lagrangian_self_distillation import LagrangianSelfDistillation, SelfDistillationConfig

    ip = LinearInterpolant()
    loss = LagrangianSelfDistillation(SelfDistillationConfig(velocity_target="stable"), ip)
    batch = Batch(MEAN + STD * torch.randn(512, 2, generator=torch.Generator().manual_seed(3), dtype=F64))
    seen = []
    original = loss.velocity_target

    def spy(model, path, y, reference=None):  # type: ignore[no-untyped-def]
        seen.append(reference)
        return original(model, path, y, reference)

    loss.velocity_target = spy  # type: ignore[method-assign]
    from fmmkit.core import FlowMap
    from fmmkit.nets.mlp import MLP, MLPConfig

    loss(FlowMap(MLP(MLPConfig(width=16, depth=2), (2,)).double()), batch)
    assert len(seen) == 1 and seen[0] is not None and torch.equal(seen[0].x1, batch.x1)


def test_stable_target_is_the_conditional_target_near_the_data_end() -> None:
    ip = LinearInterpolant()
    path = gaussian_path(ip, 512)
    path.t.fill_(1 - 1e-4)
    path = ip.draw(path.x1, path.t)
    assert torch.allclose(stable_velocity(ip, path), path.dx_t, atol=1e-6)


def test_labels_restrict_the_reference_to_the_rows_class() -> None:
    ip = LinearInterpolant()
    x1 = torch.cat([torch.full((200, 2), -3.0, dtype=F64), torch.full((200, 2), 3.0, dtype=F64)])
    y = torch.cat([torch.zeros(200), torch.ones(200)]).long()
    t = torch.full((400,), 0.05, dtype=F64)
    path = ip.draw(x1, t)
    # at t = 0.05 the batch's posterior barely moves from the prior: unlabelled, E[x1 | x] ~ 0; per class, its mean
    assert float(stable_velocity(ip, path).mean()) == pytest.approx(0.0, abs=0.5)
    labelled = stable_velocity(ip, path, y, null_label=2)
    x1_hat = path.x_t + 0.95 * labelled  # linear: b = (E[x1 | x] - x) / (1 - t); one point per class, so exact
    assert torch.allclose(x1_hat, x1, atol=1e-9)
    dropped = stable_velocity(ip, path, torch.full((400,), 2).long(), null_label=2)  # null label: every row
    assert torch.allclose(dropped, stable_velocity(ip, path))


@pytest.mark.parametrize("block", [1, 7, 2**20])
def test_blocks_of_rows_give_the_posterior_mean_of_the_textbook_softmax(monkeypatch, block: int) -> None:  # type: ignore[no-untyped-def]
    import fmmkit.losses.stable_target as stable_target

    monkeypatch.setattr(stable_target, "_BLOCK_ELEMENTS", block * 50)  # 50 reference points: `block` rows a block
    ip = LinearInterpolant()
    path = gaussian_path(ip, 64, seed=3)
    g = torch.Generator().manual_seed(4)
    reference = MEAN + STD * torch.randn(50, 2, generator=g, dtype=F64)
    y, reference_y = torch.randint(0, 3, (64,), generator=g), torch.randint(0, 3, (50,), generator=g)
    reference_y[:3] = torch.arange(3)  # every class has a reference point
    y[:5] = 3  # the null label: every reference point
    alpha, beta = ip.alpha(path.t), ip.beta(path.t)
    log_w = -((path.x_t[:, None, :] - beta[:, None, None] * reference[None]) ** 2).sum(-1) / (2 * alpha[:, None] ** 2)
    allowed = (y[:, None] == reference_y[None, :]) | (y[:, None] == 3)
    m = torch.softmax(log_w.masked_fill(~allowed, float("-inf")), dim=1) @ reference  # E[x1 | x_t] over the reference
    expected = (m - path.x_t) / (1 - path.t)[:, None]  # linear: b = (E[x1 | x] - x) / (1 - t)
    got = stable_velocity(ip, path, y, null_label=3, reference=reference, reference_y=reference_y)
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_flow_matching_with_the_stable_target_is_minimised_at_the_exact_velocity() -> None:
    from fmmkit.core import FlowMap
    from fmmkit.losses.flow_matching import FlowMatching, FlowMatchingConfig

    ip = LinearInterpolant()
    exact = GaussianFlowMap(ip, MEAN, STD)
    batch = Batch(MEAN + STD * torch.randn(4096, 2, generator=torch.Generator().manual_seed(1), dtype=F64))

    class Shifted(torch.nn.Module):
        def __init__(self, shift: float) -> None:
            super().__init__()
            self.shift = shift

        def forward(self, x, s, t, y=None):  # type: ignore[no-untyped-def]
            return exact.velocity(x, t) + self.shift

    def loss(target: str, shift: float) -> float:
        torch.manual_seed(0)
        fm = FlowMatching(FlowMatchingConfig(velocity_target=target), ip)
        return float(fm(FlowMap(Shifted(shift)), batch).loss)

    conditional, stable = loss("conditional", 0.0), loss("stable", 0.0)
    assert stable < 0.1 * conditional  # the residual is the estimate's error, not the conditional variance
    assert loss("stable", 0.1) == pytest.approx(stable + 0.01, abs=0.004)  # rises by |shift|^2 away from it


def test_velocity_target_is_a_checked_loss_key() -> None:
    raw = {"data": {"kind": "checkerboard"}, "loss": {"kind": "lagrangian_self_distillation", "velocity_target": "stable"}}
    assert load_spec(raw).loss.config.velocity_target == "stable"
    with pytest.raises(SpecError, match=r"loss\.velocity_target"):
        load_spec({**raw, "loss": {"kind": "flow_matching", "velocity_target": "stabel"}})
