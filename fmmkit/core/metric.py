"""Sample-quality metrics: a number comparing generated samples with reference data."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from fmmkit.core.component import Component
from fmmkit.core.data import DataSource


class Metric(Component, ABC):
    """``metric(samples, reference, data) -> float``; lower is better unless ``higher_is_better``."""

    higher_is_better: bool = False

    @abstractmethod
    def __call__(self, samples: Tensor, reference: Tensor, data: DataSource) -> float:
        """Compare ``samples`` (N, ...) with ``reference`` (M, ...) drawn from ``data``."""
