"""The built-in attention backends: ``sdpa``, ``math`` and ``forward_ad``.

- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient / CPU
  flash kernels when they apply); fastest, but ``torch.func.jvp`` raises NotImplementedError
  through its fused kernels (pytorch #128971), so it has no forward-mode AD.
- ``math``: softmax(Q K^T / sqrt(D)) V written out with torch ops; both AD modes, N x N memory.
- ``forward_ad``: the same product as one autograd Function with its own JVP and VJP rules
  (:class:`fmmkit.nets.attention.functional.ForwardADAttention`); both AD modes, no more memory
  than ``math``. The default backend of derivative passes.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from fmmkit.core.attention import AttentionBackend
from fmmkit.nets.attention.functional import forward_ad_attention, math_attention


class SDPAAttention(AttentionBackend):
    """PyTorch's fused scaled-dot-product attention (no forward-mode AD)."""

    supports_forward_ad = False

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class MathAttention(AttentionBackend):
    """Explicit softmax(Q K^T / sqrt(D)) V (forward- and reverse-mode AD through torch ops)."""

    supports_forward_ad = True

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return math_attention(q, k, v)


class ForwardADAttentionBackend(AttentionBackend):
    """softmax(Q K^T / sqrt(D)) V as a custom autograd Function with a JVP rule."""

    supports_forward_ad = True

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return forward_ad_attention(q, k, v)
