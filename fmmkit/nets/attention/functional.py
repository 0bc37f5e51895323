"""Attention as plain functions: the explicit ``math`` form and a forward-mode-capable autograd Function.

With S = scale Q K^T, P = softmax_rows(S) and O = P V (all per batch and head):

  tangent (JVP):   dS = scale (dQ K^T + Q dK^T),   dP = P * (dS - rowsum(P * dS)),   dO = dP V + P dV
  gradient (VJP):  gV = P^T gO,   gP = gO V^T (+ the cotangent of P),   gS = P * (gP - rowsum(P * gP)),
                   gQ = scale gS K,   gK = scale gS^T Q

``ForwardADAttention`` computes O and P in ``forward`` and takes both rules above from the primal's
P, so it holds the same N x N matrix the math path holds (no recomputation of the softmax). P is a
second output of the Function: ``setup_context`` may only save inputs and outputs, and only then is
the tangent dO, computed in ``jvp`` from P, differentiable by reverse mode (the gradient of a JVP
loss flows through P into Q and K by this Function's own ``backward``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fmmkit.core.attention import check_qkv, default_scale


def math_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(scale q k^T) v with explicit torch ops (differentiable in both AD modes)."""
    check_qkv(q, k, v)
    scale = default_scale(q) if scale is None else scale
    p = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)  # (B, H, N, M)
    return p @ v  # (B, H, N, Dv)


def _softmax_jvp(p: Tensor, ds: Tensor) -> Tensor:
    """dP = P * (dS - rowsum(P * dS)): the tangent of softmax along its rows."""
    pds = p * ds
    return pds - p * pds.sum(dim=-1, keepdim=True)


def _softmax_vjp(p: Tensor, gp: Tensor) -> Tensor:
    """gS = P * (gP - rowsum(P * gP)): the cotangent of softmax's input."""
    return p * (gp - (p * gp).sum(dim=-1, keepdim=True))


class ForwardADAttention(torch.autograd.Function):
    """(O, P) = (softmax(scale Q K^T) V, softmax(scale Q K^T)) with hand-written JVP and VJP rules."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        p = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
        return p @ v, p

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        q, k, v, scale = inputs
        o, p = output
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, o, p)
        ctx.save_for_forward(q, k, v, o, p)

    @staticmethod
    def backward(ctx: Any, g_o: Tensor | None, g_p: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, o, p = ctx.saved_tensors
        g_v = g_s = None
        if g_o is not None:
            g_v = p.transpose(-2, -1) @ g_o
            # rowsum(P * (gO V^T)) = <gO_i, O_i>, so the O-part of gS needs no extra N x N product
            g_s = p * (g_o @ v.transpose(-2, -1) - (g_o * o).sum(dim=-1, keepdim=True))
        if g_p is not None:
            extra = _softmax_vjp(p, g_p)
            g_s = extra if g_s is None else g_s + extra
        if g_s is None:
            return None, None, g_v, None
        g_q = (g_s @ k) * ctx.scale if ctx.needs_input_grad[0] else None
        g_k = (g_s.transpose(-2, -1) @ q) * ctx.scale if ctx.needs_input_grad[1] else None
        return g_q, g_k, g_v, None

    @staticmethod
    def jvp(ctx: Any, d_q: Tensor | None, d_k: Tensor | None, d_v: Tensor | None, _: Any) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        q, k, v, o, p = ctx.saved_tensors
        d_s = None
        if d_q is not None:
            d_s = d_q @ k.transpose(-2, -1)
        if d_k is not None:
            term = q @ d_k.transpose(-2, -1)
            d_s = term if d_s is None else d_s + term
        d_p = _softmax_jvp(p, d_s * ctx.scale) if d_s is not None else torch.zeros_like(p)
        d_o = d_p @ v
        if d_v is not None:
            d_o = d_o + p @ d_v
        return d_o, d_p


def forward_ad_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(scale q k^T) v through :class:`ForwardADAttention` (works under torch.func.jvp)."""
    check_qkv(q, k, v)
    scale = default_scale(q) if scale is None else scale
    out, _ = ForwardADAttention.apply(q, k, v, scale)
    return out
