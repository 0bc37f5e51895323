"""Shared pieces of the image tests: tiny model tables, fake image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def digits_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FMMKIT_CACHE_DIR at one directory per test session (the digits classifier trains once)."""
    path = tmp_path_factory.getbasetemp() / "fmmkit_cache"
    monkeypatch.setenv("FMMKIT_CACHE_DIR", str(path))
    return path


#: a UNet model table small enough for a few CPU steps on 8x8 images
TINY_UNET_TABLE = {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                   "attention_resolutions": [4], "groups": 4, "num_heads": 2, "time_dim": 8}


def make_image_folder(root: Path, classes: int = 2, per_class: int = 3, size: tuple[int, int] = (12, 10)) -> Path:
    """ROOT/class_k/img_i.png with random RGB images of ``size`` (W, H); returns root."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return root
