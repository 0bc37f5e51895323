"""Image data sources: digits (scikit-learn), torchvision sets from a local root, image folders."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from images_helpers import make_image_folder

from fmmkit.core.errors import UserError
from fmmkit.data.errors import DataError
from fmmkit.data.digits import Digits, DigitsConfig
from fmmkit.data.vision import CIFAR10, MNIST, FashionMNIST, ImageFolder, ImageFolderConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_digits_are_sklearn_digits_in_minus_one_one() -> None:
    from sklearn.datasets import load_digits

    source = Digits(DigitsConfig(labels=True))
    assert source.shape == (1, 8, 8) and source.num_classes == 10 and len(source) == 1797
    batch = source.sample(500, gen())
    assert batch.x1.shape == (500, 1, 8, 8) and batch.x1.dtype == torch.float32
    assert float(batch.x1.min()) == -1.0 and float(batch.x1.max()) == 1.0
    raw = load_digits()
    idx = torch.randint(1797, (500,), generator=gen())  # the draw's indices
    expected = torch.from_numpy(raw.images[idx.numpy()]).float()[:, None] / 16 * 2 - 1
    torch.testing.assert_close(batch.x1, expected)
    assert torch.equal(batch.y, torch.from_numpy(raw.target[idx.numpy()]))


def test_digits_at_a_chosen_size_and_without_labels() -> None:
    source = Digits(DigitsConfig(size=16))
    batch = source.sample(10, gen())
    assert source.shape == (1, 16, 16) and batch.x1.shape == (10, 1, 16, 16) and batch.y is None
    assert source.num_classes is None and -1 <= float(batch.x1.min()) and float(batch.x1.max()) <= 1
    small = Digits(DigitsConfig()).sample(10, gen()).x1
    down = torch.nn.functional.avg_pool2d(batch.x1, 2)  # the 16x16 images still look like the 8x8 ones
    assert (down - small).abs().mean() < 0.15


def test_random_flips_mirror_about_half_the_images() -> None:
    plain = Digits(DigitsConfig()).sample(400, gen(1)).x1
    flipped = Digits(DigitsConfig(random_flip=True)).sample(400, gen(1)).x1
    same = (flipped == plain).flatten(1).all(dim=1)
    mirrored = (flipped == plain.flip(-1)).flatten(1).all(dim=1)
    assert bool((same | mirrored).all())
    assert 120 < int((mirrored & ~same).sum()) < 280


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = struct.pack(">I", code) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, folder: str = "MNIST", n: int = 6) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    return root


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
def test_mnist_like_sets_load_from_a_local_root(tmp_path: Path, cls: type) -> None:
    root = fake_mnist(tmp_path, "MNIST" if cls is MNIST else "FashionMNIST")
    source = cls(cls.Config(root=str(root), size=32, labels=True))
    batch = source.sample(8, gen())
    assert source.shape == (1, 32, 32) and batch.x1.shape == (8, 1, 32, 32)
    assert source.num_classes == 10 and batch.y is not None and int(batch.y.max()) < 6
    native = cls(cls.Config(root=str(root))).sample(8, gen()).x1
    assert native.shape == (8, 1, 28, 28) and -1 <= float(native.min()) < float(native.max()) <= 1


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST, CIFAR10])
def test_missing_data_builds_and_fails_on_first_draw_with_one_line(tmp_path: Path, cls: type) -> None:
    source = cls(cls.Config(root=str(tmp_path / "nowhere")))  # building needs no files (spec check)
    assert source.shape[0] in (1, 3)
    with pytest.raises(DataError) as info:
        source.sample(2, gen())
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert str(tmp_path / "nowhere") in message and "download = true" in message


def test_image_folder_loads_resizes_and_labels(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=2, size=(20, 14))
    source = ImageFolder(ImageFolderConfig(root=str(root), size=8, labels=True))
    batch = source.sample(16, gen())
    assert source.shape == (3, 8, 8) and source.num_classes == 3 and len(source) == 6
    assert batch.x1.shape == (16, 3, 8, 8) and set(batch.y.tolist()) <= {0, 1, 2}
    grey = ImageFolder(ImageFolderConfig(root=str(root), size=4, channels=1, random_flip=False))
    assert grey.sample(2, gen()).x1.shape == (2, 1, 4, 4) and grey.num_classes is None


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no directory"):
        ImageFolder(ImageFolderConfig(root=str(tmp_path / "absent"))).sample(1, gen())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images under"):
        ImageFolder(ImageFolderConfig(root=str(tmp_path / "empty"), labels=True))
