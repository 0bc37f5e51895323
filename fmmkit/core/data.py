"""Data sources: where the data x1 (and optional class labels y) of a run come from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fmmkit.core.component import Component


@dataclass
class Batch:
    """A batch of data points x1 of shape (B, ...) with optional integer labels y of shape (B,) (or, inside
    a loss with variable guidance, the conditioning matrix (B, 4) of :mod:`fmmkit.core.conditioning`)."""

    x1: Tensor
    y: Tensor | None = None

    def __post_init__(self) -> None:
        if self.y is not None:
            n = self.x1.shape[0]
            assert self.y.shape == (n,) or (self.y.ndim == 2 and self.y.shape[0] == n), (
                f"labels must have shape ({n},) (or ({n}, 4) with guidance), got {tuple(self.y.shape)}"
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
    #: False for a source whose points are placeholders (the ``prior`` of data-free losses).
    holds_data: ClassVar[bool] = True

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """Draw n data points."""

    def density(self, x: Tensor) -> Tensor | None:
        """The true density at points x (B, ...), if known in closed form; else None."""
        return None

    def bounds(self) -> tuple[float, float] | None:
        """A box [lo, hi]^d holding (almost) all the mass of the data, used by histogram metrics."""
        return None

    def reference(self) -> DataSource:
        """The data a run on this source is evaluated against: the source itself (a data-free source
        gives its teacher's data)."""
        return self

    def check_available(self) -> None:
        """Raise a one-line error (fmmkit.core.errors.UserError) when the data cannot be read, without
        reading it: a source that loads lazily (images from a root folder) checks its files are there.
        Training and ``fmmkit spec check`` call it; loading a trained run, which needs only the shape,
        does not. Default: nothing to check."""

    def decode(self, x: Tensor) -> Tensor:
        """Points of the space the model samples -> the space pictures and metrics use (the identity here;
        a latent data set decodes its latents to images with its autoencoder)."""
        return x

    @property
    def pixel_source(self) -> DataSource:
        """The data set in the space :meth:`decode` returns (itself here; a latent data set's image source)."""
        return self

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
