"""The shared base of image data sources: pixels in memory, drawn with replacement, scaled to [-1, 1].

Every image source yields float32 batches (B, C, size, size) in [-1, 1] (pixel / max_value * 2 - 1),
resized with antialiased bilinear interpolation when ``size`` differs from the stored size, and
flipped left-right with probability 1/2 per image when ``random_flip`` is on. Labels (B,) come
with the batch when ``labels`` is on (then ``num_classes`` is set and backbones become
class-conditional). Sources may load their pixels lazily, on the first draw: building one (as
``fmmkit spec check`` does) needs only the shape, never the files.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor
from torch.nn import functional as F

from fmmkit.core import Batch, DataSource


class ImageSource(DataSource):
    """Images (N, C, h, w) with values in [0, max_value] (uint8 or float), sampled as [-1, 1] floats."""

    #: the largest pixel value of the stored images (255 for uint8 files)
    max_value: float = 255.0

    def __init__(self, channels: int, size: int, num_classes: int | None, random_flip: bool) -> None:
        self.shape = (channels, size, size)
        self.size = size
        self.num_classes = num_classes
        self.random_flip = random_flip
        self._pixels: Tensor | None = None
        self._labels: Tensor | None = None

    @abstractmethod
    def load(self) -> tuple[Tensor, Tensor | None]:
        """Stored pixels (N, C, h, w) and integer labels (N,) or None; DataError when absent."""

    def pixels(self) -> tuple[Tensor, Tensor | None]:
        """The stored pixels and labels, loaded on first use."""
        if self._pixels is None:
            pixels, labels = self.load()
            assert pixels.ndim == 4 and pixels.shape[1] == self.shape[0], (
                f"{type(self).__name__} loaded pixels of shape {tuple(pixels.shape)}, expected (N, {self.shape[0]}, h, w)"
            )
            self._pixels, self._labels = pixels, labels
        return self._pixels, self._labels

    def __len__(self) -> int:
        return int(self.pixels()[0].shape[0])

    def to_model_space(self, images: Tensor) -> Tensor:
        """Stored images (B, C, h, w) -> float32 (B, C, size, size) in [-1, 1]."""
        x = images.to(torch.float32) / self.max_value
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (x * 2 - 1).clamp(-1, 1)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        pixels, labels = self.pixels()
        idx = torch.randint(pixels.shape[0], (n,), generator=generator)
        x = self.to_model_space(pixels[idx])
        if self.random_flip:
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = labels[idx] if (labels is not None and self.num_classes is not None) else None
        return Batch(x, y)

    def bounds(self) -> tuple[float, float]:
        return (-1.0, 1.0)


def to_unit(x: Tensor) -> Tensor:
    """Model-space images in [-1, 1] -> [0, 1] (clamped), for pictures."""
    return ((x + 1) / 2).clamp(0, 1)
