"""fmmkit plugin: ``xformers`` attention (``xformers.ops.memory_efficient_attention``), CUDA only.

No forward-mode AD (xformers #552): backbones use their ``forward_ad_attention`` backend for
derivative passes. ``unavailable_reason`` says why it cannot run here (checked when a backbone is
built): xformers missing, no CUDA device, or an xformers build whose C++/CUDA extension does not
load with this torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from torch import Tensor

from fmmkit import hookimpl
from fmmkit.core.attention import AttentionBackend, AttentionBackendError

__version__ = "0.1.0"


def _xformers_problem() -> str | None:
    """Why xformers itself is unusable with this torch (None when its kernels load)."""
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install xformers, a build matching this torch)"
    try:
        xformers = importlib.import_module("xformers")
        importlib.import_module("xformers.ops")
    except Exception as exc:  # an ABI mismatch shows up as an import error of its extension
        return f"xformers fails to import with torch {torch.__version__} ({type(exc).__name__}: {str(exc)[:100]})"
    built_for = _built_for_torch(xformers)
    if not getattr(xformers, "_has_cpp_library", True) or (built_for and built_for != _release(torch.__version__)):
        found = f"torch {built_for}" if built_for else "another torch"
        return (f"xformers {getattr(xformers, '__version__', '?')} was built for {found}, not torch "
                f"{torch.__version__}; install an xformers build for this torch")
    return None


def _release(version: str) -> str:
    """'2.14.1+cu128' -> '2.14.1'."""
    return version.split("+")[0]


def _built_for_torch(xformers: Any) -> str | None:
    """The torch version the installed xformers was compiled against, when it records one."""
    try:
        meta = importlib.import_module("xformers._cpp_lib")._build_metadata
        return _release(str(meta.torch_version)) if meta is not None else None
    except Exception:
        return None


def _on_cuda(x: Tensor) -> bool:
    return x.is_cuda


class XFormersAttention(AttentionBackend):
    """softmax(Q K^T / sqrt(D)) V by xformers' memory-efficient kernel (CUDA tensors only)."""

    supports_forward_ad = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        problem = _xformers_problem()
        if problem:
            return problem
        if not torch.cuda.is_available():
            return "no CUDA device is visible and xformers has no CPU kernels; use attention = \"sdpa\" here"
        return None

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if not _on_cuda(q):
            raise AttentionBackendError(
                f"attention backend 'xformers' needs CUDA tensors but got {q.device.type} ones; "
                "set train.device = \"cuda\" or choose attention = \"sdpa\""
            )
        from xformers.ops import memory_efficient_attention

        # xformers takes (B, N, H, D); fmmkit's backends take (B, H, N, D)
        out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)


@hookimpl
def register_attention_backends(register) -> None:  # type: ignore[no-untyped-def]
    register("xformers", XFormersAttention)
