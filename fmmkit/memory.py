"""How much memory a spec's training, or one command, needs: estimated before anything is allocated.

The backbone is built with its large tensors on PyTorch's ``meta`` device (shapes only, no memory)
to count its parameters P.
Training holds the weights, their gradients, Adam's two moments and one copy per EMA, so at least

    4 bytes x P x (4 + number of EMAs)                      (float32)

and one micro-batch of B points of D numbers each needs at least 4 bytes x B x D x POINT_COPIES
(the data, the noise, the interpolant, the network's output and the target, and the tangents of a
JVP). Both are lower bounds; a spec whose bound exceeds the device's memory cannot run, and
``fmmkit spec check`` says so in one line instead of the allocator failing (or the OOM killer firing).

The commands that draw samples (``sample``, ``eval``, ``verify``) bound what one call may allocate
(``--max-memory``, default half the machine's memory) with the same kind of lower bound: the points
they hold at once times their size, and a sampler's time grid.
"""

from __future__ import annotations

import math
import os

import torch
from torch.overrides import TorchFunctionMode

from fmmkit.core import DataSource
from fmmkit.core.errors import UserError
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


def check_memory(spec: Spec, data: DataSource, registry: Registry, device: torch.device,
                 processes: int | None = None) -> None:
    """SpecError (one line, with the estimate) when the model or a micro-batch cannot fit in memory
    (``processes``: of a torchrun job, default $WORLD_SIZE, which shares a batch of micro_batches = 0)."""
    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
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


#: Working copies of the batch each sampler holds (the state, the output, its stages).
SAMPLER_COPIES = {None: 3, "flow_map": 3, "euler": 3, "heun": 4, "midpoint": 4, "rk4": 7, "dopri5": 10}
#: Copies of the evaluation points verify holds (the laws' maps, JVP tangents and residuals).
VERIFY_COPIES = 24
GIB = 2**30


def default_call_limit() -> float:
    """The default ``--max-memory`` in GiB: half the machine's memory."""
    return device_memory(torch.device("cpu")) / 2 / GIB


def sampling_bytes(point_numel: int, num: int, steps: int = 1, solver: str | None = None) -> dict[str, int]:
    """Lower bound of one ``sample`` call, by what drives it: {"num": the points and the sampler's
    copies of them, "steps": the time grid (steps + 1 float64 times)}."""
    copies = SAMPLER_COPIES.get(solver, max(SAMPLER_COPIES.values()))
    return {"num": num * point_numel * BYTES_PER_NUMBER * copies, "steps": (steps + 1) * 8}


def evaluation_bytes(point_numel: int, num: int, rows: int) -> int:
    """Lower bound of ``eval``: the reference, the noise and every row's samples of ``num`` points."""
    return num * point_numel * BYTES_PER_NUMBER * (rows + 2 + max(SAMPLER_COPIES.values()))


def verification_bytes(point_numel: int, num: int) -> int:
    """Lower bound of ``verify`` with ``num`` points."""
    return num * point_numel * BYTES_PER_NUMBER * VERIFY_COPIES


def check_call(parts: dict[str, int], values: dict[str, int], limit_gib: float) -> None:
    """UserError naming the flag that drives a call past ``limit_gib`` (parts: flag -> bytes it drives)."""
    need = sum(parts.values())
    if need > limit_gib * GIB:
        flag = max(parts, key=lambda k: parts[k])
        raise UserError(f"--{flag} {values[flag]}: needs about {format_bytes(need)}, more than the "
                        f"{format_bytes(limit_gib * GIB)} one call may use; lower it, or raise the bound with "
                        "--max-memory GIB")
