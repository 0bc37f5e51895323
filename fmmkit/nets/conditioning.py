"""Shared pieces of the image backbones: the conditioning vector c(s, t, y) and shape checks.

c = MLP(e(s, t)) + E[y] (after ``enable_second_time``, MLP(e(t, t)) + E2(s or t - s) + E[y]): e is :class:`fmmkit.nets.embeddings.TwoTimeEmbedding` (e(s) ++ e(t) or
e(t) ++ e(t - s)); the embedding and its MLP run in float32 (float64 for float64 times) outside
autocast, since low-precision time embeddings cause gradient spikes through JVPs (NVlabs/rcm #10).
Labels use an extra "null" class (index num_classes) for unconditional passes; with
``label_dropout`` p > 0 each label is replaced by the null class with probability p in training
mode (classifier-free guidance). The drop draws from torch's global generator, like dropout: a
loss that needs the same drop in a JVP and a second forward replays the RNG state. With
``guidance_input``, c also gets the embedding of the guidance scale and interval of the conditioning
matrix y (B, 4) (:mod:`fmmkit.core.conditioning`; variable guidance).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmmkit.core.conditioning import labels_of
from fmmkit.core.errors import UserError
from fmmkit.nets.embeddings import GuidanceEmbedding, SecondTimeEmbedding, TwoTimeEmbedding, guidance_input, second_time


class BackboneConfigError(UserError):
    """A backbone cannot be built for this data (wrong shape, sizes that do not divide)."""


def image_shape(shape: tuple[int, ...], backbone: str) -> tuple[int, int, int]:
    """``shape`` as (C, H, W); BackboneConfigError for non-image data."""
    if len(shape) != 3:
        raise BackboneConfigError(
            f"model.kind: '{backbone}' needs image data of shape (C, H, W) but the data has shape {tuple(shape)}; "
            "use kind = \"mlp\" for vector data"
        )
    c, h, w = shape
    return int(c), int(h), int(w)


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (zero-initialised output and modulation layers)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ConditionEmbedding(nn.Module):
    """(s, t, y) -> c (B, dim): MLP of the two-time embedding, plus a learned label embedding."""

    def __init__(self, dim: int, time_dim: int, kind: str, pair: str, num_classes: int | None,
                 label_dropout: float = 0.0, guidance: bool = False, max_frequency: float = 1000.0) -> None:
        super().__init__()
        self.time = TwoTimeEmbedding(time_dim, kind, pair, max_frequency)
        self.mlp = nn.Sequential(nn.Linear(self.time.dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.null_label = num_classes or 0
        self.label_dropout = label_dropout
        self.guidance = GuidanceEmbedding(dim) if guidance else None
        self.kind, self.time_dim, self.max_frequency = kind, time_dim, max_frequency
        self.second: SecondTimeEmbedding | None = None

    def enable_second_time(self) -> None:
        """From now on c = MLP(e(t, t)) + E2(s or t - s) + E[y]: the diagonal (one-time) conditioning a
        flow-matching teacher was trained on, plus a zero-initialised embedding of the second time."""
        if self.second is None:
            self.second = SecondTimeEmbedding(self.time_dim, self.mlp[2].out_features, self.kind, self.max_frequency)
            self.second.to(self.mlp[0].weight.device)

    def forward(self, s: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """(B,), (B,), (B,) or None -> (B, dim) in the embedding's precision (float32 or float64)."""
        e = self.time(s, t) if self.second is None else self.time(t, t)
        with torch.autocast(device_type=e.device.type, enabled=False):
            c = self.mlp(e.to(self.mlp[0].weight.dtype))
            if self.second is not None:
                c = c + self.second(second_time(self.time.pair, s, t)).to(c.dtype)
        batch = c.shape[0]
        if self.guidance is not None:
            c = c + self.guidance(guidance_input(y, batch, c)).to(c.dtype)
        if self.label is None:
            return c
        if y is None:
            labels = torch.full((batch,), self.null_label, dtype=torch.long, device=c.device)
        else:
            assert y.shape[0] == batch, f"labels must have {batch} rows, got {tuple(y.shape)}"
            labels = labels_of(y).to(device=c.device, dtype=torch.long)  # type: ignore[union-attr]
            if self.training and self.label_dropout > 0:
                drop = torch.rand(batch, device=c.device) < self.label_dropout
                labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        return c + self.label(labels).to(c.dtype)
