"""Multi-process training under ``torchrun``: process groups, gradient averaging, FSDP2 sharding.

One node, N processes (gloo on CPU, nccl on CUDA)::

    torchrun --nproc_per_node N -m fmmkit.cli train SPEC --out DIR

Several nodes (the same command on every node; a shared file system for DIR)::

    torchrun --nnodes M --node_rank R --nproc_per_node N --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m fmmkit.cli train SPEC --out DIR

``train.parallel = "ddp"`` keeps a full copy of the weights on every process and averages the
gradients with one all-reduce after the backward pass. It does not wrap the model in
``DistributedDataParallel``: forward-mode AD through that wrapper fails (pytorch #102197) and the
losses call the flow map's own methods (``velocity``, ``average_velocity``, JVPs), which bypass a
wrapper's ``forward`` anyway; so the losses run on the plain module and the gradients are reduced
explicitly. ``train.parallel = "fsdp"`` shards the backbone with FSDP2 (``fully_shard``), whose
hooks gather the weights in every forward (JVPs included) and reduce-scatter the gradients.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fmmkit.spec.errors import SpecError


def resolve_device(name: str) -> torch.device:
    """"auto" is CUDA when a GPU is visible, else the CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError([f"train.device: '{name}' asked for but no CUDA device is visible; use \"auto\" or \"cpu\""])
    return device


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: rank, number of processes, local rank (its GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, weights and pictures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_device(name: str, env: DistEnv) -> torch.device:
    """The device of this process: under torchrun with CUDA, GPU ``local_rank``."""
    device = resolve_device(name)
    if env.active and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


@contextmanager
def distributed_session(device_name: str) -> Iterator[tuple[DistEnv, torch.device]]:
    """Join the torchrun job (if any) for the duration of a run; (env, device) of this process."""
    world = launched_world_size()
    if world == 1:
        yield DistEnv(), process_device(device_name, DistEnv())
        return
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = process_device(device_name, env)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield env, device
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every process (no-op alone)."""
    if env.active:
        dist.barrier()


def all_reduce_(tensor: Tensor, env: DistEnv, op: str = "sum") -> Tensor:
    """In-place sum / max / min over processes (no-op alone)."""
    if env.active:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return tensor


def all_agree(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True only when ``flag`` is true on every process."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_(t, env, "min").item() > 0.5)


def gather_bytes(data: bytes, env: DistEnv, device: torch.device) -> list[bytes]:
    """Every process's ``data``, in rank order, on every process (one all-gather of padded uint8)."""
    if not env.active:
        return [data]
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(env.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else mine[:0]
    chunks = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(env.world_size)]
    dist.all_gather(chunks, mine.to(device))
    return [c[:int(n.item())].cpu().numpy().tobytes() for c, n in zip(chunks, sizes)]


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 shard)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This process's shard of a DTensor, or the tensor itself."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def full(t: Tensor) -> Tensor:
    """The whole tensor of a DTensor (a collective: every process must call it), or the tensor itself."""
    return t.full_tensor() if is_sharded(t) else t  # type: ignore[attr-defined]


def broadcast_parameters(module: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's parameters and buffers to every process (replicated training starts equal)."""
    if not env.active:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[nn.Parameter], env: DistEnv) -> None:
    """grad <- mean over processes of grad, in one flat all-reduce (missing gradients count as 0)."""
    params = [p for p in params if p.requires_grad and not is_sharded(p)]
    if not env.active or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for p in params:
        mean = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if p.grad is None:
            p.grad = mean.clone()
        else:
            p.grad.copy_(mean)


def gradient_norm(params: Iterable[nn.Parameter], env: DistEnv, device: torch.device) -> Tensor:
    """|g|_2 over all parameters: shards are summed over processes, replicated gradients counted once."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [local(g).double().pow(2).sum() for g in grads if is_sharded(g)]
    plain = [g.double().pow(2).sum() for g in grads if not is_sharded(g)]
    sq_sharded = torch.stack(sharded).sum() if sharded else torch.zeros((), dtype=torch.float64, device=device)
    if sharded:
        all_reduce_(sq_sharded, env)
    sq_plain = torch.stack(plain).sum() if plain else torch.zeros((), dtype=torch.float64, device=device)
    return (sq_sharded.to(device) + sq_plain.to(device)).sqrt()


def clip_gradients(params: Iterable[nn.Parameter], norm: float, max_norm: float) -> None:
    """Scale every gradient by min(1, max_norm / |g|) (the norm from :func:`gradient_norm`)."""
    if max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return
    scale = max_norm / (norm + 1e-6)
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                local(p.grad).mul_(scale)


def shard_model(backbone: nn.Module, env: DistEnv, device: torch.device) -> None:
    """FSDP2: shard every block of each ``nn.ModuleList`` of the backbone, then the backbone itself."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not env.active:
        return
    mesh = init_device_mesh(device.type, (env.world_size,))
    for module in list(backbone.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block, mesh=mesh)
    fully_shard(backbone, mesh=mesh)
    # FlowMap combines the backbone's output out of place (x + (t - s) v), which is what FSDP2 asks.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def unshard_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Whole tensors of a (possibly sharded) state dict, on the CPU (a collective under FSDP)."""
    return {k: full(v).detach().cpu() for k, v in state.items()}
