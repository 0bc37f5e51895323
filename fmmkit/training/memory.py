"""How much memory training a spec needs, estimated before anything is allocated.

The backbone is built with its large tensors on PyTorch's ``meta`` device (shapes only, no memory)
to count its parameters P.
Training holds the weights, their gradients, Adam's two moments and one copy per EMA, so at least

    4 bytes x P x (4 + number of EMAs)                      (float32)

and one micro-batch of B points of D numbers each needs at least 4 bytes x B x D x POINT_COPIES
(the data, the noise, the interpolant, the network's output and the target, and the tangents of a
JVP). Both are lower bounds; a spec whose bound exceeds the device's memory cannot run, and
``fmmkit spec check`` says so in one line instead of the allocator failing (or the OOM killer firing).
"""

from __future__ import annotations

import math
import os

import torch
from torch.overrides import TorchFunctionMode

from fmmkit.core import DataSource
from fmmkit.registry import Registry
from fmmkit.runs.layout import ema_labels
from fmmkit.spec import Spec, SpecError

#: Copies of one micro-batch of points a training step holds at the very least.
POINT_COPIES = 8
BYTES_PER_NUMBER = 4


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: the GPU's, or the machine's physical memory."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


#: Tensors with more elements than this are created on the meta device while counting parameters.
LARGE = 2**14
_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.randn, torch.rand, torch.full})


def _numel(args: tuple, kwargs: dict) -> int:
    size = kwargs.get("size", args[0] if args else ())
    if isinstance(size, int):
        size = args if all(isinstance(a, int) for a in args) else (size,)
    try:
        return math.prod(int(n) for n in size)
    except TypeError:
        return 0


class _LargeTensorsOnMeta(TorchFunctionMode):
    """Create large tensors on the meta device (shapes, no memory); small ones as usual, so building a
    backbone needs neither its memory nor the meta kernels of every small op (their import is slow)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None and _numel(args, kwargs) > LARGE:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def count_parameters(spec: Spec, data: DataSource, registry: Registry) -> int | None:
    """Parameters of the spec's model, its large tensors on the meta device; None if it cannot be built so."""
    from fmmkit.spec.build import build_model

    try:
        with _LargeTensorsOnMeta():
            model = build_model(spec, data, registry)
    except (RuntimeError, ValueError, NotImplementedError, OverflowError, TypeError):
        return None
    return sum(p.numel() for p in model.parameters())


def check_memory(spec: Spec, data: DataSource, registry: Registry, device: torch.device, processes: int = 1) -> None:
    """SpecError (one line, with the estimate) when the model or a micro-batch cannot fit in memory."""
    available = device_memory(device)
    params = count_parameters(spec, data, registry)
    copies = 4 + len(ema_labels(spec.ema))
    if params is not None and params * BYTES_PER_NUMBER * copies > available:
        need = params * BYTES_PER_NUMBER * copies
        raise SpecError([f"{spec.source}: model: the {spec.model.kind} backbone's {params:.2g} parameters need about "
                         f"{format_bytes(need)} (weights, gradients, optimiser state and {copies - 4} EMAs) but this "
                         f"machine has {format_bytes(available)}; make the model smaller"])
    micro_batches = spec.train.micro_batches or processes
    points = spec.train.batch_size // max(micro_batches, 1)
    need = points * math.prod(data.shape) * BYTES_PER_NUMBER * POINT_COPIES
    if need > available:
        raise SpecError([f"{spec.source}: train.batch_size: {points} points per micro-batch need at least "
                         f"{format_bytes(need)} ({POINT_COPIES} copies of each point) but this machine has "
                         f"{format_bytes(available)}; lower train.batch_size or raise train.micro_batches"])
