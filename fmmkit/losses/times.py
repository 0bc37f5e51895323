"""Sampling the times t and pairs (s, t) at which losses are evaluated (shared by every loss).

A spec chooses them in the nested table ``[loss.times]``:

- ``distribution``: ``uniform`` (t ~ U[t_min, t_max]); ``logit_normal`` (t = t_min + (t_max - t_min)
  sigmoid(logit_mean + logit_std n), n ~ N(0, 1), as in SD3 and MeanFlow); ``discrete`` (t uniform on
  the grid t_min + k (t_max - t_min) / grid_size, k = 0..grid_size, as in discrete-time distillation).
- pairs (s, t): ``pairs = "independent"`` takes two independent draws, sorted for ``order = "forward"``
  (s <= t: uniform on the triangle for ``uniform``, so the gap t - s has density 2 (1 - d) and the long
  jumps that few-step sampling uses are rare) or left as drawn for ``order = "both"`` (maps backwards in
  time too); ``pairs = "gap"`` draws the gap d = t - s from the distribution (rescaled to
  [0, t_max - t_min]) and then s uniformly on [t_min, t_max - d] (with ``order = "both"`` the pair is
  swapped with probability 1/2), so every gap length is equally likely for ``uniform``.
  ``TIME_ORDERS`` is the one vocabulary of time order, here and in :mod:`fmmkit.verification`.
- ``pair_distribution``: the distribution of the off-diagonal pairs' draws when it should differ from the
  s = t rows' (``"same"``, the default: ``distribution`` for both). The s = t rows train the velocity
  v_{t,t}, the pairs the jumps; a velocity trained at logit-normal times while the pairs stay uniform
  (so the long jumps from t = 0 that one-step sampling takes keep their share) made the main job's
  one-step samples much sharper (issue 13, session 8: in the squares 0.865 -> 0.895; the same times for
  the pairs too: 0.835). ``logit_mean``, ``logit_std`` and ``grid_size`` serve whichever uses them.
- ``uniform_fraction``: the share of a logit-normal or discrete distribution's draws taken uniform on
  [t_min, t_max] instead, a floor under its density: logit-normal(1, 1) alone almost never draws t < 0.1
  (0.07%), so the velocity there stays untrained while the pairs' Lagrangian targets use it, and LSD on
  the 8-D Gaussian diverged (issue 13, session 8); 0 keeps the distribution as it is. A vector of times
  takes its first rows uniform; the two draws of a pair are each uniform with that probability.
- ``diagonal_fraction``: the share of the batch on s = t, the one key for it in every loss (the
  self-distillation losses' eta, MeanFlow's "fraction of r = t"); those rows are the first
  round(fraction * n) of the batch (batch rows are exchangeable) and keep the pair's start
  time s: t is set to s, as MeanFlow's ``sample_tr`` keeps its t (the noisier time, our s).
- ``anchor_fraction``: the share of the off-diagonal pairs whose start s is moved to t_min, where
  sampling starts (one-step sampling is X_{t_min, t_max}); t keeps its draw (for ``independent``
  forward pairs the larger of two uniforms, density 2t), so those rows train the jumps from noise that
  one- and few-step sampling take; 0 keeps every pair as drawn. Those rows follow the diagonal ones.
- ``gap_warmup_steps``: a curriculum on the gap, short jumps first (2511.19065): at optimiser step k
  every drawn gap t - s is multiplied by min(1, k / gap_warmup_steps), so the model's velocity is
  learnt before the long jumps whose self-distillation targets it feeds; 0: no curriculum.

A loss whose defaults differ (the diagonal share of the self-distillation losses and MeanFlow,
direct FMM's order) declares a subclass that overrides the field, so that a partial
``[loss.times]`` table keeps the loss's other defaults.
"""

from __future__ import annotations

import warnings

import attrs
import torch
from torch import Tensor

from fmmkit.core.validators import SpecValueError, non_negative, one_of, positive, unit_interval
from fmmkit.moved import moved_getattr

TIME_DISTRIBUTIONS = ("uniform", "logit_normal", "discrete")
#: ``pair_distribution``: one of TIME_DISTRIBUTIONS, or "same" (the pairs draw from ``distribution``)
PAIR_DISTRIBUTIONS = ("same", *TIME_DISTRIBUTIONS)
#: "forward": s <= t (s <= u <= t for triples); "both": any order, maps backwards in time too.
TIME_ORDERS = ("forward", "both")
#: "independent": two draws, sorted for "forward"; "gap": the gap t - s drawn first, then s.
PAIR_KINDS = ("independent", "gap")

__getattr__ = moved_getattr(__name__)  # PAIR_ORDERS is TIME_ORDERS


def time_order(order: str) -> str:
    """``order`` checked against TIME_ORDERS ("any", its former second name, is "both" with a DeprecationWarning)."""
    if order == "any":
        warnings.warn('time order "any" is deprecated and will be removed in fmmkit 0.2; use "both"',
                      DeprecationWarning, stacklevel=3)
        return "both"
    if order not in TIME_ORDERS:
        raise ValueError(f"order must be one of {TIME_ORDERS}, got {order!r}")
    return order


@attrs.define(frozen=True)
class TimeSampling:
    """Where losses sample times: distribution on [t_min, t_max], the order of pairs, the diagonal share.

    logit_mean, logit_std: of ``logit_normal``; grid_size: intervals of the ``discrete`` grid; pairs:
    ``independent`` draws or a drawn ``gap``; pair_distribution: the off-diagonal pairs' own distribution
    (see the module docstring).
    """

    distribution: str = attrs.field(default="uniform", validator=one_of(TIME_DISTRIBUTIONS))
    t_min: float = attrs.field(default=0.0, validator=unit_interval)
    t_max: float = attrs.field(default=1.0, validator=unit_interval)
    order: str = attrs.field(default="forward", validator=one_of(TIME_ORDERS))
    logit_mean: float = 0.0
    logit_std: float = attrs.field(default=1.0, validator=positive)
    grid_size: int = attrs.field(default=0, validator=non_negative)
    diagonal_fraction: float = attrs.field(default=0.0, validator=unit_interval)
    pairs: str = attrs.field(default="independent", validator=one_of(PAIR_KINDS))
    #: share of the off-diagonal pairs that start at s = t_min (the jumps from noise that sampling takes)
    anchor_fraction: float = attrs.field(default=0.0, validator=unit_interval)
    #: optimiser steps over which the largest gap t - s grows from 0 to its full range (0: no curriculum)
    gap_warmup_steps: int = attrs.field(default=0, validator=non_negative)
    #: the off-diagonal pairs' distribution: "same" (``distribution``) or one of its own
    pair_distribution: str = attrs.field(default="same", validator=one_of(PAIR_DISTRIBUTIONS))
    #: share of the draws of a logit-normal or discrete distribution taken uniform instead (a floor on the density)
    uniform_fraction: float = attrs.field(default=0.0, validator=unit_interval)

    def __attrs_post_init__(self) -> None:
        if self.t_min > self.t_max:
            raise SpecValueError("t_max", f"must be >= t_min = {self.t_min}, got {self.t_max}")
        for key in ("distribution", "pair_distribution"):
            if getattr(self, key) == "discrete" and self.grid_size < 1:
                raise SpecValueError("grid_size",
                                     f"must be >= 1 (the number of grid intervals) for {key} = \"discrete\"")

    @property
    def pair_kind(self) -> str:
        """The distribution the off-diagonal pairs draw from (``pair_distribution``, or ``distribution``)."""
        return self.distribution if self.pair_distribution == "same" else self.pair_distribution

    def unit(self, n: int, device: torch.device | str, dtype: torch.dtype, kind: str | None = None, *,
             per_draw: bool = False) -> Tensor:
        """n draws in [0, 1] of distribution ``kind`` (default: ``distribution``) before mapping to [t_min, t_max];
        ``uniform_fraction`` of them uniform: the first rows of the vector (its rows are exchangeable), or with
        ``per_draw`` each draw with that probability (the pairs' endpoints, whose rows are not: the s = t rows lead)."""
        kind = kind or self.distribution
        if kind == "uniform":
            return torch.rand(n, device=device, dtype=dtype)
        n_uniform = 0 if per_draw else diagonal_count(n, self.uniform_fraction)
        if kind == "logit_normal":
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n - n_uniform, device=device, dtype=dtype))
        else:  # discrete
            u = torch.randint(0, self.grid_size + 1, (n - n_uniform,), device=device).to(dtype) / self.grid_size
        if per_draw and self.uniform_fraction:
            uniform = torch.rand(n, device=device) < self.uniform_fraction
            return torch.where(uniform, torch.rand(n, device=device, dtype=dtype), u)
        return torch.cat([torch.rand(n_uniform, device=device, dtype=dtype), u]) if n_uniform else u

    def sample(self, n: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
               kind: str | None = None, *, per_draw: bool = False) -> Tensor:
        """n times (n,) of distribution ``kind`` (default: ``distribution``, the times of the s = t rows);
        ``per_draw``: see :meth:`unit`."""
        return self.t_min + (self.t_max - self.t_min) * self.unit(n, device, dtype, kind, per_draw=per_draw)

    def gap_scale(self, step: int) -> float:
        """The curriculum's factor on every gap at optimiser step ``step``: min(1, step / gap_warmup_steps)
        (1 without a curriculum)."""
        return 1.0 if not self.gap_warmup_steps else min(1.0, step / self.gap_warmup_steps)

    def sample_pairs(
        self, n: int, device: torch.device | str, dtype: torch.dtype = torch.float32, *, off_diagonal: bool = False,
        step: int | None = None, gap_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """n pairs (s, t), each (n,): s <= t for ``forward``, any order for ``both``; the first
        round(diagonal_fraction * n) pairs have s = t (= the pair's s), unless ``off_diagonal`` (the rows of a batch
        whose diagonal share a loss already split off); ``step`` (the optimiser step) applies
        ``gap_warmup_steps``, or ``gap_scale``, the factor :meth:`gap_scale` as a 0-dim tensor (no Python branch
        on the step: a compiled loss reads each step's factor without recompiling; a factor of 1 leaves t as drawn)."""
        kind = self.pair_kind
        if self.pairs == "gap":
            gap = (self.t_max - self.t_min) * self.unit(n, device, dtype, kind, per_draw=True)
            s = self.t_min + (self.t_max - self.t_min - gap) * torch.rand(n, device=device, dtype=dtype)
            t = s + gap
            if self.order == "both":
                swap = torch.rand(n, device=device) < 0.5
                s, t = torch.where(swap, t, s), torch.where(swap, s, t)
        else:
            a, b = self.sample(n, device, dtype, kind, per_draw=True), self.sample(n, device, dtype, kind, per_draw=True)
            s, t = (torch.minimum(a, b), torch.maximum(a, b)) if self.order == "forward" else (a, b)
        n_diag = 0 if off_diagonal else diagonal_count(n, self.diagonal_fraction)
        if n_diag and kind != self.distribution:  # the s = t rows are velocity rows: the diagonal's own times
            s = torch.cat([self.sample(n_diag, device, dtype), s[n_diag:]])
        n_anchor = diagonal_count(n - n_diag, self.anchor_fraction)
        if n_anchor:
            s = torch.cat([s[:n_diag], torch.full_like(s[n_diag:n_diag + n_anchor], self.t_min), s[n_diag + n_anchor:]])
        if gap_scale is None and self.gap_warmup_steps and step is not None:
            gap_scale = torch.tensor(self.gap_scale(step))
        if gap_scale is not None:  # after anchoring: anchored jumps are held back too
            scale = gap_scale.to(dtype)
            t = torch.where(scale < 1, s + (t - s) * scale, t)
        if n_diag:
            t = torch.cat([s[:n_diag], t[n_diag:]])
        return s, t


@attrs.define(frozen=True)
class DiagonalHeavyTimes(TimeSampling):
    """Time sampling with 75% of the batch on s = t: the default of the self-distillation losses
    (eta = 0.75, 2505.18825) and of MeanFlow (its "fraction of r = t" of 0.75)."""

    diagonal_fraction: float = attrs.field(default=0.75, validator=unit_interval)


def diagonal_count(n: int, fraction: float) -> int:
    """round(fraction * n), clipped to [0, n]: the rows of a batch of n that go to the diagonal."""
    return min(n, max(0, round(fraction * n)))


def stochastic_time_bounds(times: TimeSampling, stochastic: bool, eps: float = 1e-3) -> TimeSampling:
    """Keep times off {0, 1} when gamma' is singular there (a stochastic interpolant)."""
    if not stochastic:
        return times
    return attrs.evolve(times, t_min=max(times.t_min, eps), t_max=min(times.t_max, 1 - eps))
