"""Time embeddings for two-time backbones, always computed in float32 (or float64 for float64 inputs).

Low-precision time embeddings are a known cause of gradient spikes through JVPs (NVlabs/rcm #10), so
the embedding runs outside autocast and is cast to the activation dtype only at its output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

TIME_EMBEDDINGS = ("sinusoidal", "fourier", "identity")
TIME_PAIRS = ("s_t", "t_delta")


class SinusoidalEmbedding(nn.Module):
    """e(t) = [sin(w_k t), cos(w_k t)], w_k geometric from 1 to ``max_frequency`` (Vaswani et al.)."""

    def __init__(self, dim: int, max_frequency: float = 1000.0) -> None:
        super().__init__()
        assert dim % 2 == 0, f"embedding dim must be even, got {dim}"
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), dim // 2, dtype=torch.float64))
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, dim)."""
        angles = t[:, None] * self.freqs.to(t.dtype)[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class FourierEmbedding(nn.Module):
    """e(t) = [sin(2 pi w_k t), cos(2 pi w_k t)], w_k ~ N(0, scale^2) fixed (Tancik et al.)."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        assert dim % 2 == 0, f"embedding dim must be even, got {dim}"
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, dim)."""
        angles = 2 * math.pi * t[:, None] * self.freqs.to(t.dtype)[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class IdentityEmbedding(nn.Module):
    """e(t) = t: the raw time as one feature (what Meta's flow_matching 2D example feeds its MLP)."""

    dim = 1

    def forward(self, t: Tensor) -> Tensor:
        """(B,) -> (B, 1)."""
        return t[:, None]


class TwoTimeEmbedding(nn.Module):
    """Embeds the pair (s, t) as e(s) ++ e(t) (``s_t``) or e(t) ++ e(t - s) (``t_delta``); ``dim`` features
    per time (``identity``: 1, the time itself)."""

    def __init__(self, dim: int, kind: str = "sinusoidal", pair: str = "s_t", max_frequency: float = 1000.0) -> None:
        super().__init__()
        assert kind in TIME_EMBEDDINGS, f"time embedding must be one of {TIME_EMBEDDINGS}, got {kind!r}"
        assert pair in TIME_PAIRS, f"time pair must be one of {TIME_PAIRS}, got {pair!r}"
        self.pair = pair
        self.embed: nn.Module
        if kind == "identity":
            self.embed, dim = IdentityEmbedding(), 1
        elif kind == "sinusoidal":
            self.embed = SinusoidalEmbedding(dim, max_frequency)
        else:
            self.embed = FourierEmbedding(dim)
        self.dim = 2 * dim

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        """(B,), (B,) -> (B, 2 dim) in float32 (float64 if the times are float64)."""
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=t.device.type, enabled=False):
            s, t = s.to(dtype), t.to(dtype)
            first, second = (s, t) if self.pair == "s_t" else (t, t - s)
            return torch.cat([self.embed(first), self.embed(second)], dim=1)
