"""Mixed precision: bf16 autocast on CUDA, with forward-mode derivatives and time embeddings in float32.

Losses take their JVPs inside ``model.forward_ad_mode()`` (see fmmkit.core.derivatives); the flow map
the trainer hands them under bf16 leaves autocast there, so the derivative pass runs in float32
(low-precision JVPs and time embeddings are a known cause of gradient spikes, NVlabs/rcm #10).
Time embeddings leave autocast on their own (fmmkit.nets.embeddings). bf16 needs no loss scaling.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from fmmkit.core import FlowMap


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``: bf16 on CUDA with bf16 support for
    "auto" and "bf16", else None (float32); "bf16" off CUDA warns and trains in float32."""
    if precision == "float32":
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if precision == "bf16":
        warnings.warn(f"train.precision = \"bf16\" runs on CUDA only; training in float32 on {device.type}",
                      stacklevel=2)
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """torch.autocast to ``dtype`` on ``device``, or nothing for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Float32DerivativesFlowMap(FlowMap):
    """A flow map whose ``forward_ad_mode`` also switches autocast off: JVPs run in float32.

    It shares the backbone (and so the parameters and state-dict keys) of the map it wraps.
    """

    def __init__(self, model: FlowMap, device_type: str) -> None:
        super().__init__(model.backbone)
        self.device_type = device_type

    @contextlib.contextmanager
    def forward_ad_mode(self) -> Iterator[None]:  # type: ignore[override]
        with super().forward_ad_mode(), torch.autocast(device_type=self.device_type, enabled=False):
            yield


def with_float32_derivatives(model: FlowMap, dtype: torch.dtype | None, device: torch.device) -> FlowMap:
    """The map to train under autocast ``dtype``: float32 derivatives when mixed precision is on."""
    return model if dtype is None else Float32DerivativesFlowMap(model, device.type)
