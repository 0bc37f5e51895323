"""The engine's parts: state files, EMA, batch plan and streams, precision, logs, loss parameters, CLI."""

from __future__ import annotations

import math
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from engine_helpers import assert_same_weights, records, tiny_spec
from fmmkit.cli import main
from fmmkit.core.validators import SpecValueError
from fmmkit.spec import SpecError, load_spec
from fmmkit.spec.schema import EMAConfig, TrainConfig
from fmmkit.training.checkpoint import list_checkpoints, read_checkpoint
from fmmkit.training.distributed import DistEnv
from fmmkit.training.ema import EMA, ema_labels, sampling_label
from fmmkit.training.logs import RunLog, _tensorboard_writer, truncate_records
from fmmkit.training.precision import Float32DerivativesFlowMap, autocast_dtype
from fmmkit.training.sharding import BatchPlan, Stream
from fmmkit.training.statefile import StateFormatError, dumps_state, loads_state, same_state
from fmmkit.training.loop import resume_run, train


# ---- state files
def test_state_file_round_trips_nested_state_exactly() -> None:
    state = {
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3)}},
                      "param_groups": [{"lr": 0.1 / 3, "betas": (0.9, 0.999), "foreach": None, "amsgrad": False,
                                        "params": [0]}]},
        "rng": torch.get_rng_state(), "half": torch.randn(5).bfloat16(), "count": torch.tensor(7),
        "a.b": torch.zeros(2), "a": {"b": torch.ones(2)}, "nan": math.nan, "empty": {}, "label": "x",
    }
    back = loads_state(dumps_state(state))
    state["optimizer"]["param_groups"][0]["betas"] = [0.9, 0.999]  # tuples come back as lists
    assert same_state(back, state)
    assert list(back["optimizer"]["state"]) == [0], "integer keys stay integers"


def test_state_file_refuses_objects_and_foreign_files() -> None:
    with pytest.raises(TypeError, match="'model.fn'"):
        dumps_state({"model": {"fn": print}})
    with pytest.raises(StateFormatError, match="not a safetensors file"):
        loads_state(b"\x80\x04garbage")
    from safetensors.torch import save

    with pytest.raises(StateFormatError, match="without an fmmkit structure"):
        loads_state(save({"w": torch.zeros(2)}))
    good = dumps_state({"w": torch.zeros(100)})
    with pytest.raises(StateFormatError):
        loads_state(good[:-10])


# ---- EMA
def _linear() -> torch.nn.Module:
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


def test_ema_half_life_halves_the_distance_every_half_life_samples() -> None:
    model = _linear()
    ema = EMA(model, EMAConfig(half_lives=[640.0], rampup=0.0), batch_size=32)
    with torch.no_grad():
        model.bias.fill_(1.0)
    for step in range(1, 21):  # 20 steps x 32 samples = one half-life
        ema.update(model, step, 32 * step)
    assert ema.state_dict("ema-hl640", model)["bias"].item() == pytest.approx(0.5, rel=1e-5)


def test_ema_decay_rampup_and_every() -> None:
    model = _linear()
    ema = EMA(model, EMAConfig(decays=[0.9], half_lives=[1000.0], rampup=0.05, every=2), batch_size=10)
    assert ema.labels == ["ema-0.9", "ema-hl1000"]
    assert ema.beta(0, 20) == pytest.approx(1 / 10)  # the first update (2 steps x 10 samples): warm-up
    assert ema.beta(0, 20 * 100) == 0.9
    assert ema.beta(1, 400) == pytest.approx(0.5 ** (10 * 2 / 20))  # ramp-up: half-life 0.05 * 400 = 20
    assert ema.beta(1, 10 ** 6) == pytest.approx(0.5 ** (10 * 2 / 1000))
    with torch.no_grad():
        model.bias.fill_(1.0)
    ema.update(model, 1, 10)  # not a multiple of every = 2
    assert ema.state_dict("ema-0.9", model)["bias"].item() == 0.0
    ema.update(model, 2, 20)
    assert ema.state_dict("ema-0.9", model)["bias"].item() == pytest.approx(0.9)  # weight 1 - 1/10
    plain = EMA(model, EMAConfig(decays=[0.9], decay_warmup=False), batch_size=10)
    assert plain.beta(0, 10) == 0.9


def test_ema_decay_warmup_forgets_the_initial_weights() -> None:
    model = _linear()
    warm, cold = (EMA(model, EMAConfig(decays=[0.999], decay_warmup=w), batch_size=8) for w in (True, False))
    with torch.no_grad():
        model.bias.fill_(1.0)
    for step in range(1, 2001):
        warm.update(model, step, 8 * step)
        cold.update(model, step, 8 * step)
    # k warmed-up updates keep a share prod_{j<k} (1 + j) / (10 + j) = 9! k! / (k + 9)! of the initial weights
    # (~1e-24 at k = 2000); the plain decay keeps 0.999^k (13.5%)
    assert warm.state_dict("ema-0.999", model)["bias"].item() == pytest.approx(1.0, abs=1e-6)
    assert cold.state_dict("ema-0.999", model)["bias"].item() == pytest.approx(1 - 0.999**2000, rel=1e-4)  # 0.865


def test_ema_labels_and_sampling_choice() -> None:
    assert ema_labels(EMAConfig(decays=[0.999], half_lives=[5e5])) == ["ema-0.999", "ema-hl500000"]
    assert sampling_label(load_spec(tiny_spec())) == "ema-0.9"
    assert sampling_label(load_spec(tiny_spec(ema={"decays": [], "half_lives": []}))) == "raw"
    assert sampling_label(load_spec(tiny_spec(ema={"sample_with": "ema-hl200"}))) == "ema-hl200"
    with pytest.raises(SpecError, match="ema.sample_with: 'ema-0.5' is not one of"):
        sampling_label(load_spec(tiny_spec(ema={"sample_with": "ema-0.5"})))
    with pytest.raises(SpecError, match=r"ema.decays: each decay must be in \[0, 1\)"):
        load_spec(tiny_spec(ema={"decays": [1.5]}))


# ---- batch plan and streams
def test_batch_plan_splits_the_global_batch_over_processes() -> None:
    cfg = TrainConfig(batch_size=64, micro_batches=4)
    assert BatchPlan.make(cfg, DistEnv(0, 1), "s").slots == (0, 1, 2, 3)
    assert BatchPlan.make(cfg, DistEnv(1, 2), "s").slots == (2, 3)
    assert BatchPlan.make(cfg, DistEnv(1, 2), "s").micro_batch_size == 16
    assert BatchPlan.make(TrainConfig(batch_size=64), DistEnv(1, 2), "s").slots == (1,)
    with pytest.raises(SpecError, match="train.micro_batches: 3 micro-batches cannot be shared by 2"):
        BatchPlan.make(TrainConfig(batch_size=60, micro_batches=3), DistEnv(0, 2), "s")
    with pytest.raises(SpecError, match="train.batch_size: 10 points do not split into 4"):
        BatchPlan.make(TrainConfig(batch_size=10), DistEnv(0, 4), "s")  # one micro-batch per process
    with pytest.raises(SpecValueError, match="4 micro-batches do not split train.batch_size = 10 points equally"):
        TrainConfig(batch_size=10, micro_batches=4)  # a split the spec itself names is checked with the spec


def test_streams_are_per_slot_and_leave_the_global_generator_alone() -> None:
    cpu = torch.device("cpu")
    a, b, a2 = Stream(0, 7, cpu), Stream(1, 7, cpu), Stream(0, 7, cpu)
    assert torch.equal(torch.rand(3, generator=a.data), torch.rand(3, generator=a2.data))
    assert not torch.equal(torch.rand(3, generator=a.data), torch.rand(3, generator=b.data))
    before = torch.get_rng_state()
    with a.loss_rng():
        first = torch.rand(3)
    with a.loss_rng():
        second = torch.rand(3)
    with a2.loss_rng():
        again = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, again) and not torch.equal(first, second)
    saved = a.state_dict()
    with a.loss_rng():
        x = torch.rand(2)
    a.load_state_dict(saved)
    with a.loss_rng():
        assert torch.equal(torch.rand(2), x)


# ---- precision
def test_precision_selection(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("float32", cpu) is None
    with pytest.warns(UserWarning, match="CUDA only"):
        assert autocast_dtype("bf16", cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("bf16", cuda) == torch.bfloat16
    assert autocast_dtype("float32", cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", cuda) is None


def test_jvps_leave_bf16_autocast(tmp_path: Path) -> None:
    """The guard works wherever autocast does: CPU bf16 autocast stands in for CUDA here."""
    from fmmkit.core.derivatives import directional_derivative
    from fmmkit.training.build import build_pipeline

    model = build_pipeline(load_spec(tiny_spec()), device=torch.device("cpu")).model
    x, s, t = torch.randn(8, 2), torch.rand(8), torch.rand(8)
    tangent = {"dx": torch.randn(8, 2), "ds": torch.ones(8), "dt": torch.zeros(8)}
    exact = directional_derivative(model, x, s, t, **tangent, output="average_velocity")
    guarded = Float32DerivativesFlowMap(model, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v_plain, dv_plain = directional_derivative(model, x, s, t, **tangent, output="average_velocity")
        v, dv = directional_derivative(guarded, x, s, t, **tangent, output="average_velocity")
        v_outside = guarded.average_velocity(x, s, t)
    assert v_plain.dtype == torch.bfloat16, "autocast is on: the unguarded JVP runs in bf16"
    assert v.dtype == dv.dtype == torch.float32
    assert torch.equal(v, exact[0]) and torch.equal(dv, exact[1])
    assert v_outside.dtype == torch.bfloat16, "outside the derivative pass autocast stays on"
    assert guarded.state_dict().keys() == model.state_dict().keys()


# ---- logs
def test_tensorboard_when_installed_and_not(tmp_path: Path, monkeypatch) -> None:
    scalars: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            scalars.append((tag, value, step))

        def close(self) -> None:
            scalars.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    log = RunLog(tmp_path, name="x", total=10, start=0, active=True, progress=False, tensorboard=True)
    log.metrics(3, {"loss": 0.5, "grad_norm": math.inf})
    log.close()
    assert scalars == [("train/loss", 0.5, 3), ("closed", 0.0, 0)]
    assert records(tmp_path)[0]["loss"] == 0.5
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    assert _tensorboard_writer(tmp_path) is None


def test_truncate_records_drops_steps_past_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"event": "checkpoint", "step": 2}\n{"step": 3}\n{"step": 4, "lo')
    truncate_records(path, 2)
    assert path.read_text() == '{"step": 1}\n{"event": "checkpoint", "step": 2}\n'


# ---- the loop
def test_learned_loss_weighting_is_trained_checkpointed_and_resumed(tmp_path: Path) -> None:
    spec = tiny_spec(loss={"weighting": {"kind": "learned", "width": 8, "time_dim": 4}},
                     log={"pictures_every": 4})
    out = tmp_path / "run"
    train(spec, out=out, progress=False, pictures=False)
    assert (out / "pictures" / "step-000000004.png").is_file()
    last = read_checkpoint(list_checkpoints(out)[-1][1], DistEnv())
    loss_state = last.parts["trainer"]["loss"]
    assert loss_state and any(k.startswith("weighting.") for k in loss_state)
    assert any(float(v.abs().max()) > 0 for k, v in loss_state.items() if k.endswith("out.weight")), \
        "the zero-initialised learned weight never moved: its parameters are not optimised"
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(list_checkpoints(copy)[-1][1])
    resume_run(copy, progress=False, pictures=False)
    assert_same_weights(copy / "model.safetensors", out / "model.safetensors")
    again = read_checkpoint(list_checkpoints(copy)[-1][1], DistEnv()).parts["trainer"]["loss"]
    assert same_state(again, loss_state)


def test_cli_train_arguments(tmp_path: Path, capsys) -> None:
    assert main(["train", "--quiet"]) == 2
    assert "give a SPEC file to train, or --resume RUN_DIR" in capsys.readouterr().err
    assert main(["train", "spec.toml", "--resume", str(tmp_path)]) == 2
    assert "drop SPEC, --out and --overwrite" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_only_the_last_checkpoints_are_kept_and_half_written_ones_are_ignored(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_spec(train={"steps": 5}, checkpoint={"every": 1, "keep": 2}), out=out, progress=False, pictures=False)
    assert [step for step, _ in list_checkpoints(out)] == [4, 5]
    staging = out / "checkpoints" / ".step-000000006.tmp"  # what a crash in the middle of a write leaves
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"partial")
    assert [step for step, _ in list_checkpoints(out)] == [4, 5]
    resume_run(out, overrides=["train.steps=6"], progress=False, pictures=False)
    assert not staging.exists()
    assert [step for step, _ in list_checkpoints(out)] == [5, 6]
