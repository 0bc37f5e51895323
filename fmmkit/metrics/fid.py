"""``fid``: Frechet Inception Distance through torch-fidelity's Inception-v3 (also what torchmetrics uses).

FD (see :mod:`fmmkit.metrics.frechet`) between Gaussian fits of the 2048-dimensional pool features
of samples and reference images, both mapped from [-1, 1] to uint8 RGB (one-channel images are
repeated to three channels). fmmkit never downloads the network: it runs only when torch-fidelity
is installed (``pip install torch-fidelity``, or ``torchmetrics[image]``, which depends on it)
AND the weights file is on disk, at ``weights`` or by default at
TORCH_HUB_DIR/checkpoints/pt_inception-2015-12-05-6726825d.pth; otherwise it raises a one-line
MetricUnavailableError saying which is missing. Use ``digits_fd`` for an offline score on digits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import DataSource, Metric
from fmmkit.core.errors import UserError
from fmmkit.core.validators import positive
from fmmkit.hookspecs import hookimpl
from fmmkit.metrics.frechet import frechet_distance_of_features

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


class MetricUnavailableError(UserError):
    """A metric's dependencies or weights are not available on this machine."""


@attrs.define(frozen=True)
class FIDConfig:
    """weights: path of the Inception weights file (default: the torch hub checkpoint cache);
    batch_size: images per Inception pass."""

    weights: str | None = None
    batch_size: int = attrs.field(default=100, validator=positive)


def default_weights_path() -> Path:
    """TORCH_HUB_DIR/checkpoints/pt_inception-2015-12-05-6726825d.pth (where torch-fidelity caches them)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_unavailable(weights: str | None = None) -> str | None:
    """Why FID cannot run here (None when it can)."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return ("fid: torch-fidelity is not installed; pip install torch-fidelity (or torchmetrics[image]), "
                "or score digits with digits_fd")
    path = Path(weights).expanduser() if weights else default_weights_path()
    if not path.is_file():
        return (f"fid: Inception weights not found at {path}; copy {INCEPTION_WEIGHTS} there (from the "
                "torch-fidelity releases) or set weights = \"PATH\" in the metric config; fmmkit never downloads them")
    return None


def to_uint8_rgb(images: Tensor) -> Tensor:
    """[-1, 1] images (N, C, H, W), C in {1, 3} -> uint8 (N, 3, H, W)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"fid scores (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class FID(Metric):
    """Frechet Inception Distance (see the module docstring for what it needs)."""

    Config = FIDConfig

    def __init__(self, config: FIDConfig = FIDConfig()) -> None:
        self.config = config
        self._extractor: Any = None

    def extractor(self) -> Any:
        """torch-fidelity's Inception-v3 feature extractor, from local weights only."""
        reason = inception_unavailable(self.config.weights)
        if reason:
            raise MetricUnavailableError(reason)
        if self._extractor is None:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            path = Path(self.config.weights).expanduser() if self.config.weights else default_weights_path()
            self._extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                          feature_extractor_weights_path=str(path)).eval()
        return self._extractor

    def features(self, images: Tensor) -> Tensor:
        """(N, 2048) pool features."""
        net, x, bs = self.extractor(), to_uint8_rgb(images), self.config.batch_size
        with torch.no_grad():
            return torch.cat([net(x[i : i + bs])[0].reshape(-1, 2048).double() for i in range(0, x.shape[0], bs)])

    def __call__(self, samples: Tensor, reference: Tensor, data: DataSource | None = None) -> float:
        return frechet_distance_of_features(self.features(samples), self.features(reference))


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    register("fid", FID)
