"""The fixes and official defaults of issue 11's loss review: each test fails on the code before the fix.

Dropout and randomness (finite differences under one RNG state, dropout-free target passes, ESD's two
JVPs on one mask), float32 times, the consistency-training guidance refusal, MeanFlow's and shortcut
models' official defaults, keyword-only tangents, sCM's TrigFlow map and prior weighting.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fmmkit.core import Backbone, Batch, FlowMap
from fmmkit.core.flow_map import TrigFlowMap
from fmmkit.core.derivatives import directional_derivative, time_derivative
from fmmkit.losses.guidance import drop_labels
from fmmkit.spec import SpecError, load_spec
from fmmkit.losses.weighting import Weighting, WeightingConfig
from loss_helpers import interpolant, make_loss

pytestmark = pytest.mark.usefixtures("one_thread")


class DropoutNet(Backbone):
    """A small smooth MLP v(x, s, t) with dropout p on its hidden layer (drawn from the global
    generator in train mode, like nn.Dropout); ``masks`` records each mask drawn."""

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(4, 32, generator=g) / 2)
        self.b = nn.Parameter(torch.randn(32, 2, generator=g) / 6)
        self.p = p
        self.masks: list[Tensor] = []

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h = torch.tanh(torch.cat([x, s[:, None].to(x.dtype), t[:, None].to(x.dtype)], dim=1) @ self.a.to(x.dtype))
        if self.training and self.p > 0:
            mask = torch.rand(h.shape, device=h.device) >= self.p
            self.masks.append(mask)
            h = h * mask.to(h.dtype) / (1 - self.p)
        return h @ self.b.to(x.dtype)


def in_jvp(x: Tensor) -> bool:
    """Whether ``x`` carries a tangent: a torch.func wrapper or a forward-AD dual number (fmmkit.core.jvp)."""
    import torch.autograd.forward_ad as fwAD

    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return True
    return fwAD.unpack_dual(x).tangent is not None


class Recorder(Backbone):
    """Wraps a backbone and records, for every call: training mode, grad mode, whether it runs inside a
    JVP, the times and the labels."""

    def __init__(self, inner: Backbone) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.calls.append({
            "training": self.training, "grad": torch.is_grad_enabled(),
            "jvp": in_jvp(x),
            "s": s.detach().clone() if not torch._C._functorch.is_functorch_wrapped_tensor(s) else None,
            "t": t.detach().clone() if not torch._C._functorch.is_functorch_wrapped_tensor(t) else None,
            "y": None if y is None else y.clone(),
        })
        return self.inner(x, s, t, y)


def labelled_batch(n: int = 256, classes: int = 3, dtype: torch.dtype = torch.float32) -> Batch:
    g = torch.Generator().manual_seed(5)
    return Batch(torch.randn(n, 2, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g))


# ---- finite differences, dropout and target passes ------------------------------------------------

def test_finite_difference_runs_every_pass_on_one_dropout_mask() -> None:
    """In train mode with dropout, the central difference equals the JVP taken from the same RNG state
    (today: each pass drew its own mask and the quotient was off by O(1/h))."""
    model = FlowMap(DropoutNet()).double().train()
    x = torch.randn(64, 2, dtype=torch.float64)
    s, t = torch.rand(64, dtype=torch.float64) * 0.5, 0.5 + torch.rand(64, dtype=torch.float64) * 0.5
    state = torch.get_rng_state()
    value_j, d_j = time_derivative(model, x, s, t, method="jvp")
    torch.set_rng_state(state)
    value_f, d_f = time_derivative(model, x, s, t, method="finite_difference")
    torch.testing.assert_close(value_f, value_j, rtol=0, atol=1e-12)
    torch.testing.assert_close(d_f, d_j, rtol=0, atol=1e-6)
    assert float(d_j.abs().max()) > 1e-2


@pytest.mark.parametrize(("name", "config", "labels"), [
    ("lagrangian_self_distillation", {}, False),
    ("progressive_self_distillation", {}, False),
    ("eulerian_self_distillation", {}, False),
    ("shortcut", {"ema_decay": 0.0, "bootstrap_fraction": 0.5}, False),
    ("meanflow", {"guidance": {"scale": 2.0}}, True),
    ("direct_flow_map_matching", {"guidance": {"scale": 2.0}}, True),
    ("improved_meanflow", {"guidance": {"scale": 2.0, "interval_sampling": "fixed"}}, True),
])
@pytest.mark.parametrize("target_dropout", [False, True])
def test_target_passes_run_with_dropout_off_unless_asked(name: str, config: dict, labels: bool,
                                                         target_dropout: bool) -> None:
    """Every no-grad pass outside a JVP builds a target: eval mode by default, the model's mode with
    ``target_dropout = true``; the differentiated passes stay in train mode."""
    recorder = Recorder(DropoutNet(0.1))
    model = FlowMap(recorder).train()
    loss = make_loss(name, interpolant(), 3 if labels else None, target_dropout=target_dropout, **config)
    batch = labelled_batch() if labels else Batch(labelled_batch().x1)
    loss(model, batch)
    targets = [c for c in recorder.calls if not c["grad"] and not c["jvp"]]
    trained = [c for c in recorder.calls if c["grad"]]
    assert targets and trained
    assert all(c["training"] == target_dropout for c in targets)
    assert all(c["training"] for c in trained)
    assert model.training and recorder.inner.training, "the model's mode is restored"


@pytest.mark.parametrize("method", ["jvp", "finite_difference"])
def test_esd_takes_both_derivatives_on_one_dropout_mask(method: str) -> None:
    """ESD's d/ds X and its transport term are two derivative passes: they must see the same dropout mask
    (the target v_{s,s} runs with dropout off and draws none)."""
    net = DropoutNet(0.1)
    model = FlowMap(net).train()
    loss = make_loss("eulerian_self_distillation", interpolant(), diagonal_fraction=0.0, derivative=method)
    loss(model, Batch(torch.randn(128, 2)))
    assert len(net.masks) == (2 if method == "jvp" else 6)
    assert all(torch.equal(m, net.masks[0]) for m in net.masks)


def test_esd_convex_stops_only_the_velocity() -> None:
    """stopgrad = "convex" differentiates d/ds X + grad_x X b as one JVP (official ``csd_term``): its gradient
    differs from the transport variant's while the values agree."""
    torch.manual_seed(0)
    net = DropoutNet(0.0)
    values, grads = {}, {}
    for stopgrad in ("transport", "convex"):
        model = FlowMap(net).double()
        model.zero_grad()
        loss = make_loss("eulerian_self_distillation", interpolant(), diagonal_fraction=0.0, stopgrad=stopgrad)
        torch.manual_seed(1)
        out = loss(model, Batch(torch.randn(256, 2, dtype=torch.float64)))
        out.loss.backward()
        values[stopgrad], grads[stopgrad] = float(out.loss), net.a.grad.clone()
    assert values["convex"] == pytest.approx(values["transport"], rel=1e-10)
    assert float((grads["convex"] - grads["transport"]).abs().max()) > 1e-3 * float(grads["transport"].abs().max())


# ---- times ----------------------------------------------------------------------------------------

def test_times_stay_float32_for_bf16_data() -> None:
    """bf16 data: s = 0.5 and t = 0.5 + 1/512 reach the backbone distinct, in float32 (bf16 rounds both to 0.5)."""
    recorder = Recorder(DropoutNet(0.0))
    model = FlowMap(recorder)
    x = torch.randn(4, 2).to(torch.bfloat16)
    s, t = torch.full((4,), 0.5), torch.full((4,), 0.5 + 1 / 512)
    model.average_velocity(x, s, t)
    call = recorder.calls[-1]
    assert call["s"].dtype == call["t"].dtype == torch.float32
    assert bool((call["t"] > call["s"]).all())
    path = interpolant().draw(x, t)
    assert path.t.dtype == torch.float32 and float(path.t[0]) == 0.5 + 1 / 512 and path.x_t.dtype == torch.bfloat16


# ---- consistency training with guidance -----------------------------------------------------------

def test_consistency_training_refuses_guidance() -> None:
    raw = {"data": {"kind": "checkerboard"}, "loss": {"kind": "consistency_training", "guidance": {"scale": 2.0}}}
    with pytest.raises(SpecError, match=r"loss\.guidance\.scale: consistency_training learns only X_\(s,1\)") as err:
        load_spec(raw)
    assert len(str(err.value).splitlines()) == 1
    load_spec({**raw, "loss": {"kind": "consistency_distillation", "guidance": {"scale": 2.0}},
               "teacher": {"kind": "gaussian", "mean": [0.0], "std": [1.0]}})


# ---- MeanFlow's official defaults -----------------------------------------------------------------

def test_meanflow_time_sampling_is_the_official_one_converted() -> None:
    """P_mean = -0.4 with noise at tau = 1 is logit_mean = +0.4 here: E t = E sigmoid(0.4 + n) = 0.5790...
    (> 1/2: the times lean to the data side, as the official ones lean to tau < 1/2)."""
    times = load_spec({"data": {"kind": "checkerboard"}, "loss": {"kind": "meanflow"}}).loss.config.times
    assert (times.distribution, times.logit_mean, times.logit_std, times.diagonal_fraction) == ("logit_normal", 0.4, 1.0, 0.75)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    expected = float((weights * (1 / (1 + np.exp(-(0.4 + nodes))))).sum() / weights.sum())
    torch.manual_seed(0)
    s, t = times.sample_pairs(400_000, "cpu", torch.float64)
    official_tau = torch.sigmoid(-0.4 + torch.randn(400_000, dtype=torch.float64))  # the paper's draw
    assert float((1 - official_tau).mean()) == pytest.approx(expected, abs=2e-3)
    both = torch.cat([s[300_000:], t[300_000:]])
    assert float(both.mean()) == pytest.approx(expected, abs=2e-3) and expected > 0.57
    assert bool((s[:300_000] == t[:300_000]).all())


def test_adaptive_weight_eps_on_the_summed_loss() -> None:
    """reduction = "sum": loss D L / sg(D L + c) (official ``(loss + norm_eps) ** norm_p`` on the summed loss)."""
    values = torch.tensor([0.001, 0.1, 2.0], dtype=torch.float64, requires_grad=True)
    s = t = torch.zeros(3, dtype=torch.float64)
    summed, _ = Weighting(WeightingConfig(kind="adaptive", eps=0.01, reduction="sum"))(values, s, t, dims=8)
    want = (8 * values / (8 * values.detach() + 0.01)).mean()
    torch.testing.assert_close(summed, want)
    meaned, _ = Weighting(WeightingConfig(kind="adaptive", eps=0.01))(values, s, t, dims=8)
    assert float(meaned) != pytest.approx(float(summed))
    weighting = load_spec({"data": {"kind": "checkerboard"}, "loss": {"kind": "meanflow"}}).loss.config.weighting
    assert (weighting.kind, weighting.power, weighting.eps, weighting.reduction) == ("adaptive", 1.0, 0.01, "sum")


def test_meanflow_drops_labels_only_on_the_leading_diagonal_rows() -> None:
    """The official cond_drop nulls the first k ~ Bin(B, 0.1) rows, which are s = t rows."""
    loss = make_loss("meanflow", interpolant(), 3)
    assert loss.config.guidance.label_dropout == 0.1 and loss.config.guidance.kappa == 0.5
    batch = loss.prepare_labels(labelled_batch(1000))
    (term,) = loss.terms(FlowMap(DropoutNet(0.0)), batch, None, 0)
    null = batch.y == 3
    assert 40 < int(null.sum()) < 170 and bool(null[: int(null.sum())].all())
    assert bool((term.s[null] == term.t[null]).all()) and int((term.s == term.t).sum()) == 750


def test_label_dropout_first_rows_law() -> None:
    y = torch.zeros(10_000, dtype=torch.long)
    dropped = drop_labels(y, 0.1, 7, rows="first")
    k = int((dropped == 7).sum())
    assert 850 < k < 1150 and bool((dropped[:k] == 7).all()) and bool((dropped[k:] == 0).all())


def test_guidance_interval_limits_the_guided_target() -> None:
    """interval = [0.4, 0.6]: rows whose time is outside regress on dI/dt, inside on the guided target."""
    from fmmkit.core import InterpolantSample

    loss = make_loss("lagrangian_self_distillation", interpolant(), 3, guidance={"scale": 3.0, "interval": [0.4, 0.6]})
    model = FlowMap(DropoutNet(0.0))
    n = 6
    t = torch.tensor([0.1, 0.45, 0.5, 0.55, 0.7, 0.9])
    path = InterpolantSample(t=t, x_t=torch.randn(n, 2), dx_t=torch.randn(n, 2), x0=torch.zeros(n, 2),
                             x1=torch.zeros(n, 2), z=None)
    target = loss.velocity_target(model, path, torch.zeros(n, dtype=torch.long))
    inside = (t >= 0.4) & (t <= 0.6)
    assert torch.equal(target[~inside], path.dx_t[~inside]) and not torch.equal(target[inside], path.dx_t[inside])


# ---- shortcut models' official defaults -----------------------------------------------------------

class Constant(Backbone):
    """v_{s,t}(x) = c everywhere (labels recorded)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))
        self.labels: list[Tensor | None] = []

    def forward(self, x: Tensor, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.labels.append(y)
        return self.c * torch.ones_like(x)


def test_shortcut_official_defaults_clip_the_target_and_use_an_ema() -> None:
    cfg = load_spec({"data": {"kind": "checkerboard"}, "loss": {"kind": "shortcut"}}).loss.config
    assert (cfg.ema_decay, cfg.intermediate_clip, cfg.target_clip) == (0.999, 4.0, 4.0)
    loss = make_loss("shortcut", interpolant(), bootstrap_fraction=1.0)
    term = loss.bootstrap_term(FlowMap(Constant(10.0)), Batch(torch.randn(64, 2)))
    assert float(term.values.mean()) == pytest.approx(36.0)  # |10 - clip(10, 4)|^2
    unclipped = make_loss("shortcut", interpolant(), bootstrap_fraction=1.0, target_clip=0.0)
    assert float(unclipped.bootstrap_term(FlowMap(Constant(10.0)), Batch(torch.randn(64, 2))).values.mean()) == 0.0


def test_shortcut_drops_labels_only_on_the_flow_matching_rows() -> None:
    net = Constant(0.0)
    loss = make_loss("shortcut", interpolant(), 3, ema_decay=0.0, guidance={"label_dropout": 0.5})
    batch = Batch(torch.randn(800, 2), torch.zeros(800, dtype=torch.long))
    loss(FlowMap(net), batch)
    boot_rows = 100  # 1/8 of the batch
    labels = [y for y in net.labels if y is not None]
    flow = next(y for y in labels if len(y) == 700)
    boot = [y for y in labels if len(y) == boot_rows]
    assert boot and all(bool((y == 0).all()) for y in boot)
    assert 250 < int((flow == 3).sum()) < 450


# ---- derivatives: keyword-only tangents -----------------------------------------------------------

def test_tangents_are_keyword_only() -> None:
    model = FlowMap(DropoutNet(0.0))
    x, s, t = torch.randn(3, 2), torch.zeros(3), torch.ones(3)
    with pytest.raises(TypeError):
        directional_derivative(model, x, s, t, (None, None, torch.ones(3)))  # type: ignore[misc]
    _, d = directional_derivative(model, x, s, t, dt=torch.ones(3))
    _, d_ref = time_derivative(model, x, s, t)
    torch.testing.assert_close(d, d_ref)


# ---- sCM: TrigFlow parameterisation and prior weighting -------------------------------------------

def test_trigflow_map_is_scms_consistency_function() -> None:
    """X_{s,t}(x) = cos(h) x + sin(h) F, h = pi (t - s) / 2; X_{s,1} = cos(tau) x - sin(tau) F_TrigFlow with
    tau = pi (1 - s) / 2 and F_TrigFlow = -F; v_{t,t} = (pi / 2) F, smooth at s = t (JVP and value)."""
    torch.manual_seed(0)
    net = DropoutNet(0.0)
    model = TrigFlowMap(net).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    s = torch.rand(8, dtype=torch.float64) * 0.9
    tau = math.pi / 2 * (1 - s)
    f = net(x, s, torch.ones_like(s))
    want = torch.cos(tau)[:, None] * x - torch.sin(tau)[:, None] * (-f)
    torch.testing.assert_close(model(x, s, torch.ones_like(s)), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.velocity(x, s), math.pi / 2 * net(x, s, s), rtol=1e-12, atol=1e-12)
    _, dt = time_derivative(model, x, s, s)
    torch.testing.assert_close(dt, model.velocity(x, s), rtol=1e-12, atol=1e-12)


def test_consistency_prior_weighting() -> None:
    """prior_weighting multiplies each sample's loss by tan(pi s / 2) / sigma_d (sCM's 1 / (sigma_d tan tau))."""
    model = FlowMap(DropoutNet(0.0)).double()
    batch = Batch(torch.randn(512, 2, dtype=torch.float64))
    plain = make_loss("consistency_training", interpolant("trig"), times={"t_min": 0.1, "t_max": 0.9})
    weighted = make_loss("consistency_training", interpolant("trig"), times={"t_min": 0.1, "t_max": 0.9},
                         prior_weighting=True, sigma_data=0.5)
    torch.manual_seed(3)
    terms = plain.terms(model, batch, None, 10**6)[0]
    torch.manual_seed(3)
    weighted_terms = weighted.terms(model, batch, None, 10**6)[0]
    torch.testing.assert_close(weighted_terms.values, torch.tan(math.pi / 2 * terms.s) / 0.5 * terms.values)
    assert make_loss("consistency_training", interpolant("trig"), parameterization="trigflow").config.parameterization == "trigflow"
