"""Bad data is named as a data problem, with its spec key and its file, in one line (issue 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import run_cli
from engine_helpers import tiny_spec
from fmmkit.data.npy import NpyConfig, NpyData
from fmmkit.spec import spec_to_toml
from fmmkit.spec.loader import structure_spec
from images_helpers import make_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def write_spec(path: Path, **sections: dict) -> Path:
    """A tiny spec as a TOML file."""
    path.write_text(spec_to_toml(structure_spec(tiny_spec(**sections), check_paths=False)))
    return path


def test_a_corrupt_image_in_an_image_folder_is_one_line_naming_the_file(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", classes=1, per_class=2)
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    spec = write_spec(tmp_path / "img.toml", data={"kind": "image_folder", "root": str(root), "size": 4,
                                                   "channels": 1})
    assert run_cli("spec", "check", str(spec), cwd=tmp_path).returncode == 0  # the pixels are read on first use
    line = run_cli("train", str(spec), "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path).error_line()
    assert "data.root: image_folder: cannot decode" in line and "broken.png" in line, line
    assert "delete or replace it" in line, line
    assert not (tmp_path / "run").exists(), "a run that cannot read its data must not create its directory"


def test_huge_values_train_when_standardized(tmp_path: Path) -> None:
    """1e30-scale data is refused as data (not as 'lower optim.lr'), and standardize = true makes it usable."""
    points = np.random.default_rng(0).normal(size=(64, 2)) * 1e30 + 3e30
    np.save(tmp_path / "huge.npy", points.astype(np.float32))
    data = NpyData(NpyConfig(path=str(tmp_path / "huge.npy"), standardize=True))
    assert bool(torch.isfinite(data.data).all())
    torch.testing.assert_close(data.data.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.data.std(0), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.isfinite(data.mean).all() and torch.isfinite(data.std).all()
