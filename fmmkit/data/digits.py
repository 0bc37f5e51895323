"""``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), fmmkit's default image set.

The images ship inside scikit-learn (``sklearn.datasets.load_digits``), so nothing is downloaded.
Pixels 0..16 are scaled to [-1, 1]; ``size`` resizes them (antialiased bilinear) once, when the
source is built. ``labels = true`` returns the digit (0-9) for class-conditional models.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from torch import Tensor

from fmmkit.core.validators import at_least
from fmmkit.data.errors import DataError
from fmmkit.data.images import ImageSource
from fmmkit.hookspecs import hookimpl

DIGITS_MAX = 16.0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 in [0, 16], labels (1797,) int64) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("digits: scikit-learn is not installed; pip install scikit-learn (it ships the 8x8 digits)") from exc
    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


@attrs.define(frozen=True)
class DigitsConfig:
    """size: side of the images (8 = native); labels: return the digit; random_flip: left-right flips."""

    size: int = attrs.field(default=8, validator=at_least(2))
    labels: bool = False
    random_flip: bool = False


class Digits(ImageSource):
    """The 1797 scikit-learn digits as (1, size, size) images in [-1, 1], drawn with replacement."""

    Config = DigitsConfig
    max_value = DIGITS_MAX

    def __init__(self, config: DigitsConfig = DigitsConfig()) -> None:
        self.config = config
        super().__init__(1, config.size, 10 if config.labels else None, config.random_flip)
        self.pixels()  # small and always present: load (and resize) now

    def load(self) -> tuple[Tensor, Tensor | None]:
        images, labels = load_digits_arrays()
        pixels = torch.from_numpy(images).to(torch.float32)[:, None]  # (1797, 1, 8, 8) in [0, 16]
        if self.size != pixels.shape[-1]:  # resize once; sampling then only rescales
            pixels = (self.to_model_space(pixels) + 1) / 2 * DIGITS_MAX
        return pixels, torch.from_numpy(labels)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("digits", Digits)
