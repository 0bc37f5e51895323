"""``[compile] enabled = "auto"`` (fmmkit.training.autocompile): compile only when it measurably pays."""

from __future__ import annotations

from typing import Any

import pytest

from fmmkit.training import autocompile
from fmmkit.training.autocompile import AutoCompile


class Clock:
    """A fake time.perf_counter that the fake steps advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(autocompile.time, "perf_counter", c)
    return c


def steps(clock: Clock, eager_s: float, compiled_s: float, compile_s: float = 30.0, fail: bool = False) -> Any:
    """(eager, compile_fn, calls): steps that advance the clock by their cost; the first compiled call
    costs compile_s more."""
    calls: list[str] = []

    def eager(i: int) -> str:
        clock.now += eager_s
        calls.append("eager")
        return f"eager {i}"

    def compile_fn(fn: Any) -> Any:
        assert fn is eager
        first = [True]

        def compiled(i: int) -> str:
            if fail:
                raise RuntimeError("no C++ compiler\nmore lines")
            clock.now += compiled_s + (compile_s if first[0] else 0.0)
            first[0] = False
            calls.append("compiled")
            return f"compiled {i}"

        return compiled

    return eager, compile_fn, calls


def run(step: AutoCompile, n: int) -> list[str]:
    return [step(i) for i in range(n)]


def test_a_short_run_never_compiles(clock: Clock) -> None:
    eager, compile_fn, calls = steps(clock, eager_s=0.1, compiled_s=0.05)
    events: list[dict[str, Any]] = []
    step = AutoCompile(eager, compile_fn, total_steps=500, probe=4,
                       on_event=lambda kind, **f: events.append({"kind": kind, **f}))
    out = run(step, 500)
    # 493 steps left x 0.1 s x 25% expected gain = 12.3 s < 60 s of expected compile on a CPU
    assert step.mode == "eager" and set(calls) == {"eager"} and out[-1] == "eager 499" and events == []
    assert step.reason == ("too few steps left for a compile to pay: 49.3 s of eager steps x 25% expected gain "
                           "<= 60 s expected compile")


def test_a_long_run_compiles_and_keeps_the_faster_step(clock: Clock) -> None:
    eager, compile_fn, calls = steps(clock, eager_s=0.1, compiled_s=0.06, compile_s=30.0)
    events: list[dict[str, Any]] = []
    step = AutoCompile(eager, compile_fn, total_steps=10_000, probe=4,
                       on_event=lambda kind, **f: events.append({"kind": kind, **f}))
    out = run(step, 40)
    assert step.mode == "compiled" and out[-1] == "compiled 39"
    assert calls.index("compiled") == 2 + 4 + 1 - 1  # warm-up, probe intervals, then the compiled step
    assert step.eager_seconds == pytest.approx(0.1) and step.compiled_seconds == pytest.approx(0.06)
    assert step.first_compiled_seconds == pytest.approx(30.06)
    assert events[-1]["decision"] == "compiled" and events[-1]["speedup"] == pytest.approx(1.667, abs=1e-3)


def test_a_compiled_step_that_is_not_faster_is_dropped(clock: Clock) -> None:
    eager, compile_fn, calls = steps(clock, eager_s=0.1, compiled_s=0.099)
    step = AutoCompile(eager, compile_fn, total_steps=10_000, probe=4)
    out = run(step, 40)
    assert step.mode == "eager" and out[-1] == "eager 39" and calls[-1] == "eager"


def test_a_compile_failure_falls_back_to_eager_with_a_warning(clock: Clock) -> None:
    eager, compile_fn, calls = steps(clock, eager_s=0.1, compiled_s=0.05, fail=True)
    events: list[dict[str, Any]] = []
    step = AutoCompile(eager, compile_fn, total_steps=10_000, probe=4,
                       on_event=lambda kind, **f: events.append({"kind": kind, **f}))
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler\); training eagerly"):
        out = run(step, 20)
    assert step.mode == "eager" and set(calls) == {"eager"} and len(out) == 20
    assert events[-1]["reason"] == "compile failed: RuntimeError: no C++ compiler"


def test_the_expected_gain_depends_on_device_and_derivative() -> None:
    jvp = AutoCompile(lambda: None, lambda f: f, total_steps=1, device_type="cpu", takes_jvp=True)
    plain = AutoCompile(lambda: None, lambda f: f, total_steps=1, device_type="cpu", takes_jvp=False)
    assert jvp.gain > plain.gain
