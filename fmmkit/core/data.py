"""Data sources: where the data x1 (and optional class labels y) of a run come from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fmmkit.core.component import Component


@dataclass
class Batch:
    """A batch of data points x1 of shape (B, ...) with optional integer labels y of shape (B,)."""

    x1: Tensor
    y: Tensor | None = None

    def __post_init__(self) -> None:
        if self.y is not None:
            assert self.y.shape == (self.x1.shape[0],), (
                f"labels must have shape ({self.x1.shape[0]},), got {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x1.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """The batch on ``device`` (data cast to ``dtype`` when given)."""
        x1 = self.x1.to(device=device, dtype=dtype or self.x1.dtype)
        return Batch(x1=x1, y=None if self.y is None else self.y.to(device))

    def split(self, sizes: list[int]) -> list[Batch]:
        """Consecutive sub-batches of the given sizes."""
        xs = torch.split(self.x1, sizes)
        ys = torch.split(self.y, sizes) if self.y is not None else [None] * len(xs)
        return [Batch(x, y) for x, y in zip(xs, ys)]


@dataclass(frozen=True)
class SupportRegion:
    """A region R of data space and the data's own probability of it, P_data(R) (``mass``).

    ``contains`` maps points (B, ...) to a boolean mask (B,). For data with bounded support R is the
    support {x : p(x) > 0} and mass = 1; for unbounded support R is a high-density region chosen to hold
    a given mass, and ``mass`` is its exact probability under the data (the score the data itself gets).
    """

    contains: Callable[[Tensor], Tensor]
    mass: float
    description: str


class DataSource(Component, ABC):
    """A distribution of data points to sample batches from.

    ``sample`` draws with the given generator, so that the generator's state is the whole data
    position of a run (saved in checkpoints, distinct per process).
    """

    #: Shape of one data point.
    shape: tuple[int, ...] = ()
    #: Number of class labels, or None for unlabelled data.
    num_classes: int | None = None

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """Draw n data points."""

    def density(self, x: Tensor) -> Tensor | None:
        """The true density at points x (B, ...), if known in closed form; else None."""
        return None

    def bounds(self) -> tuple[float, float] | None:
        """A box [lo, hi]^d holding (almost) all the mass of the data, used by histogram metrics."""
        return None

    def support_region(self, level: float) -> SupportRegion | None:
        """The data's support (bounded support: ``level`` is ignored, mass 1) or a high-density region of
        probability about ``level`` (unbounded support), or None if the data defines none."""
        return None


class TensorDataSource(DataSource):
    """A finite data set held in memory; batches are drawn uniformly with replacement."""

    def __init__(self, data: Tensor, labels: Tensor | None = None, num_classes: int | None = None) -> None:
        assert data.ndim >= 2, f"data must be (N, ...) with N points, got shape {tuple(data.shape)}"
        self.data = data
        self.labels = labels
        self.shape = tuple(data.shape[1:])
        self.num_classes = num_classes

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n points drawn uniformly with replacement."""
        idx = torch.randint(len(self), (n,), generator=generator)
        return Batch(self.data[idx], None if self.labels is None else self.labels[idx])
