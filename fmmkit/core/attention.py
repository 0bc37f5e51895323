"""Attention backends: interchangeable kernels for softmax(Q K^T / sqrt(d)) V.

Backbones name a backend by its registry name (``attention = "sdpa"`` in the model table) and
call it on per-head tensors q, k, v of shape (B, H, N, D). Fused kernels are fast but most have
no forward-mode AD (``torch.func.jvp`` raises NotImplementedError through them), so a backend
says whether it has (``supports_forward_ad``) and a backbone uses a second, forward-mode-capable
backend inside ``Backbone.forward_ad_mode()`` (see :mod:`fmmkit.core.flow_map`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from fmmkit.core.component import Component
from fmmkit.core.errors import UserError


class AttentionBackendError(UserError):
    """A chosen attention backend cannot run here; the one-line message names why and the fix."""


class AttentionBackend(Component, ABC):
    """``backend(q, k, v) -> softmax(q k^T * scale) v`` on (B, H, N, D) tensors, scale = D^-1/2.

    ``supports_forward_ad``: whether ``torch.func.jvp`` may run through it.
    ``unavailable_reason()``: why it cannot run on this machine (None when it can); building a
    backbone with an unavailable backend raises :class:`AttentionBackendError` with that reason.
    """

    supports_forward_ad: ClassVar[bool] = False

    def __init__(self, config: object = None) -> None:
        self.config = config

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the backend can run on this machine, else a short reason (no CUDA, ...)."""
        return None

    @abstractmethod
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The attention output (B, H, N, D)."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        check_qkv(q, k, v)
        return self.attend(q, k, v)

    @property
    def name(self) -> str:
        """The class name, for messages."""
        return type(self).__name__


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Assert q (B, H, N, D), k (B, H, M, D) and v (B, H, M, Dv) agree."""
    assert q.ndim == 4 and k.ndim == 4 and v.ndim == 4, (
        f"attention wants (B, H, N, D) tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    )
    assert q.shape[:2] == k.shape[:2] == v.shape[:2] and q.shape[-1] == k.shape[-1] and k.shape[2] == v.shape[2], (
        f"attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    )


def default_scale(q: Tensor) -> float:
    """1 / sqrt(D) for per-head width D."""
    return float(q.shape[-1]) ** -0.5


__all__ = ["AttentionBackend", "AttentionBackendError", "check_qkv", "default_scale"]
