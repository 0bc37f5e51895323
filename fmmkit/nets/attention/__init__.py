"""Attention backends (registered as ``attention_backend`` components) and the attention layer.

Built-ins: ``sdpa`` (fused, no forward-mode AD), ``math`` (explicit) and ``forward_ad`` (a custom
autograd Function with a JVP rule). Plugins add more through the ``register_attention_backends``
hook (e.g. ``xformers`` from the fmmkit-xformers distribution).
"""

from __future__ import annotations

from fmmkit.hookspecs import hookimpl
from fmmkit.nets.attention.backends import ForwardADAttentionBackend, MathAttention, SDPAAttention
from fmmkit.nets.attention.layer import AttentionBackbone, SelfAttention, resolve_backend, resolve_backends

__all__ = ["AttentionBackbone", "ForwardADAttentionBackend", "MathAttention", "SDPAAttention", "SelfAttention",
           "resolve_backend", "resolve_backends"]


@hookimpl
def register_attention_backends(register) -> None:  # type: ignore[no-untyped-def]
    register("sdpa", SDPAAttention)
    register("math", MathAttention)
    register("forward_ad", ForwardADAttentionBackend)
