"""torchvision image sets read from a local root: ``mnist``, ``fashion_mnist``, ``cifar10``, ``image_folder``.

Nothing is downloaded unless the spec says ``download = true``. Pixels are read on the first draw
(so ``fmmkit spec check`` works without the files); when they are missing the draw raises a
one-line DataError saying where to put them. Expected layouts (torchvision's):
  mnist          ROOT/MNIST/raw/train-images-idx3-ubyte (and the other three idx files)
  fashion_mnist  ROOT/FashionMNIST/raw/train-images-idx3-ubyte (...)
  cifar10        ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch
  image_folder   ROOT/CLASS_NAME/IMAGE.png|jpg|... (one sub-folder per class), decoded once into
                 memory at ``size`` x ``size`` (centre-cropped to a square first)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
from torch import Tensor

from fmmkit.core.validators import at_least, one_of
from fmmkit.data.errors import DataError
from fmmkit.data.images import ImageSource
from fmmkit.hookspecs import hookimpl


def _torchvision_config(default_root: str, flip: bool) -> type:
    @attrs.define(frozen=True)
    class TorchvisionConfig:
        """root: data directory; download: let torchvision fetch the files; train: the training split
        (false: the test split); size: resize (None = native); labels: return class labels;
        random_flip: left-right flips."""

        root: str = default_root
        download: bool = False
        train: bool = True
        size: int | None = attrs.field(default=None, validator=at_least(2))
        labels: bool = False
        random_flip: bool = flip

    return TorchvisionConfig


class TorchvisionImages(ImageSource):
    """A torchvision data set with uint8 pixels, loaded from ``root`` on first use."""

    dataset_name: ClassVar[str]
    torchvision_class: ClassVar[str]  # the class in torchvision.datasets
    native: ClassVar[tuple[int, int]]  # (channels, size)
    layout: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config
        channels, native = self.native
        super().__init__(channels, config.size or native, 10 if config.labels else None, config.random_flip)

    def load(self) -> tuple[Tensor, Tensor | None]:
        import torchvision.datasets

        root = str(Path(self.config.root).expanduser())
        try:
            ds = getattr(torchvision.datasets, self.torchvision_class)(root, train=self.config.train,
                                                                       download=self.config.download)
        except RuntimeError as exc:  # torchvision: "Dataset not found ..." / "... corrupted"
            raise DataError(
                f"{self.dataset_name}: no data under '{self.config.root}' (expected {self.layout}); put the files "
                "there, or set download = true in [data] to let torchvision fetch them"
            ) from exc
        data = ds.data
        pixels = torch.as_tensor(np.asarray(data)) if not isinstance(data, Tensor) else data
        pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)  # (N, C, h, w) uint8
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        return pixels.contiguous(), labels


class MNIST(TorchvisionImages):
    """MNIST handwritten digits, (1, 28, 28), 10 classes."""

    Config = _torchvision_config("data/mnist", False)
    dataset_name, torchvision_class, native = "mnist", "MNIST", (1, 28)
    layout = "ROOT/MNIST/raw/train-images-idx3-ubyte"


class FashionMNIST(TorchvisionImages):
    """Fashion-MNIST clothing images, (1, 28, 28), 10 classes."""

    Config = _torchvision_config("data/fashion_mnist", False)
    dataset_name, torchvision_class, native = "fashion_mnist", "FashionMNIST", (1, 28)
    layout = "ROOT/FashionMNIST/raw/train-images-idx3-ubyte"


class CIFAR10(TorchvisionImages):
    """CIFAR-10, (3, 32, 32), 10 classes; random flips on by default."""

    Config = _torchvision_config("data/cifar10", True)
    dataset_name, torchvision_class, native = "cifar10", "CIFAR10", (3, 32)
    layout = "ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5"


@attrs.define(frozen=True)
class ImageFolderConfig:
    """root: ROOT/CLASS/IMAGE files; size: square side the images are resized to; channels: 1 (grey)
    or 3 (RGB); labels: return the class (sub-folder) index; random_flip: left-right flips."""

    root: str
    size: int = attrs.field(default=32, validator=at_least(2))
    channels: int = attrs.field(default=3, validator=one_of((1, 3)))
    labels: bool = False
    random_flip: bool = True


class ImageFolder(ImageSource):
    """Images in class sub-folders of ``root`` (torchvision's ImageFolder layout), decoded on first draw."""

    Config = ImageFolderConfig

    def __init__(self, config: ImageFolderConfig) -> None:
        self.config = config
        classes = len(self._folder().classes) if config.labels else None  # labels need the folder now
        super().__init__(config.channels, config.size, classes, config.random_flip)

    def _folder(self) -> Any:
        from torchvision.datasets import ImageFolder as TV

        root = Path(self.config.root).expanduser()
        if not root.is_dir():
            raise DataError(f"image_folder: no directory '{self.config.root}'; put images under ROOT/CLASS_NAME/ "
                            "(one sub-folder per class) and set root in [data]")
        try:
            return TV(str(root))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"image_folder: no images under '{self.config.root}' ({exc}); the layout is "
                            "ROOT/CLASS_NAME/IMAGE.png (one sub-folder per class)") from exc

    def _decode(self, path: str) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("L" if self.config.channels == 1 else "RGB")
            side = min(img.size)
            left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((self.size, self.size), Image.BICUBIC)
            array = np.asarray(img, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array  # (size, size, C)

    def load(self) -> tuple[Tensor, Tensor | None]:
        folder = self._folder()
        images = np.stack([self._decode(path) for path, _ in folder.samples])  # (N, size, size, C)
        labels = torch.tensor([label for _, label in folder.samples], dtype=torch.long)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("mnist", MNIST)
    register("fashion_mnist", FashionMNIST)
    register("cifar10", CIFAR10)
    register("image_folder", ImageFolder)
