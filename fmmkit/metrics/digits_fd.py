"""``digits_fd``: an offline Frechet distance for digit images, in a small digits classifier's features.

FD = |mu_s - mu_r|^2 + Tr(S_s + S_r - 2 (S_s^1/2 S_r S_s^1/2)^1/2) between Gaussian fits of the
64-dimensional penultimate features of :class:`fmmkit.metrics.digits_classifier.DigitsClassifier`
for generated samples and reference data: the FID recipe with a network that fmmkit trains itself
(reproducibly, from a seed, in seconds; cached on disk, see that module for where). Images must be
one-channel in [-1, 1]; other sizes are resized to 8x8 (antialiased bilinear) before the classifier.
Lower is better; two independent draws of the data score near 0 (finite-sample bias only).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor
from torch.nn import functional as F

from fmmkit.core import DataSource, Metric
from fmmkit.core.validators import non_negative, positive
from fmmkit.hookspecs import hookimpl
from fmmkit.metrics.digits_classifier import DigitsClassifier, load_digits_classifier
from fmmkit.metrics.frechet import frechet_distance_of_features


@attrs.define(frozen=True)
class DigitsFDConfig:
    """seed: of the classifier's recipe; cache: keep its weights on disk; batch_size: of feature passes."""

    seed: int = attrs.field(default=0, validator=non_negative)
    cache: bool = True
    batch_size: int = attrs.field(default=1000, validator=positive)


def digits_features(classifier: DigitsClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Classifier features (N, 64) of images (N, 1, H, W) in [-1, 1]."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"digits_fd scores one-channel images (N, 1, H, W), got shape {tuple(images.shape)}")
    x = images.detach().to(device="cpu", dtype=torch.float32)
    if tuple(x.shape[-2:]) != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        return torch.cat([classifier.features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


class DigitsFrechetDistance(Metric):
    """Frechet distance in the digits classifier's feature space (see the module docstring)."""

    Config = DigitsFDConfig

    def __init__(self, config: DigitsFDConfig = DigitsFDConfig()) -> None:
        self.config = config
        self._classifier: DigitsClassifier | None = None

    @property
    def classifier(self) -> DigitsClassifier:
        """The cached (or freshly trained) classifier."""
        if self._classifier is None:
            self._classifier = load_digits_classifier(self.config.seed, use_cache=self.config.cache)
        return self._classifier

    def __call__(self, samples: Tensor, reference: Tensor, data: DataSource | None = None) -> float:
        bs = self.config.batch_size
        return frechet_distance_of_features(digits_features(self.classifier, samples, bs),
                                            digits_features(self.classifier, reference, bs))


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    register("digits_fd", DigitsFrechetDistance)
