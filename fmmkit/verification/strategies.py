"""hypothesis strategies for times: single times, pairs and triples (s, u, t) in [lo, hi].

``order = "forward"`` gives s <= u <= t (maps forward in time only); ``"both"`` gives the three times in
any order, so reversed maps X_{t,s} with t > s are drawn too (the words of
:data:`fmmkit.losses.times.TIME_ORDERS`; ``"any"``, the former name of ``"both"``, still works with a
DeprecationWarning). With ``endpoints = True`` the ends lo and
hi are drawn often (where interpolant coefficients and their derivatives are most fragile).

``grid = N`` draws times on the grid lo + (hi - lo) i / N as a float start plus an integer offset:
hypothesis generates floats spread over [0, 1] (its integers crowd near 0), and its targeted search
hill-climbs the integer by +-1, 2, 4, ... grid steps (it cannot climb a float in [0, 1]). For
``forward`` triples each draw moves one degree of freedom (s, then t in [s, hi], then u in [s, t]).
"""

from __future__ import annotations

from hypothesis import strategies as st

from fmmkit.losses.times import TIME_ORDERS, time_order

__all__ = ["TIME_ORDERS", "forward_pair", "forward_triple", "fractions", "time_pairs", "time_triples", "times"]


def _check(order: str, lo: float, hi: float) -> str:
    order = time_order(order)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
    return order


def fractions(endpoints: bool = True, grid: int | None = None) -> st.SearchStrategy[float]:
    """A number in [0, 1] (on the grid i / grid when given); 0 and 1 about 1/4 of the time when ``endpoints``."""
    if grid is not None:
        offsets = st.tuples(st.floats(0.0, 1.0), st.integers(-grid, grid))
        inner = offsets.map(lambda p: min(1.0, max(0.0, round(p[0] * grid + p[1]) / grid)))
    else:
        inner = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from([0.0, 1.0]), inner, inner, inner) if endpoints else inner


def times(lo: float = 0.0, hi: float = 1.0, endpoints: bool = True, grid: int | None = None) -> st.SearchStrategy[float]:
    """A time in [lo, hi]."""
    _check("both", lo, hi)
    return fractions(endpoints, grid).map(lambda f: min(hi, lo + (hi - lo) * f))


def time_pairs(order: str = "both", lo: float = 0.0, hi: float = 1.0, endpoints: bool = True,
               grid: int | None = None) -> st.SearchStrategy[tuple[float, float]]:
    """(s, t): s <= t for ``forward``, any order for ``both``."""
    if _check(order, lo, hi) == "both":
        return st.tuples(times(lo, hi, endpoints, grid), times(lo, hi, endpoints, grid))
    f = fractions(endpoints, grid)
    return st.tuples(f, f).map(lambda p: forward_pair(lo, hi, *p))


def time_triples(order: str = "both", lo: float = 0.0, hi: float = 1.0, endpoints: bool = True,
                 grid: int | None = None) -> st.SearchStrategy[tuple[float, float, float]]:
    """(s, u, t): s <= u <= t for ``forward``, any order (reversed included) for ``both``."""
    if _check(order, lo, hi) == "both":
        t = times(lo, hi, endpoints, grid)
        return st.tuples(t, t, t)
    f = fractions(endpoints, grid)
    return st.tuples(f, f, f).map(lambda p: forward_triple(lo, hi, *p))


def forward_pair(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    """(s, t) with s = lo + (hi - lo) a and t = s + (hi - s) b, for a, b in [0, 1]."""
    s = min(hi, lo + (hi - lo) * a)
    return s, min(hi, s + (hi - s) * b)


def forward_triple(lo: float, hi: float, a: float, b: float, c: float) -> tuple[float, float, float]:
    """(s, u, t) with (s, t) from :func:`forward_pair` and u = s + (t - s) c."""
    s, t = forward_pair(lo, hi, a, b)
    return s, min(t, s + (t - s) * c), t
