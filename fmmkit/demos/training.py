"""What the demo model makers share: their command line, the digits they train on, and the loop."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def demo_parser(doc: str, out: str, steps: int) -> argparse.ArgumentParser:
    """--out, --steps, --batch-size, --seed and --threads, the options every demo maker takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=out, help="the folder to write the model to")
    parser.add_argument("--steps", type=int, default=steps, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser


def digits_images(seed: int, threads: int) -> Tensor:
    """The built-in 8x8 digits as (1797, 1, 8, 8) images in [-1, 1], after seeding torch and pinning threads."""
    from fmmkit.data.digits import Digits

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    digits = Digits()
    return digits.to_model_space(digits.pixels()[0])


def fit(batch_loss: Callable[[Tensor, torch.Generator], Tensor], images: Tensor, params: Iterable[torch.nn.Parameter],
        optimiser: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, steps: int, batch_size: int,
        seed: int, clip: float | None = None) -> float:
    """``steps`` optimiser steps on ``batch_loss(batch, generator)`` over random batches of ``images``
    (progress every 500 steps); returns the seconds taken."""
    params = list(params)
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        loss = batch_loss(images[torch.randint(len(images), (batch_size,), generator=g)], g)
        optimiser.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimiser.step()
        schedule.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
    return time.time() - start
