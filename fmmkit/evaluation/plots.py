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


#: images drawn per panel of an image grid
IMAGE_GRID_SIZE = 64


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_").replace("__", "_")


def save_image_grids(path: str | Path, panels: list[tuple[str, Any]], reference: Any) -> Path:
    """Image data: a PNG of titled image grids (the data first, then one per panel), and each grid
    also on its own as ``<stem>_<title>.png`` beside it (torchvision make_grid / save_image).

    Images are (N, C, H, W) in [-1, 1] (NumPy or torch); the first IMAGE_GRID_SIZE of each are shown,
    enlarged by pixel repetition to at least 32 pixels a side.
    """
    import torch
    from torchvision.utils import make_grid, save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [("data", reference)] + list(panels)
    grids = []
    for title, x in items:
        images = ((torch.as_tensor(np.asarray(x))[:IMAGE_GRID_SIZE].float() + 1) / 2).clamp(0, 1)
        assert images.ndim == 4, f"image grids need (N, C, H, W) images, got shape {tuple(images.shape)}"
        zoom = math.ceil(32 / images.shape[-1])  # small images (8x8 digits) are enlarged, pixel for pixel
        if zoom > 1:
            images = images.repeat_interleave(zoom, dim=-1).repeat_interleave(zoom, dim=-2)
        grid = make_grid(images, nrow=math.ceil(math.sqrt(images.shape[0])), padding=1, pad_value=1.0)
        save_image(grid, path.with_name(f"{path.stem}_{_slug(title)}.png"))
        grids.append((title, grid.permute(1, 2, 0).numpy()))
    cols = min(len(grids), _MAX_COLUMNS)
    rows = math.ceil(len(grids) / cols)
    fig = Figure(figsize=(2.8 * cols, 3.0 * rows), dpi=120)
    FigureCanvasAgg(fig)
    for i, (title, grid) in enumerate(grids):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
