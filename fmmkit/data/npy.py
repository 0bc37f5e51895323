"""``npy``: a finite data set (N, ...) loaded from a NumPy .npy file, sampled with replacement.

Optional integer labels (N,) come from a second .npy file. With ``standardize = true`` every
coordinate is shifted and scaled to mean 0 and std 1 over the data set, in float64 so that data of
any float32 scale works (``mean``/``std`` are kept to map samples back: x_original = x * std + mean).
Without it, data beyond |x| = 1e8 is refused as a data problem: the noise is N(0, I).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from fmmkit.core import TensorDataSource
from fmmkit.data.errors import DataError
from fmmkit.hookspecs import hookimpl


@attrs.define(frozen=True)
class NpyConfig:
    """path: .npy file of shape (N, ...); labels_path: optional .npy of N integer labels; standardize."""

    path: str
    labels_path: str | None = None
    standardize: bool = False


#: Largest |value| accepted without ``standardize``: the noise is N(0, I), so the data must be about
#: unit scale; squares of much larger float32 values overflow in the losses.
MAX_ABS = 1e8


def _load(path: str, key: str) -> np.ndarray:
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataError(f"'{path}' is a directory, not a .npy file", key)
    if not file.is_file():
        raise DataError(f"file '{path}' does not exist; check {key} in the [data] table", key)
    try:
        return np.load(file, allow_pickle=False)
    except OSError as exc:
        if isinstance(exc, PermissionError):
            raise DataError(f"cannot read '{path}' ({exc.strerror}); make it readable", key, exit_status=1) from None
        raise DataError(f"'{path}' is not a readable .npy array ({type(exc).__name__}: {exc}); save it with "
                        "numpy.save(path, array) from a numeric array", key) from None
    except Exception as exc:  # not an .npy, a pickled object array, a truncated file...
        raise DataError(f"'{path}' is not a readable .npy array ({type(exc).__name__}: {exc}); save it with "
                        "numpy.save(path, array) from a numeric array", key) from None


def _load_data(path: str, standardize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The points (float32, standardized if asked) with the mean and std of the raw data (float64 math)."""
    array = _load(path, "path")
    if array.dtype.kind not in "fiub":
        raise DataError(f"'{path}' holds dtype {array.dtype}; save a numeric (float) array", "path")
    if array.ndim < 2 or array.shape[0] == 0:
        raise DataError(f"'{path}' has shape {array.shape}; expected (N, ...) with N >= 1 points "
                        "(reshape 1D data to (N, 1))", "path")
    if 0 in array.shape[1:]:
        raise DataError(f"'{path}' has shape {array.shape}: points with no features; save an array of shape "
                        "(N, D) with D >= 1", "path")
    data = torch.from_numpy(array.astype(np.float64))
    if not bool(torch.isfinite(data).all()):
        raise DataError(f"'{path}' contains NaN or infinite values; clean or drop those points", "path")
    mean = data.mean(dim=0)
    std = data.std(dim=0).clamp_min(1e-12) if len(data) > 1 else torch.ones_like(mean)
    if standardize:
        data = (data - mean) / std
    largest = float(data.abs().max())
    if largest > MAX_ABS:
        raise DataError(f"'{path}' holds values as large as {largest:.3g}; the noise is N(0, I), so the data must "
                        "be about unit scale: set standardize = true in [data], or rescale the array", "path")
    return data.to(torch.float32), mean.to(torch.float32), std.to(torch.float32)


def _load_labels(path: str, n: int) -> tuple[Tensor, int]:
    array = _load(path, "labels_path")
    if array.dtype.kind not in "iub" or array.shape != (n,) or (n and array.min() < 0):
        raise DataError(
            f"'{path}' has dtype {array.dtype} and shape {array.shape}; "
            f"expected {n} non-negative integers, shape ({n},)", "labels_path"
        )
    labels = torch.from_numpy(array.astype(np.int64))
    return labels, int(labels.max()) + 1


class NpyData(TensorDataSource):
    """The points of a .npy file, drawn uniformly with replacement (optionally standardized)."""

    Config = NpyConfig

    def __init__(self, config: NpyConfig) -> None:
        self.config = config
        data, self.mean, self.std = _load_data(config.path, config.standardize)
        labels, num_classes = _load_labels(config.labels_path, len(data)) if config.labels_path else (None, None)
        super().__init__(data, labels, num_classes)

    def bounds(self) -> tuple[float, float]:
        """[min, max] over every coordinate of the data, widened by 10% of the range on each side."""
        lo, hi = float(self.data.min()), float(self.data.max())
        margin = 0.1 * (hi - lo) if hi > lo else 1.0
        return (lo - margin, hi + margin)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("npy", NpyData)
