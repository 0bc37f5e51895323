"""Figures written straight to files with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_MAX_COLUMNS = 5


def _points(x: Any) -> np.ndarray:
    """(N, ...) array-like (NumPy or CPU torch) -> (N, D) float array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def _scatter(ax: Axes, x: np.ndarray, title: str, bounds: tuple[float, float] | None, color: str) -> None:
    if x.shape[1] >= 2:
        ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5, color=color, linewidths=0, rasterized=True)
        if bounds is not None:
            ax.set_xlim(*bounds)
            ax.set_ylim(*bounds)
        ax.set_aspect("equal")
    else:  # 1D data: a histogram
        ax.hist(x[:, 0], bins=100, range=bounds, color=color)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def save_sample_grid(
    path: str | Path,
    panels: list[tuple[str, np.ndarray]],
    reference: np.ndarray,
    bounds: tuple[float, float] | None,
) -> Path:
    """Write a PNG: the true data first, then one scatter per (title, samples) panel.

    Points of dimension > 2 are shown by their first two coordinates; ``bounds`` (lo, hi) fixes both
    axes (None: matplotlib's autoscaling). Returns the path written.
    """
    items = [("data", _points(reference), "tab:gray")] + [(t, _points(x), "tab:blue") for t, x in panels]
    cols = min(len(items), _MAX_COLUMNS)
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows), dpi=120)
    FigureCanvasAgg(fig)
    for i, (title, x, color) in enumerate(items):
        _scatter(fig.add_subplot(rows, cols, i + 1), x, title, bounds, color)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
