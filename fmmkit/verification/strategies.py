"""hypothesis strategies for times: single times, pairs and triples (s, u, t) in [lo, hi].

``order = "forward"`` gives s <= u <= t (maps forward in time only); ``"any"`` gives the three times in
any order, so reversed maps X_{t,s} with t > s are drawn too. With ``endpoints = True`` the ends lo and
hi are drawn often (where interpolant coefficients and their derivatives are most fragile).
"""

from __future__ import annotations

from hypothesis import strategies as st

TIME_ORDERS = ("forward", "any")


def times(lo: float = 0.0, hi: float = 1.0, endpoints: bool = True) -> st.SearchStrategy[float]:
    """A time in [lo, hi]; the ends themselves with probability about 1/4 when ``endpoints``."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
    inner = st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from([lo, hi]), inner, inner, inner) if endpoints else inner


def _check_order(order: str) -> None:
    if order not in TIME_ORDERS:
        raise ValueError(f"order must be one of {TIME_ORDERS}, got {order!r}")


def time_pairs(order: str = "any", lo: float = 0.0, hi: float = 1.0,
               endpoints: bool = True) -> st.SearchStrategy[tuple[float, float]]:
    """(s, t): s <= t for ``forward``, any order for ``any``."""
    _check_order(order)
    pair = st.tuples(times(lo, hi, endpoints), times(lo, hi, endpoints))
    return pair.map(lambda p: (min(p), max(p))) if order == "forward" else pair


def time_triples(order: str = "any", lo: float = 0.0, hi: float = 1.0,
                 endpoints: bool = True) -> st.SearchStrategy[tuple[float, float, float]]:
    """(s, u, t): s <= u <= t for ``forward``, any order (reversed included) for ``any``."""
    _check_order(order)
    triple = st.tuples(times(lo, hi, endpoints), times(lo, hi, endpoints), times(lo, hi, endpoints))
    return triple.map(lambda p: tuple(sorted(p))) if order == "forward" else triple  # type: ignore[return-value]
