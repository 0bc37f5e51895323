"""Random Fourier features of the state x for the MLP backbone (Tancik et al. 2020, "Fourier features let
networks learn high frequency functions").

phi(x) = [x, sin(2 pi x B), cos(2 pi x B)], B (dim, k) ~ N(0, scale^2) fixed at construction (its own
generator, seed 0: the features do not depend on the global RNG and are rebuilt identically from the
config, so checkpoints do not store them).

Why: a plain MLP learns low frequencies first (spectral bias). A one-step flow map from a Gaussian to
data on disjoint pieces (the checkerboard's eight squares) is nearly discontinuous along the fold lines
between the pieces' pre-images; with raw x the regression blurs those folds and sends mass into the
empty squares. Features of frequency ~scale let the first layer place sharp folds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FourierInputFeatures(nn.Module):
    """x (B, dim) -> (B, dim + 2 k): x followed by k sine and k cosine features of frequencies B ~ N(0, scale^2).

    Args:
        dim: width of the flattened state.
        features: k, the number of frequencies (0: identity, width dim).
        scale: standard deviation of the frequencies, in cycles per unit of x.

    Example:
        >>> phi = FourierInputFeatures(2, features=8, scale=1.0)
        >>> phi(torch.zeros(3, 2)).shape
        torch.Size([3, 18])
    """

    def __init__(self, dim: int, features: int, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        freqs = torch.randn(dim, features, generator=g, dtype=torch.float64) * scale
        self.register_buffer("freqs", freqs.float(), persistent=False)  # rebuilt from the config on load
        self.dim = dim + 2 * features

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, dim + 2 features)."""
        if self.freqs.shape[1] == 0:
            return x
        angles = 2 * math.pi * x @ self.freqs.to(x.dtype)  # (B, features)
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1)
