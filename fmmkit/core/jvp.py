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
  tangent ``f(dx; W)``, joined into a dual number: one product for the tangent instead of two.

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


def _tangent(x: Any) -> Tensor | None:
    return fwAD.unpack_dual(x).tangent if isinstance(x, Tensor) else None


class FrozenWeightTangents(TorchFunctionMode):
    """Inside a forward-AD level: a layer in :data:`FROZEN_WEIGHT_LAYERS` whose input is a dual number and
    whose weight and bias are not is computed as ``make_dual(f(x, W, b), f(dx, W, None))``."""

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
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


def dual_numbers_unavailable() -> bool:
    """Whether dual numbers cannot run here: a ``torch.autograd.forward_ad`` level is already open (only
    one can be), or a functorch transform that has no rule for them (``vmap``) is active."""
    open_level = fwAD._current_level >= 0  # noqa: SLF001  (torch keeps no public accessor)
    return open_level or torch._C._functorch.peek_interpreter_stack() is not None  # noqa: SLF001


def jvp(fn: Callable[..., Tensor], primals: Sequence[Tensor], tangents: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(fn(*primals), its directional derivative along ``tangents``), differentiable in both.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> x, dx = torch.randn(4, 3), torch.randn(4, 3)
        >>> y, dy = jvp(lin, (x,), (dx,))
        >>> bool(torch.allclose(dy, dx @ lin.weight.T))
        True
    """
    if dual_numbers_unavailable():
        return torch.func.jvp(fn, tuple(primals), tuple(tangents))
    with fwAD.dual_level(), FrozenWeightTangents():
        out = fn(*(fwAD.make_dual(p, d) for p, d in zip(primals, tangents)))
        primal, tangent = fwAD.unpack_dual(out)
    if tangent is None:  # fn did not depend on the primals
        tangent = torch.zeros_like(primal)
    return primal, tangent
