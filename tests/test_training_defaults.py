"""``train.threads = "auto"`` and ``[compile] enabled = "auto"``: the defaults, their spec keys, their events
and exact resumes (fmmkit.training.threads, fmmkit.training.autocompile)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import attrs
import pytest
import torch

from cli_helpers import run_cli
from engine_helpers import PlainSelfDistillation, assert_same_weights, events, replace_loss, tiny_spec
from fmmkit.spec import SpecError, load_spec, spec_to_dict
from fmmkit.spec.loader import spec_docs
from fmmkit.spec.schema import CompileConfig, TrainConfig
from fmmkit.training import autocompile, compile as compile_module
from fmmkit.training.autocompile import AutoCompile
from fmmkit.training.loop import resume_run, train

CONSTANT = {"schedule": "constant", "warmup_steps": 0}


def test_both_default_to_auto_and_accept_pins() -> None:
    spec = load_spec(tiny_spec())
    assert (spec.train.threads, spec.compile.enabled) == ("auto", "auto")
    pinned = load_spec(tiny_spec(train={"threads": 2}, compile={"enabled": False}))
    assert (pinned.train.threads, pinned.compile.enabled) == (2, False)
    assert load_spec(tiny_spec(train={"threads": 0})).train.threads == 0  # specs written before "auto"


@pytest.mark.parametrize("override, message", [
    ("train.threads=-1", 'train.threads: must be "auto" or a number of threads >= 1, got -1'),
    ('train.threads="many"', "train.threads: expected \"auto\" or an integer, got 'many' (a string)"),
    ("train.threads=true", 'train.threads: expected "auto" or an integer, got True (a boolean)'),
    ("compile.enabled=1", 'compile.enabled: expected "auto", true or false, got 1 (an integer)'),
    ('compile.enabled="yes"', "compile.enabled: expected \"auto\", true or false, got 'yes' (a string)"),
])
def test_bad_values_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(tiny_spec(), [override])
    assert str(caught.value) == f"--set {override}: {message}"


def test_spec_show_documents_every_train_and_compile_key(tmp_path: Path) -> None:
    docs = spec_docs()
    for section, cls in (("train", TrainConfig), ("compile", CompileConfig)):
        assert set(docs[section]) == {f.name for f in attrs.fields(cls)}, section
    shown = run_cli("spec", "show", "checkerboard_lsd").stdout
    lines = shown.splitlines()
    threads = lines.index('threads = "auto"')
    assert lines[threads - 1].startswith("# ") and "train.threads" not in lines[threads - 1]
    assert any('"auto": as many torch threads' in line for line in lines[threads - 4:threads])
    enabled = lines.index('enabled = "auto"')
    assert any('"auto": time eager steps' in line for line in lines[enabled - 3:enabled])
    (tmp_path / "shown.toml").write_text(shown)  # the comments keep it a spec that loads to the same one
    assert spec_to_dict(load_spec(tmp_path / "shown.toml")) == spec_to_dict(load_spec("checkerboard_lsd"))


def test_auto_threads_record_the_choice_and_restore_the_count(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = train(tiny_spec(train={"steps": 2}), out=tmp_path / "auto", progress=False, pictures=False)
    chosen = [e for e in events(out) if e["event"] == "threads"]
    assert len(chosen) == 1 and chosen[0]["step"] == 0
    assert 1 <= chosen[0]["threads"] <= chosen[0]["cores"] and chosen[0]["busy_elsewhere"] >= 0
    assert torch.get_num_threads() == 1  # the caller's setting is back
    pinned = train(tiny_spec(train={"steps": 2, "threads": 1}), out=tmp_path / "pinned", progress=False, pictures=False)
    assert not [e for e in events(pinned) if e["event"] == "threads"]


def test_a_short_run_stays_eager_and_records_no_compile_event(tmp_path: Path) -> None:
    out = train(tiny_spec(train={"steps": 12}), out=tmp_path / "run", progress=False, pictures=False)
    assert not [e for e in events(out) if e["event"] == "compile"]


def test_the_choice_survives_a_checkpoint() -> None:
    eager_calls = []
    step = AutoCompile(lambda i: eager_calls.append(i) or "eager", lambda f: (lambda i: "compiled"),
                       total_steps=100)
    step.mode, step.eager_seconds = "compiled", 0.02
    resumed = AutoCompile(lambda i: "eager", lambda f: (lambda i: "compiled"), total_steps=50)
    resumed.load_state_dict(step.state_dict())
    assert (resumed.mode, resumed(0), resumed(1)) == ("compiled", "compiled", "compiled")
    short = AutoCompile(lambda i: "eager", lambda f: f, total_steps=4, probe=2, warmup=0)
    [short(i) for i in range(4)]
    assert short.mode == "eager" and short.state_dict()["mode"] == "probing"  # a longer resume may compile
    failing = AutoCompile(lambda i: "eager", lambda f: (lambda i: (_ for _ in ()).throw(RuntimeError("no cc"))),
                          total_steps=50)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        failing.load_state_dict({"mode": "compiled", "eager_ms": 20.0})
        assert failing(0) == "eager" and failing.mode == "eager"


def test_the_expected_compile_time_grows_with_the_parameter_tensors_of_the_step() -> None:
    """A run long enough to pay for compiling a small MLP step stays eager for a step with many layers (the digits
    UNet's 128 tensors: a 336 s compile measured), and the spec's whole pipeline is counted."""
    from fmmkit.registry import get_registry
    from fmmkit.spec import load_spec
    from fmmkit.spec.builtin import builtin_spec_path
    from fmmkit.training.build import build_pipeline

    def decided(tensors: int) -> AutoCompile:
        step = AutoCompile(lambda i: time.sleep(0.002), lambda f: f, total_steps=200_000, probe=2, warmup=0,
                           parameter_tensors=tensors)
        for i in range(3):
            step(i)
        return step

    assert decided(10).mode == "trying" and decided(100_000).mode == "eager"
    assert autocompile.expected_compile_seconds("cpu", 10) == autocompile.EXPECTED_COMPILE_SECONDS["cpu"]
    pipeline = build_pipeline(load_spec(builtin_spec_path("digits_improved_meanflow")), get_registry())
    assert compile_module.step_parameter_tensors(pipeline.model, pipeline.loss, None) == len(list(pipeline.model.parameters()))


def test_a_resumed_run_continues_the_compiled_choice_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy forced to compile at step 4 and keep it (aot_eager: compiled steps differ from eager ones in
    float rounding, so a resume that went back to eager would not match bit for bit)."""
    replace_loss(monkeypatch, PlainSelfDistillation)
    monkeypatch.setitem(autocompile.EXPECTED_COMPILE_SECONDS, "cpu", 0.0)
    monkeypatch.setitem(autocompile.EXPECTED_COMPILE_SECONDS_PER_TENSOR, "cpu", 0.0)
    monkeypatch.setattr(compile_module, "AutoCompile", functools.partial(AutoCompile, probe=2, warmup=1,
                                                                         margin=-1e9))
    spec = tiny_spec(optim=CONSTANT, compile={"backend": "aot_eager"}, train={"threads": 1},
                     checkpoint={"every": 0}, ema={"decays": [0.9], "half_lives": []})
    straight = train({**spec, "train": {**spec["train"], "steps": 12}}, out=tmp_path / "straight", progress=False,
                     pictures=False)
    decided = [e for e in events(straight) if e["event"] == "compile"]
    assert [(e["step"], e["decision"]) for e in decided] == [(6, "compiled")]
    first = train({**spec, "train": {**spec["train"], "steps": 8}}, out=tmp_path / "resumed", progress=False,
                  pictures=False)
    resume_run(first, overrides=["train.steps=12"], progress=False, pictures=False)
    assert [e["event"] for e in events(first)].count("compile") == 1  # the resumed part continued compiled
    eager = train({**spec, "train": {**spec["train"], "steps": 12}, "compile": {"enabled": False}},
                  out=tmp_path / "eager", progress=False, pictures=False)
    for name in ("model.safetensors", "ema-0.9.safetensors"):
        assert_same_weights(first / name, straight / name)
    differ = [not torch.equal(a, b) for a, b in zip(_tensors(eager / "model.safetensors"),
                                                     _tensors(straight / "model.safetensors"))]
    assert any(differ), "compiled and eager steps should differ in rounding for this test to mean anything"


def _tensors(path: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [t for _, t in sorted(load_file(str(path)).items())]
