"""How a global batch is split over processes and micro-batches, and the random streams of each part.

The global batch of ``train.batch_size`` points is cut into ``M = train.micro_batches`` equal
micro-batches (default: one per process). Process r of W owns micro-batches r*M/W ... (r+1)*M/W - 1
and accumulates their gradients (M/W micro-batches each); the gradient of a step is the mean over
all M, which is the gradient of the global batch's mean loss.

Micro-batch j of every step draws from its own :class:`Stream`: a data generator and a state of
torch's generator for the loss's own draws (times, noise, dropout), both seeded from (seed, j). So
the data and noise of a step depend on M and the seed only, not on the number of processes: a run
with M = 2 on one process (two accumulated micro-batches) and on two processes sees the same points.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fmmkit.spec import SpecError
from fmmkit.spec.schema import TrainConfig
from fmmkit.training.distributed import DistEnv


def stream_seed(seed: int, slot: int, purpose: int) -> int:
    """A 63-bit seed for (run seed, micro-batch slot, purpose) from NumPy's SeedSequence hash."""
    return int(np.random.SeedSequence([seed % 2**63, slot, purpose]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class BatchPlan:
    """Micro-batch size and the micro-batch slots this process owns."""

    batch_size: int
    micro_batches: int
    slots: tuple[int, ...]

    @property
    def micro_batch_size(self) -> int:
        """Points per micro-batch."""
        return self.batch_size // self.micro_batches

    @classmethod
    def make(cls, config: TrainConfig, env: DistEnv, origin: str) -> BatchPlan:
        """Check that the global batch divides over micro-batches and processes; SpecError if not."""
        m = config.micro_batches or env.world_size
        if m % env.world_size:
            raise SpecError([f"{origin}: train.micro_batches: {m} micro-batches cannot be shared by "
                             f"{env.world_size} processes; use a multiple of {env.world_size} (0 = one per process)"])
        if config.batch_size % m:
            raise SpecError([f"{origin}: train.batch_size: {config.batch_size} points do not split into {m} equal "
                             f"micro-batches; use a multiple of {m}"])
        per = m // env.world_size
        return cls(config.batch_size, m, tuple(range(env.rank * per, (env.rank + 1) * per)))


class Stream:
    """Micro-batch slot ``slot``: its data generator (the data position) and its loss RNG state."""

    def __init__(self, slot: int, seed: int, device: torch.device) -> None:
        self.slot = slot
        self.device = device
        self.data = torch.Generator().manual_seed(stream_seed(seed, slot, 0))
        self.loss_cpu = torch.Generator().manual_seed(stream_seed(seed, slot, 1)).get_state()
        self.loss_cuda = (torch.Generator(device=device).manual_seed(stream_seed(seed, slot, 2)).get_state()
                          if device.type == "cuda" else None)

    @contextmanager
    def loss_rng(self) -> Iterator[None]:
        """Run the loss with torch's default generators set to this stream (and advance the stream)."""
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.loss_cuda is not None else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type if devices else "cuda"):
            torch.set_rng_state(self.loss_cpu)
            if self.loss_cuda is not None:
                torch.cuda.set_rng_state(self.loss_cuda, devices[0])
            yield
            self.loss_cpu = torch.get_rng_state()
            if self.loss_cuda is not None:
                self.loss_cuda = torch.cuda.get_rng_state(devices[0])

    def state_dict(self) -> dict[str, Tensor]:
        """The stream's generator states (uint8 tensors)."""
        state = {"data": self.data.get_state(), "loss_cpu": self.loss_cpu.clone()}
        if self.loss_cuda is not None:
            state["loss_cuda"] = self.loss_cuda.clone()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        self.data.set_state(state["data"])
        self.loss_cpu = state["loss_cpu"].clone()
        if self.loss_cuda is not None and "loss_cuda" in state:
            self.loss_cuda = state["loss_cuda"].clone()
