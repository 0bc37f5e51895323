"""``[compile] enabled = "auto"``: compile the training step when, measured on this run, it pays.

torch.compile fuses a step's elementwise work and drops its per-operation overhead, but compiling
costs tens of seconds (more on a GPU for a large network) and the gain depends on the loss, the
network and the device: on this 2-core CPU a JVP loss's step ran 1.3-1.6x faster compiled and flow
matching's about 1.05x, after a 10-60 s compile (RESULTS.md, "Step cost ..."). So "auto":

1. runs the first steps eagerly and times ``probe`` of them (median wall time from one call of the
   step to the next, so the backward and optimiser step are inside);
2. compiles only when the eager time left, times the expected saving, exceeds the expected compile
   time: ``remaining * gain > compile_seconds`` with ``gain`` = :data:`EXPECTED_GAIN` of the loss kind
   and device and ``compile_seconds`` = :data:`EXPECTED_COMPILE_SECONDS` (short runs, tests and
   flow matching on a CPU stay eager);
3. then times ``probe`` compiled steps and keeps the compiled step only if it is faster than the
   eager one by ``margin``; otherwise it goes back to eager for the rest of the run. A compile
   failure falls back to eager with a warning (with ``enabled = true`` it is an error).

Each decision to compile, keep or drop the compiled step, the compile time and both medians are
reported through ``on_event`` (the trainer writes them to events.jsonl); staying eager because the
run is short is the default and is not reported. Compiled and eager steps agree to float rounding, not bit for bit,
so a checkpoint records the choice (:meth:`AutoCompile.state_dict`) and a resumed run continues with it:
compiled if the run had switched, eager if it had dropped the compiled step, still timing if it had not
decided (the eager steps of the probe are the eager steps the run would have taken). A run that stayed
eager because it was short probes again when resumed with more steps. ``enabled = true`` or ``false`` pin it.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

#: expected fraction of step time saved by compiling, by (device type, loss takes a JVP)
EXPECTED_GAIN: dict[tuple[str, bool], float] = {("cpu", True): 0.25, ("cpu", False): 0.03,
                                               ("cuda", True): 0.3, ("cuda", False): 0.15}
#: expected seconds to compile a step, by device type (inductor, cold cache): at least this much, and
#: EXPECTED_COMPILE_SECONDS_PER_TENSOR for every parameter tensor in the step (each layer adds its ops to the
#: graph; measured on this CPU: a 10-tensor MLP step 10-60 s, the digits UNet's iMF step (128 tensors) 336 s,
#: FreeFlow's (student, teacher and fake velocity: 384 tensors) 646 s, both under load)
EXPECTED_COMPILE_SECONDS: dict[str, float] = {"cpu": 60.0, "cuda": 120.0}
EXPECTED_COMPILE_SECONDS_PER_TENSOR: dict[str, float] = {"cpu": 2.5, "cuda": 3.0}


def expected_compile_seconds(device_type: str, parameter_tensors: int = 0) -> float:
    """max(floor, per-tensor cost x the step's parameter tensors) for ``device_type``."""
    return max(EXPECTED_COMPILE_SECONDS.get(device_type, 120.0),
               EXPECTED_COMPILE_SECONDS_PER_TENSOR.get(device_type, 3.0) * parameter_tensors)

Step = Callable[..., Any]


class AutoCompile:
    """A step function that starts eager and switches to ``compile_fn(eager)`` when that measurably pays.

    Args:
        eager: the step, ``fn(*args) -> result``.
        compile_fn: makes the compiled step from ``eager`` (``torch.compile(eager, ...)``; it compiles
            lazily, on its first call, forward and then backward).
        total_steps: the run's optimiser steps (what is left decides whether compiling can pay).
        calls_per_step: calls of the step per optimiser step (micro-batches).
        device_type, takes_jvp: select the expected gain and compile time.
        parameter_tensors: parameter tensors in the step's graph (model, teacher, loss), which scale the
            expected compile time (:func:`expected_compile_seconds`).
        probe: timed intervals in each phase; warmup: untimed eager calls first; margin: the compiled
            step must be this much faster to be kept.
        on_event: ``fn(kind, **fields)`` for the decisions.

    Example:
        >>> step = AutoCompile(lambda x: x + 1, lambda f: f, total_steps=10, probe=2)
        >>> [step(i) for i in range(6)], step.mode
        ([1, 2, 3, 4, 5, 6], 'eager')
    """

    def __init__(self, eager: Step, compile_fn: Callable[[Step], Step], *, total_steps: int, calls_per_step: int = 1,
                 device_type: str = "cpu", takes_jvp: bool = True, probe: int = 8, warmup: int = 2,
                 margin: float = 0.03, on_event: Callable[..., None] | None = None, parameter_tensors: int = 0) -> None:
        self.eager, self.compile_fn = eager, compile_fn
        self.total_calls = total_steps * calls_per_step
        self.gain = EXPECTED_GAIN.get((device_type, takes_jvp), 0.1)
        self.compile_seconds = expected_compile_seconds(device_type, parameter_tensors)
        self.probe, self.warmup, self.margin = probe, warmup, margin
        self.on_event = on_event or (lambda kind, **fields: None)
        #: "probing" (eager, timed) -> "trying" (compiled, timed) -> "compiled" | "eager" (final)
        self.mode = "probing"
        self.calls = 0
        self.compiled: Step | None = None
        self.intervals: list[float] = []
        self.eager_seconds = self.compiled_seconds = self.first_compiled_seconds = float("nan")
        self.reason = ""
        self._last: float | None = None
        self._unverified = False  # compiled again after a resume: a failure on its first call falls back

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records: the mode ("probing" while undecided, or after staying eager on a
        short run) and the eager median (ms) that a compiled step being tried is compared with."""
        mode = "probing" if self.mode == "eager" and self.reason.startswith("too few") else self.mode
        measured = self.eager_seconds == self.eager_seconds  # not NaN
        return {"mode": mode, "eager_ms": self.eager_seconds * 1e3 if measured else None}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's choice (see :meth:`state_dict`); compiles now if it had compiled."""
        mode = saved.get("mode", "probing")
        if mode not in ("probing", "trying", "compiled", "eager"):
            raise ValueError(f"unknown compile mode {mode!r}")
        eager_ms = saved.get("eager_ms")
        self.eager_seconds = float("nan") if eager_ms is None else float(eager_ms) / 1e3
        if mode in ("trying", "compiled"):
            try:
                self.compiled = self.compile_fn(self.eager)
            except Exception as exc:  # noqa: BLE001
                self._fall_back(exc)
                return
            self._unverified = mode == "compiled"
        self.mode, self.intervals = mode, []
        if mode == "trying":
            self.calls = self.warmup  # the first interval holds the compile, as in an uninterrupted run
    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.mode == "eager":
            return self.eager(*args)
        if self.mode == "compiled":
            assert self.compiled is not None
            if not self._unverified:
                return self.compiled(*args)
            self._unverified = False
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001
                self._fall_back(exc)
                return self.eager(*args)
        now = time.perf_counter()
        if self.calls > self.warmup + 1 and self._last is not None:
            self.intervals.append(now - self._last)
        if self.mode == "probing" and len(self.intervals) >= self.probe:
            self._decide_to_compile(now)
        elif self.mode == "trying" and len(self.intervals) >= self.probe + 1:
            self._keep_faster()
        self._last = now
        if self.mode in ("trying", "compiled"):
            assert self.compiled is not None
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001  (a compiler failure on its first calls: stay eager)
                if self.mode == "compiled":
                    raise
                self._fall_back(exc)
        return self.eager(*args)

    def _decide_to_compile(self, now: float) -> None:
        self.eager_seconds = statistics.median(self.intervals)
        remaining = max(0, self.total_calls - self.calls) * self.eager_seconds
        if remaining * self.gain <= self.compile_seconds:
            self.mode = "eager"  # what a run does by default: no event
            self.reason = (f"too few steps left for a compile to pay: {remaining:.1f} s of eager steps x "
                           f"{self.gain:.0%} expected gain <= {self.compile_seconds:.0f} s expected compile")
            return
        try:
            self.compiled = self.compile_fn(self.eager)
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)
            return
        self.mode, self.intervals = "trying", []

    def _keep_faster(self) -> None:
        # the first compiled interval holds the compiles of the forward and the backward
        self.first_compiled_seconds = self.intervals[0]
        self.compiled_seconds = statistics.median(self.intervals[1:])
        keep = self.compiled_seconds < self.eager_seconds * (1 - self.margin)
        self.mode = "compiled" if keep else "eager"
        self.on_event("compile", decision=self.mode, eager_ms=round(self.eager_seconds * 1e3, 2),
                      compiled_ms=round(self.compiled_seconds * 1e3, 2),
                      speedup=round(self.eager_seconds / self.compiled_seconds, 3),
                      first_compiled_step_s=round(self.first_compiled_seconds, 1))

    def _fall_back(self, exc: Exception) -> None:
        text = str(exc).strip()
        why = f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
        self.mode = "eager"
        warnings.warn(f"[compile] enabled = \"auto\": torch.compile failed ({why}); training eagerly", stacklevel=3)
        self.on_event("compile", decision="eager", reason=f"compile failed: {why}")
