"""Sampling the times t and pairs (s, t) at which losses are evaluated (shared by every loss).

uniform: t ~ U[t_min, t_max]; pairs (s, t) uniform on the triangle s <= t of that interval
(``order = "forward"``) or on the square (``order = "both"``, maps backwards in time too).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from fmmkit.core.validators import one_of, unit_interval

TIME_DISTRIBUTIONS = ("uniform",)
PAIR_ORDERS = ("forward", "both")


@attrs.define(frozen=True)
class TimeSampling:
    """Where losses sample times: distribution on [t_min, t_max], and the order of pairs."""

    distribution: str = attrs.field(default="uniform", validator=one_of(TIME_DISTRIBUTIONS))
    t_min: float = attrs.field(default=0.0, validator=unit_interval)
    t_max: float = attrs.field(default=1.0, validator=unit_interval)
    order: str = attrs.field(default="forward", validator=one_of(PAIR_ORDERS))

    def sample(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """n times (n,)."""
        u = torch.rand(n, device=device, dtype=dtype)
        return self.t_min + (self.t_max - self.t_min) * u

    def sample_pairs(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """n pairs (s, t), each (n,): s <= t for ``forward``, any order for ``both``."""
        a, b = self.sample(n, device, dtype), self.sample(n, device, dtype)
        if self.order == "forward":
            return torch.minimum(a, b), torch.maximum(a, b)
        return a, b


def stochastic_time_bounds(times: TimeSampling, stochastic: bool, eps: float = 1e-3) -> TimeSampling:
    """Keep times off {0, 1} when gamma' is singular there (a stochastic interpolant)."""
    if not stochastic:
        return times
    return attrs.evolve(times, t_min=max(times.t_min, eps), t_max=min(times.t_max, 1 - eps))
