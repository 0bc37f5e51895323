"""Toy 2D data, the npy data source and the sample-grid plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fmmkit.core import BuildContext
from fmmkit.core.validators import SpecValueError
from fmmkit.data.errors import DataError
from fmmkit.data.npy import NpyConfig, NpyData
from fmmkit.data.toy2d import Checkerboard, CheckerboardConfig, EightGaussians
from fmmkit.evaluation.plots import save_sample_grid
from fmmkit.registry import load_registry

TOYS = ["checkerboard", "eight_gaussians", "two_moons", "pinwheel", "spirals"]


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry(entry_points=False)


def build(registry, name: str, **kwargs):  # type: ignore[no-untyped-def]
    entry = registry.get("dataset", name)
    return entry.build(entry.config(**kwargs), BuildContext())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_dtype_bounds_and_randomness(registry, name: str) -> None:  # type: ignore[no-untyped-def]
    data = build(registry, name)
    assert data.shape == (2,) and data.num_classes is None
    global_state = torch.get_rng_state()
    a = data.sample(5000, gen(1))
    assert torch.equal(torch.get_rng_state(), global_state)  # only the given generator is used
    torch.manual_seed(123)  # and the global seed does not matter
    b = data.sample(5000, gen(1))
    assert torch.equal(a.x1, b.x1) and not torch.equal(a.x1, data.sample(5000, gen(2)).x1)
    assert a.x1.shape == (5000, 2) and a.x1.dtype == torch.float32 and a.y is None
    lo, hi = data.bounds()
    inside = ((a.x1 > lo) & (a.x1 < hi)).all(dim=1).float().mean()
    assert inside > 0.999
    assert a.x1.std(dim=0).min() > 0.5  # spread over the box, not collapsed


@pytest.mark.parametrize(("name", "classes"), [("checkerboard", 8), ("eight_gaussians", 8), ("two_moons", 2), ("pinwheel", 5), ("spirals", 2)])
def test_toy_labels(registry, name: str, classes: int) -> None:  # type: ignore[no-untyped-def]
    data = build(registry, name, labels=True)
    batch = data.sample(4000, gen())
    assert data.num_classes == classes
    assert batch.y is not None and batch.y.dtype == torch.int64
    assert set(batch.y.tolist()) == set(range(classes))


def test_checkerboard_samples_lie_on_black_squares() -> None:
    board = Checkerboard(CheckerboardConfig())
    x = board.sample(20000, gen()).x1
    assert board.bounds() == (-2.0, 2.0)
    assert ((x >= -2) & (x < 2)).all()
    assert ((torch.floor(x).sum(dim=1) % 2) == 0).all()
    torch.testing.assert_close(board.density(x), torch.full((20000,), 1 / 8))
    counts = torch.bincount(((torch.floor(x[:, 0]) + 2) * 4 + torch.floor(x[:, 1]) + 2).long(), minlength=16)
    assert (counts[counts > 0].float() / 20000 - 1 / 8).abs().max() < 0.01  # 8 squares, equally likely
    assert int((counts > 0).sum()) == 8


def test_checkerboard_density_values_and_integral() -> None:
    board = Checkerboard(CheckerboardConfig())
    points = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [1.5, -0.5], [1.5, -1.5], [2.5, 0.5], [-2.5, -2.5]])
    torch.testing.assert_close(board.density(points), torch.tensor([1 / 8, 0, 1 / 8, 0, 0, 0]))
    h = 0.01  # midpoint rule on [-3, 3]^2 is exact for a density piecewise constant on the unit grid
    c = torch.arange(-3 + h / 2, 3, h, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1).reshape(-1, 2)
    assert abs(float(board.density(grid).sum()) * h * h - 1) < 1e-9
    scaled = Checkerboard(CheckerboardConfig(scale=0.5))
    assert scaled.bounds() == (-1.0, 1.0)
    assert abs(float(scaled.density(grid).sum()) * h * h - 1) < 1e-9
    assert (scaled.sample(1000, gen()).x1.abs() < 1).all()


def test_eight_gaussians_density_integrates_to_one_and_matches_samples() -> None:
    data = EightGaussians(EightGaussians.Config())
    h = 0.02
    c = torch.arange(-4 + h / 2, 4, h, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1).reshape(-1, 2)
    assert abs(float(data.density(grid).sum()) * h * h - 1) < 1e-6
    x = data.sample(20000, gen()).x1.double()
    centre_dist = (x[:, None] - data.centres()[None]).norm(dim=-1).min(dim=1).values
    assert centre_dist.median() < 0.3  # points sit around the centres (radial std 0.2)


def test_toy_config_validation(registry) -> None:  # type: ignore[no-untyped-def]
    for name, kwargs in [("checkerboard", {"scale": 0.0}), ("eight_gaussians", {"std": -1.0}), ("pinwheel", {"arms": 0})]:
        with pytest.raises(SpecValueError):
            registry.get("dataset", name).config(**kwargs)


def test_npy_loads_standardizes_and_labels(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    array = np.random.default_rng(0).normal(3.0, 5.0, size=(500, 4))
    np.save(tmp_path / "x.npy", array)
    np.save(tmp_path / "y.npy", np.arange(500) % 3)
    data = build(registry, "npy", path=str(tmp_path / "x.npy"), labels_path=str(tmp_path / "y.npy"), standardize=True)
    assert isinstance(data, NpyData) and data.shape == (4,) and data.num_classes == 3 and len(data) == 500
    torch.testing.assert_close(data.data.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.data.std(0), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.data * data.std + data.mean, torch.from_numpy(array).float(), atol=1e-4, rtol=0)
    batch = data.sample(64, gen())
    assert batch.x1.dtype == torch.float32 and batch.x1.shape == (64, 4) and batch.y is not None
    lo, hi = data.bounds()
    assert lo < float(data.data.min()) and hi > float(data.data.max())
    plain = NpyData(NpyConfig(path=str(tmp_path / "x.npy")))
    torch.testing.assert_close(plain.data, torch.from_numpy(array).float())


@pytest.mark.parametrize(
    ("content", "labels", "match"),
    [
        (None, None, "does not exist"),
        (np.array([{"a": 1}], dtype=object), None, "not a readable .npy"),
        (np.zeros(10), None, r"shape \(10,\)"),
        (np.array([[1.0, np.nan]]), None, "NaN"),
        (np.array(["a", "b"])[:, None], None, "dtype"),
        (np.zeros((10, 2)), np.zeros(9, dtype=np.int64), "labels file"),
        (np.zeros((10, 2)), np.zeros(10), "labels file"),
    ],
)
def test_npy_errors_name_the_file(tmp_path: Path, content, labels, match: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "data.npy"
    if content is not None:
        np.save(path, content, allow_pickle=True)
    labels_path = None
    if labels is not None:
        labels_path = str(tmp_path / "labels.npy")
        np.save(labels_path, labels)
    with pytest.raises(DataError, match=match) as info:
        NpyData(NpyConfig(path=str(path), labels_path=labels_path))
    message = str(info.value)
    assert "\n" not in message and ("data.npy" in message or "labels.npy" in message)
    assert isinstance(info.value, ValueError)


def test_save_sample_grid_writes_png(tmp_path: Path) -> None:
    ref = np.random.default_rng(0).normal(size=(500, 2))
    out = save_sample_grid(tmp_path / "a" / "grid.png", [("euler(4)", ref + 1), ("flow_map(1)", ref * 2)], ref, (-4, 4))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out3 = save_sample_grid(tmp_path / "grid3.png", [("3d", np.ones((50, 3)))], np.zeros((50, 3, 1)), None)
    assert out3.stat().st_size > 1000
