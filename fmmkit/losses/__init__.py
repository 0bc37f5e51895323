"""Losses: the shared kit every loss builds on, and the built-in losses (each module a default plugin).

A plugin loss subclasses :class:`FlowMapLoss` with a Config subclassing :class:`LossTables` and gets,
as every built-in does, ``[loss.times]`` (:class:`TimeSampling`: distribution, order, the share of the
batch on s = t), ``[loss.weighting]`` (:class:`WeightingConfig`), ``[loss.guidance]``
(:class:`GuidanceConfig`), label dropout, the stochastic-interpolant time bounds and time dtypes that
follow the data (float64 data, float64 times). It implements ``terms(model, batch, teacher, step)``
returning per-sample :class:`Term` s; a ``derivative`` field (``jvp`` / ``finite_difference``) selects
how :meth:`FlowMapLoss.eulerian_parts` and :mod:`fmmkit.core.derivatives` differentiate.
"""

from fmmkit.losses.base import FlowMapLoss, LossTables, SelfDistillationLoss, SelfDistillationTables, Term
from fmmkit.losses.guidance import GuidanceConfig
from fmmkit.losses.times import TIME_ORDERS, DiagonalHeavyTimes, TimeSampling
from fmmkit.losses.weighting import WeightingConfig

__all__ = ["TIME_ORDERS", "DiagonalHeavyTimes", "FlowMapLoss", "GuidanceConfig", "LossTables", "SelfDistillationLoss",
           "SelfDistillationTables", "Term", "TimeSampling", "WeightingConfig"]
