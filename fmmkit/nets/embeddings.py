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


def time_features(kind: str, dim: int, max_frequency: float = 1000.0) -> tuple[nn.Module, int]:
    """(embedding module, its width) of one time for ``kind`` in TIME_EMBEDDINGS (``identity``: width 1)."""
    assert kind in TIME_EMBEDDINGS, f"time embedding must be one of {TIME_EMBEDDINGS}, got {kind!r}"
    if kind == "identity":
        return IdentityEmbedding(), 1
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, max_frequency), dim
    return FourierEmbedding(dim), dim


class TwoTimeEmbedding(nn.Module):
    """Embeds the pair (s, t) as e(s) ++ e(t) (``s_t``) or e(t) ++ e(t - s) (``t_delta``); ``dim`` features
    per time (``identity``: 1, the time itself)."""

    def __init__(self, dim: int, kind: str = "sinusoidal", pair: str = "s_t", max_frequency: float = 1000.0) -> None:
        super().__init__()
        assert kind in TIME_EMBEDDINGS, f"time embedding must be one of {TIME_EMBEDDINGS}, got {kind!r}"
        assert pair in TIME_PAIRS, f"time pair must be one of {TIME_PAIRS}, got {pair!r}"
        self.pair = pair
        self.embed, width = time_features(kind, dim, max_frequency)
        self.dim = 2 * width

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        """(B,), (B,) -> (B, 2 dim) in float32 (float64 if the times are float64)."""
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=t.device.type, enabled=False):
            s, t = s.to(dtype), t.to(dtype)
            first, second = (s, t) if self.pair == "s_t" else (t, t - s)
            return torch.cat([self.embed(first), self.embed(second)], dim=1)


class GuidanceEmbedding(nn.Module):
    """(w, start, end) (B, 3) -> (B, out): sinusoidal features of 1 - 1/w (iMF's embedding of the scale,
    in [0, 1) for w >= 1), start and end of the guidance interval, then Linear -> SiLU -> Linear (the
    last zero-initialised, so an untrained model ignores the guidance input). Computed in float32
    (float64 for float64 input) outside autocast, like the time embedding."""

    def __init__(self, out: int, dim: int = 32, max_frequency: float = 100.0) -> None:
        super().__init__()
        self.embed = SinusoidalEmbedding(dim, max_frequency)
        self.hidden = nn.Linear(3 * dim, out)
        self.out = nn.Linear(out, out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, guidance: Tensor) -> Tensor:
        """(B, 3) -> (B, out)."""
        dtype = torch.float64 if guidance.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=guidance.device.type, enabled=False):
            g = guidance.to(dtype)
            features = torch.stack([1 - 1 / g[:, 0].clamp_min(1e-3), g[:, 1], g[:, 2]], dim=1)
            e = torch.cat([self.embed(features[:, i]) for i in range(3)], dim=1)
            w = self.hidden.weight
            return self.out(nn.functional.silu(self.hidden(e.to(w.dtype))))


def guidance_input(y: Tensor | None, batch: int, like: Tensor) -> Tensor:
    """The (w, start, end) input (B, 3) of y: the conditioning matrix's, or no guidance (1, 0, 1)."""
    from fmmkit.core.conditioning import NO_GUIDANCE, guidance_of

    g = guidance_of(y)
    if g is not None:
        return g.to(like.device)
    return torch.tensor(NO_GUIDANCE, device=like.device, dtype=torch.float32).expand(batch, 3)


class SecondTimeEmbedding(nn.Module):
    """u -> Linear(SiLU(Linear(e(u)))) (B, out_dim) with the last layer zero-initialised: the new input through
    which a backbone initialised from a one-time teacher receives its second time (s, or t - s).

    At initialisation it returns exactly 0 for every u, so the student's v_{s,t} equals the teacher's
    v_{t,t} = b_t; training then learns how the map depends on the second time.
    """

    def __init__(self, dim: int, out_dim: int, kind: str = "sinusoidal", max_frequency: float = 1000.0) -> None:
        super().__init__()
        self.embed, width = time_features(kind, dim, max_frequency)
        self.mlp = nn.Sequential(nn.Linear(width, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, u: Tensor) -> Tensor:
        """(B,) -> (B, out_dim) in float32 (float64 for float64 times), outside autocast."""
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=u.device.type, enabled=False):
            e = self.embed(u.to(dtype))
            return self.mlp(e.to(self.mlp[0].weight.dtype))


def second_time(pair: str, s: Tensor, t: Tensor) -> Tensor:
    """The time a second-time embedding sees: s for the ``s_t`` pair, t - s for ``t_delta``."""
    return s if pair == "s_t" else t - s
