"""Adversarial time triples: the (s, u, t) that maximises a defect, by a three-stage search.

1. hypothesis generates triples (endpoints and coincident times included) and, in its ``target``
   phase, hill-climbs the score passed to ``hypothesis.target``;
2. uniformly random triples cover the interior evenly;
3. a compass search (each coordinate +-h, h halved when nothing improves) climbs from the best so far.

Triples are searched through fractions (a, b, c) in [0, 1]^3: for ``forward`` order s = lo + (hi - lo) a,
t = s + (hi - s) b, u = s + (t - s) c, so every fraction moves one degree of freedom and s <= u <= t;
for ``any`` order each fraction is one time. The search is seeded and keeps no example database.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, seed, settings, target
from hypothesis import strategies as st

from fmmkit.losses.times import time_order
from fmmkit.verification.strategies import forward_triple, fractions

#: Fractions are searched on the grid i / 2^20 (integers are what hypothesis's target phase can climb).
SEARCH_GRID = 2**20

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class WorstCase:
    """The largest defect found, at times (s, u, t), after ``examples`` evaluations; ``stage`` found it."""

    value: float
    s: float
    u: float
    t: float
    examples: int
    stage: str


class _Tracker:
    """Evaluates fractions, remembers the best triple, counts evaluations (NaN counts as infinite)."""

    def __init__(self, defect: Callable[[float, float, float], float], to_times: Callable[[Triple], Triple]) -> None:
        self.defect = defect
        self.to_times = to_times
        self.best: tuple[float, Triple, Triple, str] = (-math.inf, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), "")
        self.count = 0

    def __call__(self, point: Triple, stage: str) -> float:
        times = self.to_times(point)
        value = float(self.defect(*times))
        value = math.inf if math.isnan(value) else value
        self.count += 1
        if value > self.best[0]:
            self.best = (value, point, times, stage)
        return value


def _hypothesis_stage(track: _Tracker, examples: int, random_seed: int) -> None:
    @seed(random_seed)
    @settings(max_examples=examples, phases=[Phase.generate, Phase.target], database=None, deadline=None,
              derandomize=False, suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(point=st.tuples(*[fractions(endpoints=True, grid=SEARCH_GRID)] * 3))
    def probe(point: Triple) -> None:
        target(min(track(point, "hypothesis"), 1e300), label="defect")

    probe()


def _compass_stage(track: _Tracker, budget: int) -> None:
    point, h = track.best[1], 0.25
    while budget > 0 and h > 1e-6:
        improved = False
        for i in range(3):
            for sign in (1.0, -1.0):
                if budget <= 0:
                    return
                trial = list(point)
                trial[i] = min(1.0, max(0.0, trial[i] + sign * h))
                candidate = (trial[0], trial[1], trial[2])
                if candidate == point:
                    continue
                budget -= 1
                before = track.best[0]
                track(candidate, "compass")
                if track.best[0] > before:
                    point, improved = candidate, True
        if not improved:
            h /= 2


def worst_triple(defect: Callable[[float, float, float], float], *, order: str = "forward", lo: float = 0.0,
                 hi: float = 1.0, examples: int = 200, random_seed: int = 0) -> WorstCase:
    """The (s, u, t) in [lo, hi]^3 (s <= u <= t for ``forward``) with the largest ``defect(s, u, t)``.

    ``examples`` evaluations in all: half by hypothesis, a quarter uniform, a quarter compass search.
    """
    if examples < 4:
        raise ValueError(f"examples must be >= 4, got {examples}")
    if time_order(order) == "forward":
        to_times: Callable[[Triple], Triple] = lambda f: forward_triple(lo, hi, *f)  # noqa: E731
    else:
        to_times = lambda f: tuple(lo + (hi - lo) * x for x in f)  # type: ignore[assignment,return-value]  # noqa: E731
    track = _Tracker(defect, to_times)
    _hypothesis_stage(track, examples // 2, random_seed)
    rng = random.Random(random_seed)
    for _ in range(examples // 4):
        track((rng.random(), rng.random(), rng.random()), "uniform")
    _compass_stage(track, examples - track.count)
    value, _, (s, u, t), stage = track.best
    return WorstCase(value, s, u, t, track.count, stage)
