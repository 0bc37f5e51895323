"""The machinery the losses share: time sampling, weighting, guidance, loss state, example specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from fmmkit.core import Backbone, Batch, BuildContext, FlowMap
from fmmkit.exact import GaussianFlowMap
from fmmkit.losses.guidance import drop_labels, guided_velocity
from fmmkit.registry import get_registry
from fmmkit.spec import SpecError, load_spec
from fmmkit.spec.loader import _component, read_toml, structure_spec
from fmmkit.losses.times import TimeSampling
from fmmkit.losses.weighting import Weighting, WeightingConfig

from loss_helpers import interpolant, make_loss

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- time sampling -------------------------------------------------------------------------------

def test_uniform_pairs_are_ordered_and_fill_the_triangle() -> None:
    s, t = TimeSampling(t_min=0.2, t_max=0.8).sample_pairs(200_000, "cpu", torch.float64)
    assert bool((s <= t).all()) and float(s.min()) >= 0.2 and float(t.max()) <= 0.8
    assert float((t - s).mean()) == pytest.approx(0.6 / 3, rel=0.01)  # E|U - U'| on an interval of 0.6
    both_s, both_t = TimeSampling(order="both").sample_pairs(100_000, "cpu")
    assert 0.45 < float((both_s > both_t).double().mean()) < 0.55


def test_gap_pairs_draw_the_gap_from_the_distribution() -> None:
    s, t = TimeSampling(t_min=0.2, t_max=0.8, pairs="gap").sample_pairs(200_000, "cpu", torch.float64)
    assert bool((s <= t).all()) and float(s.min()) >= 0.2 and float(t.max()) <= 0.8 + 1e-12
    gap = (t - s) / 0.6
    assert float(gap.mean()) == pytest.approx(0.5, abs=0.005) and float(gap.var()) == pytest.approx(1 / 12, abs=0.002)
    # given the gap, s is uniform on what is left: s - t_min over (0.6 - gap) is U[0, 1]
    u = (s - 0.2) / (0.6 - (t - s))
    assert float(u.mean()) == pytest.approx(0.5, abs=0.005)
    long = TimeSampling(pairs="gap").sample_pairs(100_000, "cpu")
    short = TimeSampling().sample_pairs(100_000, "cpu")
    assert float(((long[1] - long[0]) > 0.9).double().mean()) == pytest.approx(0.1, abs=0.01)
    assert float(((short[1] - short[0]) > 0.9).double().mean()) == pytest.approx(0.01, abs=0.003)
    both_s, both_t = TimeSampling(order="both", pairs="gap").sample_pairs(100_000, "cpu")
    assert 0.45 < float((both_s > both_t).double().mean()) < 0.55


def test_logit_normal_has_the_right_law() -> None:
    times = TimeSampling(distribution="logit_normal", logit_mean=-0.4, logit_std=1.0)
    t = times.sample(200_000, "cpu", torch.float64)
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(-0.4, abs=0.01)
    assert float(logit.std()) == pytest.approx(1.0, abs=0.01)


def test_discrete_times_lie_on_the_grid_and_cover_it() -> None:
    t = TimeSampling(distribution="discrete", grid_size=8, t_min=0.0, t_max=1.0).sample(10_000, "cpu", torch.float64)
    assert torch.equal(torch.unique(t), torch.arange(9, dtype=torch.float64) / 8)


def test_diagonal_fraction_sets_exactly_that_share_of_pairs_on_the_diagonal() -> None:
    s, t = TimeSampling(diagonal_fraction=0.75).sample_pairs(1000, "cpu")
    assert int((s == t).sum()) == 750 and bool((s[:750] == t[:750]).all()) and bool((s[750:] < t[750:]).all())


def test_anchor_fraction_starts_that_share_of_off_diagonal_pairs_at_t_min() -> None:
    times = TimeSampling(t_min=0.1, diagonal_fraction=0.25, anchor_fraction=0.5)
    s, t = times.sample_pairs(40_000, "cpu", torch.float64)
    diagonal, off = slice(0, 10_000), slice(10_000, None)
    assert bool((s[diagonal] == t[diagonal]).all())
    anchored = s[off] == 0.1
    assert int(anchored.sum()) == 15_000 and bool(anchored[:15_000].all())
    # the anchored rows keep t's draw: the larger of two uniforms on [0.1, 1], mean 0.1 + 0.9 * 2/3
    assert float(t[off][anchored].mean()) == pytest.approx(0.7, abs=0.01)
    assert bool((s[off][~anchored] > 0.1).all()) and bool((s <= t).all())
    # a loss's own split (off_diagonal=True) anchors the share of the rows it is given
    s_off, _ = times.sample_pairs(1000, "cpu", off_diagonal=True)
    assert int((s_off == 0.1).sum()) == 500


def test_times_are_a_nested_spec_table_with_one_line_errors() -> None:
    raw = {"data": {"kind": "checkerboard"},
           "loss": {"kind": "meanflow", "times": {"distribution": "logit_normal", "logit_mean": -0.4}}}
    spec = load_spec(raw)
    assert spec.loss.config.times.logit_mean == -0.4 and spec.loss.config.times.diagonal_fraction == 0.75
    with pytest.raises(SpecError, match=r"loss\.times\.grid_sise: unknown key; did you mean 'grid_size'"):
        load_spec({**raw, "loss": {"kind": "meanflow", "times": {"grid_sise": 4}}})
    with pytest.raises(SpecError, match=r"loss\.times\.grid_size: must be >= 1"):
        load_spec({**raw, "loss": {"kind": "meanflow", "times": {"distribution": "discrete"}}})


# ---- weighting -----------------------------------------------------------------------------------

def test_adaptive_weight_value_and_gradient() -> None:
    values = torch.tensor([0.5, 2.0, 0.0], requires_grad=True)
    times = torch.zeros(3)
    loss, _ = Weighting(WeightingConfig(kind="adaptive", power=1.0, eps=0.1))(values, times, times)
    assert loss.item() == pytest.approx((0.5 / 0.6 + 2.0 / 2.1 + 0.0) / 3)
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([1 / 0.6, 1 / 2.1, 1 / 0.1]) / 3)


def test_learned_weight_learns_the_log_mean_loss_per_time() -> None:
    """exp(u(s, t)) -> E[L | s, t], the EDM2 minimiser, when only u is trained."""
    torch.manual_seed(0)
    weighting = Weighting(WeightingConfig(kind="learned"))
    optimizer = torch.optim.Adam(weighting.parameters(), lr=1e-2)
    for _ in range(400):
        t = torch.rand(1024)
        values = (0.2 + 3 * t) * torch.distributions.Exponential(1.0).sample((1024,))  # E[L | t] = 0.2 + 3t
        loss, _ = weighting(values, t, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    grid = torch.linspace(0.1, 0.9, 9)
    learned = torch.exp(weighting.network(grid, grid)).detach()
    torch.testing.assert_close(learned, 0.2 + 3 * grid, rtol=0.15, atol=0.0)


def test_learned_weight_parameters_reach_the_loss_and_its_state() -> None:
    ip = interpolant()
    loss = make_loss("lagrangian_self_distillation", ip, weighting={"kind": "learned"})
    params = loss.parameters()
    assert params and all(p.requires_grad for p in params)
    out = loss(small_model(0), Batch(torch.randn(64, 2)))
    out.loss.backward()
    assert all(p.grad is not None for p in params) and "log_variance" in out.metrics
    state = loss.state_dict()
    assert state and all(k.startswith("weighting.") for k in state)
    with torch.no_grad():
        params[-1].add_(1.0)
    other = make_loss("lagrangian_self_distillation", ip, weighting={"kind": "learned"})
    other.load_state_dict(loss.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), loss.parameters()))
    assert make_loss("flow_matching", ip).parameters() == []


# ---- guidance ------------------------------------------------------------------------------------

def test_label_dropout_share_and_null_label() -> None:
    y = torch.randint(0, 5, (100_000,))
    dropped = drop_labels(y, 0.1, null_label=5)
    assert float((dropped == 5).double().mean()) == pytest.approx(0.1, abs=0.005)
    assert torch.equal(dropped[dropped != 5], y[dropped != 5])
    assert drop_labels(None, 0.1, 5) is None and torch.equal(drop_labels(y, 0.0, 5), y)


SIGMA = 0.7
MEANS: dict[Any, Tensor] = {"u": torch.tensor([0.3, -0.2]), 0: torch.tensor([1.5, 0.5]), 1: torch.tensor([-1.0, 1.0])}


class ClassGaussians(nn.Module):
    """Per-class exact maps of N(mean_y, SIGMA^2 I); y = None or the null label 2 -> the "unconditional" one."""

    def __init__(self, ip: Any, means: dict[Any, Tensor]) -> None:
        super().__init__()
        std = torch.full((2,), SIGMA, dtype=torch.float64)
        self.maps = nn.ModuleDict({str(k): GaussianFlowMap(ip, m.double(), std) for k, m in means.items()})

    def _select(self, fn: str, y: Tensor | None, *args: Any) -> Tensor:
        out = getattr(self.maps["u"], fn)(*args)
        if y is None:
            return out
        for k in (0, 1):
            out = torch.where((y == k)[:, None], getattr(self.maps[str(k)], fn)(*args), out)
        return out

    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self._select("velocity", y, x, t)

    def average_velocity(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self._select("average_velocity", y, x, s, t)


class GuidedExactBackbone(Backbone):
    """The exact maps of the guided fields: class y -> N(m_u + w (m_y - m_u), SIGMA^2 I); null -> N(m_u, .)."""

    def __init__(self, ip: Any, w: float) -> None:
        super().__init__()
        means = {"u": MEANS["u"], **{k: MEANS["u"] + w * (MEANS[k] - MEANS["u"]) for k in (0, 1)}}
        self.exact = ClassGaussians(ip, means)

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.exact.average_velocity(x, s, t, y)


def test_guided_velocity_is_the_cfg_combination() -> None:
    teacher = ClassGaussians(interpolant(), MEANS)
    x, t, y = torch.randn(10, 2, dtype=torch.float64), torch.rand(10, dtype=torch.float64), torch.randint(0, 2, (10,))
    u, c = teacher.velocity(x, t, None), teacher.velocity(x, t, y)
    torch.testing.assert_close(guided_velocity(teacher, x, t, y, 3.0), u + 3.0 * (c - u))
    torch.testing.assert_close(guided_velocity(teacher, x, t, y, 1.0), c)


W = 2.5
TIMES = {"t_min": 0.05, "t_max": 0.95}
DISTILLATION = ["lagrangian_distillation", "eulerian_distillation", "ayf_eulerian", "ayf_lagrangian",
                "consistency_distillation"]
#: loss -> (config, per-term values at the guided exact map as multiples of the flow-matching floor)
SELF = {
    "flow_matching": ({}, {"flow_matching": 1.0}),
    "lagrangian_self_distillation": ({}, {"diagonal": 1.0, "lagrangian": 0.0}),
    "eulerian_self_distillation": ({}, {"diagonal": 1.0, "eulerian": 0.0}),
    "progressive_self_distillation": ({}, {"diagonal": 1.0, "progressive": 0.0}),
    "direct_flow_map_matching": ({}, {"lagrangian": 1.0, "invertibility": 0.0}),
    "shortcut": ({"finest_uses_velocity": False, "ema_decay": 0.0, "intermediate_clip": 0.0, "target_clip": 0.0},
                 {"flow_matching": 1.0, "bootstrap": 0.0}),
}


def labelled_batch(n: int = 2**13) -> Batch:
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 2, (n,), generator=g)
    centres = torch.stack([MEANS[0], MEANS[1]]).double()[y]
    return Batch(centres + SIGMA * torch.randn(n, 2, generator=g, dtype=torch.float64), y)


@pytest.mark.parametrize("noise", [0.0, 0.5])
@pytest.mark.parametrize("name", DISTILLATION)
def test_distillation_targets_the_guided_teacher(name: str, noise: float) -> None:
    """With scale w the exact maps of b^u + w (b^y - b^u) (Gaussian, mean m_u + w (m_y - m_u)) are the zero."""
    ip = interpolant("trig", noise)
    teacher, model = ClassGaussians(ip, MEANS), FlowMap(GuidedExactBackbone(ip, W))
    batch = labelled_batch()
    extra = {"warmup_steps": 0} if name in ("ayf_eulerian", "ayf_lagrangian", "consistency_distillation") else {}
    guided = make_loss(name, ip, 2, guidance={"scale": W}, times=TIMES, **extra)
    assert float(guided(model, batch, teacher=teacher).loss) < 1e-12
    plain = make_loss(name, ip, 2, times=TIMES, **extra)
    assert float(plain(model, batch, teacher=teacher).loss) > 1e-3


@pytest.mark.parametrize("name", sorted(SELF))
def test_self_distillation_bakes_guidance_into_the_velocity_target(name: str) -> None:
    """Target w dI/dt + (1 - w) v(. | null): the guided exact map is the fixed point; the regression terms
    sit at w^2 x the flow-matching floor of one class (within 3%) and off-diagonal residuals vanish."""
    ip = interpolant("linear", 0.5)
    model = FlowMap(GuidedExactBackbone(ip, W))
    config, expected = SELF[name]
    loss = make_loss(name, ip, 2, guidance={"scale": W}, times=TIMES, **config)
    torch.manual_seed(0)
    metrics = loss(model, labelled_batch()).metrics
    t = 0.05 + 0.9 * (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
    exact = GaussianFlowMap(ip, MEANS[0].double(), torch.full((2,), SIGMA, dtype=torch.float64))
    floor = float(exact.conditional_variance(t).mean())
    for term, multiple in expected.items():
        if multiple == 0.0:
            assert float(metrics[term]) < 1e-12, f"{term} = {float(metrics[term])}"
        else:
            assert float(metrics[term]) == pytest.approx(W**2 * floor, rel=0.03), term


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_meanflow_guidance_enters_target_and_tangent(kappa: float) -> None:
    """MeanFlow with guidance at the guided exact map: (w (1 - kappa))^2 x the unguided value at the plain
    one (3%): the target's noise is w (1 - kappa) (dI/ds - b), kappa's own-velocity share is noise-free."""
    ip = interpolant("linear", 0.0)
    batch = labelled_batch()
    values = []
    for w in (1.0, W):
        loss = make_loss("meanflow", ip, 2, guidance={"scale": w, "kappa": kappa, "label_dropout": 0.0},
                         weighting={"kind": "none"}, times=TIMES)
        torch.manual_seed(0)
        values.append(float(loss(FlowMap(GuidedExactBackbone(ip, w)), batch).loss))
    assert values[1] == pytest.approx((W * (1 - kappa))**2 * values[0], rel=0.03)


# ---- loss state ----------------------------------------------------------------------------------

def small_model(seed: int) -> FlowMap:
    torch.manual_seed(seed)
    registry = get_registry()
    spec = _component({"kind": "mlp", "width": 16, "depth": 2, "zero_init_output": False}, "backbone", "model", "t",
                      registry)
    return FlowMap(registry.build("backbone", "mlp", spec.config, BuildContext(data_shape=(2,))))


def test_progressive_rounds_freeze_the_student_and_survive_a_checkpoint() -> None:
    ip = interpolant()
    teacher = GaussianFlowMap(ip, torch.zeros(2), torch.ones(2))
    loss = make_loss("progressive_distillation", ip, rounds=3, steps_per_round=5)
    assert [loss.max_gap(s) for s in (0, 4, 5, 10, 15, 100)] == [0.25, 0.25, 0.5, 1.0, 1.0, 1.0]
    model, batch = small_model(0), Batch(torch.randn(32, 2))
    loss(model, batch, teacher=teacher, step=0)
    assert loss.held.model is None and loss.state_dict() == {}
    loss.on_step_end(model, 4)  # end of round 0: X' becomes the student
    assert loss.held.model is not None
    assert all(torch.equal(a, b) for a, b in zip(loss.held.model.parameters(), model.parameters()))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the student moves on within the round; X' must not
    loss.on_step_end(model, 5)
    assert not torch.equal(next(loss.held.model.parameters()), next(model.parameters()))
    resumed = make_loss("progressive_distillation", ip, rounds=3, steps_per_round=5)
    resumed.load_state_dict(loss.state_dict())
    torch.manual_seed(1)
    a = loss(model, batch, teacher=teacher, step=6).loss
    torch.manual_seed(1)
    b = resumed(model, batch, teacher=teacher, step=6).loss
    assert float(a) == float(b)


def test_shortcut_ema_teacher_update_and_state() -> None:
    ip = interpolant()
    loss = make_loss("shortcut", ip, ema_decay=0.9)
    model, other = small_model(0), small_model(1)
    loss(model, Batch(torch.randn(32, 2)))
    ema = loss.held.model
    assert ema is not None and all(torch.equal(a, b) for a, b in zip(ema.parameters(), model.parameters()))
    before = [p.clone() for p in ema.parameters()]
    loss.on_step_end(other, 0)
    for e, b, o in zip(ema.parameters(), before, other.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * o)
    resumed = make_loss("shortcut", ip, ema_decay=0.9)
    resumed.load_state_dict(loss.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(resumed.target_model(model).parameters(), ema.parameters()))


def test_shortcut_dyadic_grid() -> None:
    """Bootstrap rows sit at t = k 2^-j with t + 2^-j <= 1, for every level j."""
    loss = make_loss("shortcut", interpolant(), levels=4, bootstrap_fraction=1.0)
    term = loss.bootstrap_term(small_model(0), Batch(torch.randn(4000, 2)))
    step = term.t - term.s
    assert set(torch.unique(step).tolist()) == {1.0, 0.5, 0.25, 0.125}
    assert bool((term.t <= 1.0).all()) and bool((torch.remainder(term.s / step, 1.0) == 0).all())


# ---- example specs -------------------------------------------------------------------------------

def builtin_flow_map_losses() -> set[str]:
    registry = get_registry()
    return {n for n in registry.names("loss") if registry.get("loss", n).plugin.startswith("fmmkit.")
            and registry.get("loss", n).component.trains_flow_map}


def test_every_flow_map_loss_has_an_example_spec_copied_to_examples() -> None:
    covered = set()
    for path in sorted((ROOT / "fmmkit/specs").glob("checkerboard_*.toml")):
        copy = ROOT / "examples" / path.name
        assert copy.is_file() and copy.read_bytes() == path.read_bytes(), f"examples/{path.name} must be a copy of {path}"
        spec = structure_spec(read_toml(path), str(path), check_paths=False)
        data_free = not get_registry().get("loss", spec.loss.kind).component.needs_data
        assert spec.data.kind == ("prior" if data_free else "checkerboard"), path.name
        covered.add(spec.loss.kind)
    missing = builtin_flow_map_losses() - covered
    assert not missing, f"no example spec for {sorted(missing)}"


def test_gap_warmup_shrinks_every_gap_by_the_step_share() -> None:
    times = TimeSampling(gap_warmup_steps=100)
    torch.manual_seed(0)
    s_full, t_full = times.sample_pairs(1000, "cpu", torch.float64)
    torch.manual_seed(0)
    s, t = times.sample_pairs(1000, "cpu", torch.float64, step=25)
    assert torch.equal(s, s_full) and torch.allclose(t - s, 0.25 * (t_full - s_full))
    torch.manual_seed(0)
    assert torch.equal(times.sample_pairs(1000, "cpu", torch.float64, step=100)[1], t_full)
    anchored = TimeSampling(gap_warmup_steps=100, anchor_fraction=1.0)
    s_a, t_a = anchored.sample_pairs(1000, "cpu", torch.float64, step=10)
    assert bool((s_a == 0).all()) and float(t_a.max()) <= 0.1  # the curriculum holds anchored jumps back too


def test_a_loss_passes_its_step_to_the_pair_curriculum() -> None:
    """At step 0 of a gap warm-up every off-diagonal pair has s = t, where the Lagrangian residual of any
    map is 0; once the warm-up is over the same random map has a residual."""
    from fmmkit.interpolants.linear import LinearInterpolant
    from fmmkit.losses.lagrangian_self_distillation import LagrangianSelfDistillation, SelfDistillationConfig
    from fmmkit.losses.times import DiagonalHeavyTimes
    from fmmkit.nets.mlp import MLP, MLPConfig

    torch.manual_seed(0)
    model = FlowMap(MLP(MLPConfig(width=16, depth=2, zero_init_output=False), (2,)))
    loss = LagrangianSelfDistillation(SelfDistillationConfig(times=DiagonalHeavyTimes(gap_warmup_steps=10)),
                                      LinearInterpolant())
    batch = Batch(torch.randn(64, 2))
    assert float(loss(model, batch, step=0).metrics["lagrangian"]) == 0.0
    assert float(loss(model, batch, step=10).metrics["lagrangian"]) > 1e-6


def test_pairs_draw_from_their_own_distribution_and_the_diagonal_rows_from_the_velocity_one() -> None:
    """``pair_distribution = "uniform"`` beside logit-normal(1, 1) times: off-diagonal pairs are sorted uniforms
    (E[s] = 1/3, E[t] = 2/3), the s = t rows keep the logit-normal times (median sigmoid(1) = 0.731)."""
    times = TimeSampling(distribution="logit_normal", logit_mean=1.0, pair_distribution="uniform", diagonal_fraction=0.5)
    torch.manual_seed(0)
    s, t = times.sample_pairs(40_000, "cpu", torch.float64)
    diagonal, off = slice(0, 20_000), slice(20_000, None)
    assert torch.equal(s[diagonal], t[diagonal]) and bool((s[off] <= t[off]).all())
    assert abs(float(s[diagonal].median()) - 0.7311) < 0.01
    assert abs(float(s[off].mean()) - 1 / 3) < 0.01 and abs(float(t[off].mean()) - 2 / 3) < 0.01
    assert abs(float(times.sample(20_000, "cpu", torch.float64).median()) - 0.7311) < 0.01
    s_o, t_o = times.sample_pairs(20_000, "cpu", torch.float64, off_diagonal=True)
    assert abs(float(s_o.mean()) - 1 / 3) < 0.01 and abs(float(t_o.mean()) - 2 / 3) < 0.01
    # "same" is the pairs' former behaviour, draw for draw
    torch.manual_seed(1)
    same = TimeSampling(distribution="logit_normal", logit_mean=1.0).sample_pairs(100, "cpu", torch.float64)
    torch.manual_seed(1)
    named = TimeSampling(distribution="logit_normal", logit_mean=1.0,
                         pair_distribution="logit_normal").sample_pairs(100, "cpu", torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(same, named))


def test_a_discrete_pair_distribution_needs_a_grid() -> None:
    from fmmkit.core.validators import SpecValueError

    with pytest.raises(SpecValueError, match='grid_size.*pair_distribution = "discrete"'):
        TimeSampling(pair_distribution="discrete")


def test_a_uniform_fraction_puts_a_floor_under_the_logit_normal_density() -> None:
    """logit-normal(1, 1) alone draws t < 0.1 with probability 0.0007; with ``uniform_fraction = 0.2`` that is
    0.2 x 0.1 + 0.8 x 0.0007 = 0.0206, and the other draws keep their law (the first 20% are the uniform ones)."""
    torch.manual_seed(0)
    plain = TimeSampling(distribution="logit_normal", logit_mean=1.0).sample(50_000, "cpu", torch.float64)
    mixed = TimeSampling(distribution="logit_normal", logit_mean=1.0, uniform_fraction=0.2).sample(50_000, "cpu", torch.float64)
    assert float((plain < 0.1).double().mean()) < 0.002
    assert abs(float((mixed < 0.1).double().mean()) - 0.0206) < 0.003
    assert abs(float(mixed[:10_000].mean()) - 0.5) < 0.01 and abs(float(mixed[10_000:].median()) - 0.7311) < 0.01
    torch.manual_seed(0)
    uniform = TimeSampling(uniform_fraction=0.2).sample(100, "cpu", torch.float64)
    torch.manual_seed(0)
    assert torch.equal(uniform, TimeSampling().sample(100, "cpu", torch.float64))  # uniform stays as it was


def test_the_uniform_fraction_reaches_the_pairs_behind_the_diagonal_rows() -> None:
    """In pairs each endpoint is uniform with probability ``uniform_fraction``, so the off-diagonal rows (which
    follow the s = t rows) get their share: P(s < 0.1) = 1 - (1 - 0.0206)^2 = 0.041 for a fifth, not the
    logit-normal's 0.0014."""
    times = TimeSampling(distribution="logit_normal", logit_mean=1.0, uniform_fraction=0.2, diagonal_fraction=0.5)
    torch.manual_seed(0)
    s, t = times.sample_pairs(80_000, "cpu", torch.float64)
    off = s[40_000:]
    assert abs(float((off < 0.1).double().mean()) - 0.0408) < 0.005
    assert abs(float((s[:40_000] < 0.1).double().mean()) - 0.0408) < 0.005  # the s = t rows keep the pair's s
