"""Spec helpers shared by the Gaussian teachers and the ``gaussian`` data set: per-coordinate lists."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fmmkit.core.validators import SpecValueError


def non_empty(instance: object, attribute: attrs.Attribute[list[float]], value: list[float]) -> None:
    """attrs validator: the list has at least one entry."""
    if len(value) == 0:
        raise SpecValueError(attribute.name, "must have at least one entry")


def per_coordinate(values: list[float], name: str, data_shape: tuple[int, ...]) -> Tensor:
    """A float64 tensor shaped like one data point from 1 entry (broadcast) or one entry per coordinate."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if not data_shape:
        return tensor
    size = math.prod(data_shape)
    if tensor.numel() == 1:
        return tensor.expand(size).reshape(data_shape)
    if tensor.numel() == size:
        return tensor.reshape(data_shape)
    raise SpecValueError(name, f"has {tensor.numel()} entries but data points have {size} coordinates; give 1 or {size}")
