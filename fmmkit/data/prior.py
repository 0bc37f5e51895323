"""``prior``: no data at all, for data-free losses (FreeFlow, 2511.19428).

A spec without ``[data]`` (or with ``kind = "prior"``) trains on nothing but the prior: its batches carry
the shape of a data point and, for class-conditional runs, labels drawn uniformly, and their points are
zeros that a data-free loss (``Loss.needs_data = False``) never reads. Losses that need data refuse it
when the spec is loaded. The shape and the labels come from the teacher (the data set a ``run``
teacher was trained on, or the dimension of a ``gaussian`` teacher) unless given; so does the
*reference* the run is evaluated against (``reference()``): a data-free run is scored against its
teacher's data.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from fmmkit.core import Batch, BuildContext, DataSource
from fmmkit.core.errors import UserError
from fmmkit.core.validators import SpecValueError, each, positive
from fmmkit.hookspecs import hookimpl

#: extras key of the BuildContext: the teacher's data set (or None), for the shape, labels and reference
TEACHER_DATA = "teacher_data"


@attrs.define(frozen=True)
class PriorConfig:
    """shape: of one point (empty: the teacher's); num_classes: labels drawn uniformly (-1: the
    teacher's, 0: none)."""

    shape: list[int] = attrs.field(factory=list, validator=each(positive))
    num_classes: int = attrs.field(default=-1)

    def __attrs_post_init__(self) -> None:
        if self.num_classes < -1:
            raise SpecValueError("num_classes", f"must be -1 (the teacher's), 0 (none) or a count, got {self.num_classes}")


class PriorData(DataSource):
    """Batches of zeros of the data's shape (and uniform labels): a data-free loss reads neither."""

    Config = PriorConfig
    holds_data = False

    def __init__(self, shape: tuple[int, ...], num_classes: int | None, reference: DataSource | None = None) -> None:
        self.shape = shape
        self.num_classes = num_classes
        self._reference = reference

    @classmethod
    def build(cls, config: PriorConfig, ctx: BuildContext) -> PriorData:
        teacher_data: DataSource | None = ctx.extras.get(TEACHER_DATA)
        shape = tuple(config.shape) or (tuple(teacher_data.shape) if teacher_data is not None else ())
        if not shape:
            raise SpecValueError("shape", "give the shape of one data point (e.g. shape = [2]): this teacher does "
                                          "not say it (a run teacher or a gaussian teacher does)")
        if teacher_data is not None and tuple(teacher_data.shape) != shape:
            raise SpecValueError("shape", f"is {list(shape)} but the teacher's data have shape {list(teacher_data.shape)}")
        if config.num_classes == -1:
            classes = teacher_data.num_classes if teacher_data is not None else None
        else:
            classes = config.num_classes or None
        return cls(shape, classes, teacher_data)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        labels = torch.randint(self.num_classes, (n,), generator=generator) if self.num_classes else None
        return Batch(torch.zeros((n, *self.shape)), labels)

    def reference(self) -> DataSource:
        """The teacher's data, which a data-free run is evaluated against."""
        if self._reference is None:
            raise UserError("data: a data-free run (data kind \"prior\") is evaluated against its teacher's data, "
                            "but this teacher has none (use a run teacher or a gaussian teacher)")
        return self._reference

    def bounds(self) -> Any:
        return self._reference.bounds() if self._reference is not None else None


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("prior", PriorData)
