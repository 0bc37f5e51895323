"""Adversarial time triples: hypothesis's targeted search for the (s, u, t) that maximises a defect.

hypothesis generates triples and then, in its ``target`` phase, hill-climbs on the score passed to
``hypothesis.target`` (mutating the best triples found so far), which finds sharp maxima that uniform
sampling misses. The search is seeded, keeps no example database, and never fails: it only records
the worst triple seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, seed, settings, target

from fmmkit.verification.strategies import time_triples

#: Times are searched on the grid i / 2^20 (integers are what the target phase can hill-climb).
SEARCH_GRID = 2**20


@dataclass(frozen=True)
class WorstCase:
    """The largest defect found, at times (s, u, t), after ``examples`` evaluations."""

    value: float
    s: float
    u: float
    t: float
    examples: int


def worst_triple(defect: Callable[[float, float, float], float], *, order: str = "forward", lo: float = 0.0,
                 hi: float = 1.0, examples: int = 200, random_seed: int = 0) -> WorstCase:
    """The (s, u, t) in [lo, hi]^3 (ordered for ``forward``) with the largest ``defect(s, u, t)``."""
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    best: list[tuple[float, tuple[float, float, float]]] = []
    count = [0]

    @seed(random_seed)
    @settings(max_examples=examples, phases=[Phase.generate, Phase.target], database=None, deadline=None,
              derandomize=False, suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(triple=time_triples(order, lo, hi, grid=SEARCH_GRID))
    def probe(triple: tuple[float, float, float]) -> None:
        value = float(defect(*triple))
        count[0] += 1
        if value != value:  # NaN: the worst possible outcome, report it as such
            value = float("inf")
        target(min(value, 1e300), label="defect")
        if not best or value > best[0][0]:
            best[:] = [(value, triple)]

    probe()
    value, (s, u, t) = best[0]
    return WorstCase(value, s, u, t, count[0])
