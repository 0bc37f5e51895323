"""Jacobian-vector products for the derivative losses: dual numbers, with one product per frozen-weight layer.

``jvp(fn, primals, tangents)`` returns (fn(p), d/de fn(p + e d) at e = 0), like ``torch.func.jvp``, but
runs ``fn`` once on dual numbers (``torch.autograd.forward_ad``) inside :class:`FrozenWeightTangents`.
Both matter for speed, measured in benchmarks/jvp_mechanisms.py (RESULTS.md, "Step cost ..."):

- ``torch.func.jvp`` wraps every tensor in a functorch level and, on this torch (2.14), runs each
  linear layer's primal product twice;
- forward-mode AD of ``linear`` / ``conv`` evaluates its derivative rule
  ``d(x W^T + b) = dx W^T + x dW^T + db`` with an (efficient-)zero tensor for the weight's tangent,
  and the product ``x 0^T`` is computed anyway, as a full GEMM or convolution (and differentiated again
  in a backward through the JVP). A network's parameters never carry a tangent here, so
  :class:`FrozenWeightTangents` computes such layers as two ordinary calls, primal ``f(x; W, b)`` and
  tangent ``f(dx; W)``, joined into a dual number: one product for the tangent instead of two;
- a product, quotient, sum or difference of a dual number and a tensor or number without a tangent
  (a time embedding's ``t * freqs``, ``t - s``), and a group or layer norm whose affine weight has
  none: torch's rule builds the missing tangent as an "efficient zero" tensor, a fixed ~0.16 ms per
  call here (30x a product of two small dual numbers); the tangent is taken as ``da * c``, ``da``,
  ``d norm(x) * w`` instead (benchmarks/dual_constant_ops.py);
- SiLU's forward-mode rule is a chain of differentiable multiplications whose backward costs about 8x a
  plain SiLU's; :class:`DualSiLU` computes (silu(z), silu'(z) dz) in two fused kernels and its backward
  (silu'(z) g_h + silu''(z) dz g_dh, silu'(z) g_dh) in eight, half the time (the backbones' only
  activation besides DiT's GELU).

The result and its gradients are the same as ``torch.func.jvp``'s to float rounding (the skipped
products are exact zeros); tests/test_jvp_mechanism.py checks every loss against the
``torch.func.jvp`` formulation. Inside a functorch transform (``torch.func.vmap``, ``jvp``, ``grad``
around a loss) this falls back to ``torch.func.jvp``, which composes with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

#: layers ``f(input, weight, bias, *options)`` that are linear in ``input`` for fixed weights
FROZEN_WEIGHT_LAYERS: frozenset[Callable[..., Tensor]] = frozenset({
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
})


class DualSiLU(torch.autograd.Function):
    """(z, dz) -> (silu(z), silu'(z) dz), with silu'(z) = s (1 + z (1 - s)), s = sigmoid(z), and
    silu''(z) = s (1 - s) (2 + z (1 - 2 s)) in the backward."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.save_for_backward(z, dz)
        ctx.set_materialize_grads(False)  # a detached tangent (MeanFlow's target) sends no g_dh: skip its terms
        return F.silu(z), torch.ops.aten.silu_backward(dz, z)

    @staticmethod
    def backward(ctx: Any, g_h: Tensor | None, g_dh: Tensor | None) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        z, dz = ctx.saved_tensors
        if torch.is_grad_enabled():  # a backward with create_graph: differentiable formulas, any order
            s = torch.sigmoid(z)
            slope, curvature = s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))
            g_z = (0 if g_h is None else g_h * slope) + (0 if g_dh is None else g_dh * dz * curvature)
            return g_z, None if g_dh is None else g_dh * slope
        g_z = torch.ops.aten.silu_backward(g_h, z) if g_h is not None else torch.zeros_like(z)
        if g_dh is None:
            return g_z, None
        s = torch.sigmoid(z)
        curvature = torch.addcmul(z.new_tensor(2.0), z, torch.rsub(s, 1, alpha=2)).mul_(g_dh).mul_(dz)  # 2 + z (1 - 2 s)
        g_z = g_z + torch.ops.aten.sigmoid_backward(curvature, s)  # + s (1 - s) (2 + z (1 - 2 s)) dz g_dh
        return g_z, torch.ops.aten.silu_backward(g_dh, z) if ctx.needs_input_grad[1] else None


def _tangent(x: Any) -> Tensor | None:
    return fwAD.unpack_dual(x).tangent if isinstance(x, Tensor) else None


def _methods(*names: str) -> frozenset[Any]:
    """The torch functions and Tensor methods of these names, as ``__torch_function__`` may receive them."""
    found = {getattr(owner, name) for owner in (torch, torch.Tensor, torch._C.TensorBase)  # noqa: SLF001
             for name in names if hasattr(owner, name)}
    return frozenset(found)


#: ``f(a, c)`` linear in its dual operand a at these positions: d f(a, c) = f(da, c) (a product, or a quotient's
#: numerator), and those that add: d (a +- c) = da
LINEAR_IN = {**{f: (0, 1) for f in _methods("mul", "multiply", "__mul__", "__rmul__")},
             **{f: (0,) for f in _methods("div", "divide", "true_divide", "__truediv__", "__div__")}}
ADDITIVE = {**{f: (1.0, 1.0) for f in _methods("add", "__add__", "__radd__")},
            **{f: (1.0, -1.0) for f in _methods("sub", "subtract", "__sub__")},
            **{f: (-1.0, 1.0) for f in _methods("__rsub__")}}


def _scaled_by_constant(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """A product, quotient, sum or difference of one dual number and a tensor or number without a tangent,
    as ``make_dual(f(a, c), d f)`` with the tangent from the rules of :data:`LINEAR_IN` and :data:`ADDITIVE`;
    None where they do not apply. (This torch's own rule builds the missing tangent as an "efficient
    zero" tensor, whose kernels add a fixed ~0.16 ms per call here: 30x a product of two small dual numbers.)"""
    if len(args) != 2 or (kwargs and set(kwargs) != {"alpha"}):
        return None
    tangents = [_tangent(a) for a in args]
    duals = [i for i, d in enumerate(tangents) if d is not None]
    if len(duals) != 1 or not all(isinstance(a, (Tensor, int, float)) and not isinstance(a, bool) for a in args):
        return None
    i = duals[0]
    primal_args = list(args)
    primal_args[i] = fwAD.unpack_dual(args[i]).primal
    if func in LINEAR_IN and i in LINEAR_IN[func] and not kwargs:
        out = func(*primal_args)
        tangent_args = list(primal_args)
        tangent_args[i] = tangents[i]
        return fwAD.make_dual(out, func(*tangent_args))
    if func in ADDITIVE:
        out = func(*primal_args, **kwargs)
        sign = ADDITIVE[func][i] * (kwargs.get("alpha", 1) if i == 1 else 1)
        tangent = tangents[i] if sign == 1 else sign * tangents[i]
        return fwAD.make_dual(out, tangent.to(out.dtype).expand(out.shape))
    return None


def _normalization_with_constant_affine(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """``F.group_norm`` / ``F.layer_norm`` of a dual number with a weight and bias without tangents, as
    ``make_dual(norm(x; w, b), d norm(x; None, None) * w)``: the affine map is linear in the normalised input,
    and the normalisation alone has no constant operand. None where that does not apply. (This torch's rule
    differentiates the affine weight as an "efficient zero" tensor: a group norm of the digits UNet took
    3.4x the time of one whose weight carries a tangent, benchmarks/RESULTS.md, "Issue 13, session 10".)"""
    names = ("input", "num_groups", "weight", "bias", "eps") if func is F.group_norm else \
        ("input", "normalized_shape", "weight", "bias", "eps")
    bound = {**dict(zip(names, args)), **kwargs}
    x, weight, bias = bound.get("input"), bound.get("weight"), bound.get("bias")
    tangent = _tangent(x)
    if tangent is None or (weight is None and bias is None) or _tangent(weight) is not None \
            or _tangent(bias) is not None or set(bound) - set(names):
        return None
    primal = fwAD.unpack_dual(x).primal
    size, eps = bound[names[1]], bound.get("eps", 1e-5)
    out = func(primal, size, weight, bias, eps)
    d_normalized = fwAD.unpack_dual(func(x, size, None, None, eps)).tangent
    if weight is not None:
        shape = (1, -1, *([1] * (primal.ndim - 2))) if func is F.group_norm else weight.shape
        d_normalized = d_normalized * weight.reshape(shape)
    return fwAD.make_dual(out, d_normalized)


class FrozenWeightTangents(TorchFunctionMode):
    """Inside a forward-AD level: a layer in :data:`FROZEN_WEIGHT_LAYERS` whose input is a dual number and
    whose weight and bias are not is computed as ``make_dual(f(x, W, b), f(dx, W, None))``, and
    ``F.silu`` of a dual number by :class:`DualSiLU`."""

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        if func in LINEAR_IN or func in ADDITIVE:
            out = _scaled_by_constant(func, args, kwargs)
            if out is not None:
                return out
        if func is F.group_norm or func is F.layer_norm:
            out = _normalization_with_constant_affine(func, args, kwargs)
            if out is not None:
                return out
        if func is F.silu and args and not (kwargs.get("inplace") or (len(args) > 1 and args[1])):
            tangent = _tangent(args[0])
            if tangent is not None:
                value, d_value = DualSiLU.apply(fwAD.unpack_dual(args[0]).primal, tangent)
                return fwAD.make_dual(value, d_value)
        if func in FROZEN_WEIGHT_LAYERS and args:
            x, rest = args[0], list(args[1:])
            tangent = _tangent(x)
            if tangent is not None:
                weight = rest[0] if rest else kwargs.get("weight")
                bias = rest[1] if len(rest) > 1 else kwargs.get("bias")
                if _tangent(weight) is None and _tangent(bias) is None:
                    primal = fwAD.unpack_dual(x).primal
                    out = func(primal, *rest, **kwargs)
                    if len(rest) > 1:
                        rest[1] = None
                    else:
                        kwargs = {**kwargs, "bias": None}
                    return fwAD.make_dual(out, func(tangent, *rest, **kwargs))
        return func(*args, **kwargs)


def sharded(module: torch.nn.Module | None) -> bool:
    """Whether ``module`` holds an FSDP2-sharded part: FSDP's pre-forward hook passes its inputs through
    a custom autograd Function with no forward-AD rule for a view, so dual numbers cannot enter it."""
    if module is None or not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def dual_numbers_unavailable(module: torch.nn.Module | None = None) -> bool:
    """Whether dual numbers cannot run here: a ``torch.autograd.forward_ad`` level is already open (only
    one can be), a functorch transform that has no rule for them (``vmap``) is active, or ``module`` is
    FSDP-sharded (:func:`sharded`)."""
    open_level = fwAD._current_level >= 0  # noqa: SLF001  (torch keeps no public accessor)
    return open_level or torch._C._functorch.peek_interpreter_stack() is not None or sharded(module)  # noqa: SLF001


def jvp(fn: Callable[..., Tensor], primals: Sequence[Tensor], tangents: Sequence[Tensor],
        module: torch.nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """(fn(*primals), its directional derivative along ``tangents``), differentiable in both; ``module``
    (the network ``fn`` runs) chooses torch.func.jvp where dual numbers cannot run
    (:func:`dual_numbers_unavailable`).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> x, dx = torch.randn(4, 3), torch.randn(4, 3)
        >>> y, dy = jvp(lin, (x,), (dx,))
        >>> bool(torch.allclose(dy, dx @ lin.weight.T))
        True
    """
    if dual_numbers_unavailable(module):
        return torch.func.jvp(fn, tuple(primals), tuple(tangents))
    with fwAD.dual_level(), FrozenWeightTangents():
        out = fn(*(fwAD.make_dual(p, d) for p, d in zip(primals, tangents)))
        primal, tangent = fwAD.unpack_dual(out)
    if tangent is None:  # fn did not depend on the primals
        tangent = torch.zeros_like(primal)
    return primal, tangent
