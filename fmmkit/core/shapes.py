"""Shape helpers shared by the interfaces: per-sample times broadcast against batched data.

Times are float64 for float64 data and float32 otherwise, never half precision: rounded to bf16, two
times 1/256 apart can become equal (s != t collapsing to s = t) and a time embedding loses its
frequencies (NVlabs/rcm #10).
"""

from __future__ import annotations

import torch
from torch import Tensor


def time_dtype(x: Tensor) -> torch.dtype:
    """Times are float64 for float64 data and float32 otherwise (never half precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def as_batch_times(t: Tensor | float, x: Tensor) -> Tensor:
    """Per-sample times of shape (B,) on ``x``'s device in :func:`time_dtype` (float32, or float64
    for float64 data; a bf16 time tensor is widened, never ``x``'s half precision), from a scalar or
    a (B,) tensor."""
    batch = x.shape[0]
    dtype = time_dtype(x)
    if isinstance(t, Tensor):
        t = t.to(device=x.device, dtype=dtype)
    else:
        t = torch.as_tensor(t, dtype=dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(batch)
    assert t.shape == (batch,), f"times must have shape ({batch},) to match x {tuple(x.shape)}, got {tuple(t.shape)}"
    return t


def broadcast_time(t: Tensor, x: Tensor) -> Tensor:
    """View a (B,) time tensor as (B, 1, ..., 1) so that it multiplies ``x`` of shape (B, ...)."""
    assert t.ndim == 1 and t.shape[0] == x.shape[0], (
        f"times of shape {tuple(t.shape)} do not match batch of shape {tuple(x.shape)}"
    )
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def mean_squares(residual: Tensor) -> Tensor:
    """Per-sample mean over every non-batch dimension of residual^2: (B, ...) -> (B,)."""
    return residual.pow(2).flatten(1).mean(dim=1)
