"""Multi-head self-attention with a swappable backend, and the backbone base that switches backends
for derivative passes.

A :class:`SelfAttention` layer holds two backends: ``backend`` for ordinary passes and
``forward_ad_backend`` for passes inside ``AttentionBackbone.forward_ad_mode()``, which
``fmmkit.core.derivatives.directional_derivative`` enters around every ``torch.func.jvp``. So a loss
that needs a JVP gets a forward-mode-capable kernel automatically, while sampling and plain
training passes keep the fast fused one. If a JVP reaches a backend without forward-mode AD
anyway (``torch.func.jvp`` called directly, outside the mode), the NotImplementedError of the
fused kernel is caught and the layer falls back to ``forward_ad_backend`` with a warning.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from fmmkit.core import Backbone, BuildContext
from fmmkit.core.attention import AttentionBackend, AttentionBackendError


def resolve_backend(name: str, key: str, ctx: BuildContext | None = None) -> AttentionBackend:
    """The registered attention backend ``name`` (``key`` is the model-table key, for messages).

    Raises AttentionBackendError (one line) when the name is unknown or the backend cannot run on
    this machine. The registry is ``ctx.extras["registry"]`` when given, else the process-wide one.
    """
    from fmmkit.registry import RegistryError, get_registry

    registry: Any = (ctx.extras.get("registry") if ctx is not None else None) or get_registry()
    try:
        entry = registry.get("attention_backend", name)
    except RegistryError as exc:
        raise AttentionBackendError(f"model.{key}: {exc}") from None
    reason = entry.component.unavailable_reason()
    if reason:
        raise AttentionBackendError(f"model.{key}: attention backend '{name}' cannot run here: {reason}")
    return entry.build(entry.config(), ctx or BuildContext())


def resolve_backends(config: Any, ctx: BuildContext | None = None) -> tuple[AttentionBackend, AttentionBackend]:
    """(ordinary, derivative-pass) backends named by ``config.attention`` and ``config.forward_ad_attention``."""
    return (resolve_backend(config.attention, "attention", ctx),
            resolve_backend(config.forward_ad_attention, "forward_ad_attention", ctx))


class SelfAttention(nn.Module):
    """x (B, N, dim) -> out(attention(q, k, v)) with q, k, v = split(qkv(x)) into ``num_heads`` heads."""

    def __init__(self, dim: int, num_heads: int, backend: AttentionBackend, forward_ad_backend: AttentionBackend,
                 zero_init_out: bool = False) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"attention width {dim} is not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        if zero_init_out:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.backend = backend
        self.forward_ad_backend = forward_ad_backend
        self.forward_ad_depth = 0  # > 0 inside forward_ad_mode()
        self._warned = False

    def active_backend(self) -> AttentionBackend:
        """The backend this pass uses: ``forward_ad_backend`` inside forward_ad_mode(), else ``backend``."""
        return self.forward_ad_backend if self.forward_ad_depth > 0 else self.backend

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        backend = self.active_backend()
        try:
            return backend(q, k, v)
        except NotImplementedError as exc:
            if backend.supports_forward_ad or not self.forward_ad_backend.supports_forward_ad:
                raise
            if not self._warned:
                warnings.warn(
                    f"attention backend {backend.name} raised NotImplementedError ({str(exc).splitlines()[0][:120]}); "
                    f"using {self.forward_ad_backend.name} instead. Take derivatives through "
                    "fmmkit.core.derivatives (or inside model.forward_ad_mode()) to select it up front.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned = True
            return self.forward_ad_backend(q, k, v)

    def forward(self, x: Tensor) -> Tensor:
        assert x.ndim == 3, f"self-attention wants tokens (B, N, dim), got {tuple(x.shape)}"
        batch, tokens, dim = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        o = self._attend(q, k, v)
        return self.out(o.transpose(1, 2).reshape(batch, tokens, dim))


class AttentionBackbone(Backbone):
    """A backbone with :class:`SelfAttention` layers: forward-mode AD is available exactly when the
    layers' ``forward_ad_backend`` supports it, and ``forward_ad_mode()`` switches them to it."""

    @classmethod
    def build(cls, config: Any, ctx: BuildContext) -> AttentionBackbone:
        """``cls(config, data shape, number of classes, ctx)`` (the constructor of every subclass)."""
        return cls(config, ctx.data_shape, ctx.num_classes, ctx)  # type: ignore[call-arg]

    def attention_layers(self) -> list[SelfAttention]:
        """Every SelfAttention layer of the network."""
        return [m for m in self.modules() if isinstance(m, SelfAttention)]

    @property
    def supports_forward_ad(self) -> bool:  # type: ignore[override]
        return all(layer.forward_ad_backend.supports_forward_ad for layer in self.attention_layers())

    @contextlib.contextmanager
    def forward_ad_mode(self) -> Iterator[None]:
        """Inside: every attention layer uses its forward-mode-capable backend (nestable)."""
        layers = self.attention_layers()
        for layer in layers:
            layer.forward_ad_depth += 1
        try:
            yield
        finally:
            for layer in layers:
                layer.forward_ad_depth -= 1
