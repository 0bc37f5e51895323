"""``npy``: a finite data set (N, ...) loaded from a NumPy .npy file, sampled with replacement.

Optional integer labels (N,) come from a second .npy file. With ``standardize = true`` every
coordinate is shifted and scaled to mean 0 and std 1 over the data set (``mean``/``std`` are kept to
map samples back: x_original = x * std + mean).
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


def _load(path: str, what: str) -> np.ndarray:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{what} file '{path}' does not exist; check the path in the [data] table")
    try:
        return np.load(file, allow_pickle=False)
    except Exception as exc:  # not an .npy, a pickled object array, a truncated file...
        raise DataError(
            f"{what} file '{path}' is not a readable .npy array ({type(exc).__name__}: {exc}); "
            "save it with numpy.save(path, array) from a numeric array"
        ) from exc


def _load_data(path: str) -> Tensor:
    array = _load(path, "data")
    if array.dtype.kind not in "fiub":
        raise DataError(f"data file '{path}' holds dtype {array.dtype}; save a numeric (float) array")
    if array.ndim < 2 or array.shape[0] == 0:
        raise DataError(
            f"data file '{path}' has shape {array.shape}; expected (N, ...) with N >= 1 points "
            "(reshape 1D data to (N, 1))"
        )
    data = torch.from_numpy(array.astype(np.float32))
    if not bool(torch.isfinite(data).all()):
        raise DataError(f"data file '{path}' contains NaN or infinite values; clean or drop those points")
    return data


def _load_labels(path: str, n: int) -> tuple[Tensor, int]:
    array = _load(path, "labels")
    if array.dtype.kind not in "iub" or array.shape != (n,) or (n and array.min() < 0):
        raise DataError(
            f"labels file '{path}' has dtype {array.dtype} and shape {array.shape}; "
            f"expected {n} non-negative integers, shape ({n},)"
        )
    labels = torch.from_numpy(array.astype(np.int64))
    return labels, int(labels.max()) + 1


class NpyData(TensorDataSource):
    """The points of a .npy file, drawn uniformly with replacement (optionally standardized)."""

    Config = NpyConfig

    def __init__(self, config: NpyConfig) -> None:
        self.config = config
        data = _load_data(config.path)
        labels, num_classes = _load_labels(config.labels_path, len(data)) if config.labels_path else (None, None)
        self.mean = data.mean(dim=0)
        self.std = data.std(dim=0).clamp_min(1e-12) if len(data) > 1 else torch.ones_like(self.mean)
        if config.standardize:
            data = (data - self.mean) / self.std
        super().__init__(data, labels, num_classes)

    def bounds(self) -> tuple[float, float]:
        """[min, max] over every coordinate of the data, widened by 10% of the range on each side."""
        lo, hi = float(self.data.min()), float(self.data.max())
        margin = 0.1 * (hi - lo) if hi > lo else 1.0
        return (lo - margin, hi + margin)


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("npy", NpyData)
