"""hypothesis strategies for times: single times, pairs and triples (s, u, t) in [lo, hi].

``order = "forward"`` gives s <= u <= t (maps forward in time only); ``"any"`` gives the three times in
any order, so reversed maps X_{t,s} with t > s are drawn too. With ``endpoints = True`` the ends lo and
hi are drawn often (where interpolant coefficients and their derivatives are most fragile).

``grid = N`` draws times on the grid lo + (hi - lo) i / N from integers i instead of floats: hypothesis's
targeted search hill-climbs integers by +-1, 2, 4, ... (it cannot climb a float in [0, 1]), and for
``forward`` triples each integer then moves one degree of freedom (s, then t in [s, hi], then u in [s, t]).
"""

from __future__ import annotations

from hypothesis import strategies as st

TIME_ORDERS = ("forward", "any")


def _check(order: str, lo: float, hi: float) -> None:
    if order not in TIME_ORDERS:
        raise ValueError(f"order must be one of {TIME_ORDERS}, got {order!r}")
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")


def fractions(endpoints: bool = True, grid: int | None = None) -> st.SearchStrategy[float]:
    """A number in [0, 1]: a float, or i / grid; 0 and 1 themselves about 1/4 of the time when ``endpoints``."""
    if grid is not None:
        inner = st.integers(0, grid).map(lambda i: i / grid)
    else:
        inner = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from([0.0, 1.0]), inner, inner, inner) if endpoints else inner


def times(lo: float = 0.0, hi: float = 1.0, endpoints: bool = True, grid: int | None = None) -> st.SearchStrategy[float]:
    """A time in [lo, hi]."""
    _check("any", lo, hi)
    return fractions(endpoints, grid).map(lambda f: min(hi, lo + (hi - lo) * f))


def time_pairs(order: str = "any", lo: float = 0.0, hi: float = 1.0, endpoints: bool = True,
               grid: int | None = None) -> st.SearchStrategy[tuple[float, float]]:
    """(s, t): s <= t for ``forward``, any order for ``any``."""
    _check(order, lo, hi)
    if order == "any":
        return st.tuples(times(lo, hi, endpoints, grid), times(lo, hi, endpoints, grid))
    f = fractions(endpoints, grid)
    return st.tuples(f, f).map(lambda p: _forward_pair(lo, hi, *p))


def time_triples(order: str = "any", lo: float = 0.0, hi: float = 1.0, endpoints: bool = True,
                 grid: int | None = None) -> st.SearchStrategy[tuple[float, float, float]]:
    """(s, u, t): s <= u <= t for ``forward``, any order (reversed included) for ``any``."""
    _check(order, lo, hi)
    if order == "any":
        t = times(lo, hi, endpoints, grid)
        return st.tuples(t, t, t)
    f = fractions(endpoints, grid)
    return st.tuples(f, f, f).map(lambda p: _forward_triple(lo, hi, *p))


def _forward_pair(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    s = min(hi, lo + (hi - lo) * a)
    return s, min(hi, s + (hi - s) * b)


def _forward_triple(lo: float, hi: float, a: float, b: float, c: float) -> tuple[float, float, float]:
    s, t = _forward_pair(lo, hi, a, b)
    return s, min(t, s + (t - s) * c), t
