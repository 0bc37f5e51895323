"""What each change to the derivative machinery bought (issue 13, goal 3), measured side by side in one process.

The machinery before issue 13 is rebuilt here by patching (nothing of it stays in the package), and
each change is added on top, cumulatively:

1. ``before``: ``torch.func.jvp``; MeanFlow's JVP over every row;
2. ``dual numbers``: :func:`fmmkit.core.jvp.jvp` without its SiLU rule (frozen-weight layers only);
3. ``+ DualSiLU``: SiLU of a dual number by :class:`fmmkit.core.jvp.DualSiLU`;
4. ``+ s = t rows skip the JVP``: ``FlowMapLoss.eulerian_parts(..., diagonal=n)`` (MeanFlow) — today's package.

One training step (the loss, its backward, an Adam step) on a fixed batch, for every loss and every
variant in turn, each round; process CPU time (one thread: steadier than wall time on a shared
machine); the ratio to flow matching is taken within each round and variant, then the median over
rounds. The losses' values agree across variants (tests/test_jvp_mechanism.py).

    nice -n 5 .venv/bin/python benchmarks/derivative_passes.py --setting peer --rounds 15
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor

import fmmkit.core.jvp as jvp_module
import fmmkit.core.derivatives as derivatives_module
from fmmkit.core.shapes import broadcast_time
from fmmkit.core.derivatives import eulerian_velocity_derivative
from fmmkit.losses.base import FlowMapLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import SETTINGS, TEACHER_KINDS, registered_losses, setting_spec, teacher_run  # noqa: E402


def torch_func_jvp(fn: Any, primals: Any, tangents: Any, module: Any = None) -> tuple[Tensor, Tensor]:
    return torch.func.jvp(fn, tuple(primals), tuple(tangents))


def all_rows_eulerian_parts(self: FlowMapLoss, model: Any, x: Tensor, s: Tensor, t: Tensor, b: Tensor,
                            y: Tensor | None, *, diagonal: int = 0) -> tuple[Tensor, Tensor]:
    v, total = eulerian_velocity_derivative(model, x, s, t, dx=b, y=y, method=self.config.derivative)
    return v, broadcast_time(t - s, v).to(v.dtype) * total


class FrozenWeightsOnly(jvp_module.FrozenWeightTangents):
    """The frozen-weight layers without the SiLU rule."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.nn.functional.silu:
            return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def patches(variant: str) -> list[Any]:
    out = []
    if variant == "before":
        out.append(mock.patch.object(derivatives_module, "jvp", torch_func_jvp))
    if variant == "dual numbers":
        out.append(mock.patch.object(jvp_module, "FrozenWeightTangents", FrozenWeightsOnly))
    if variant != "+ s = t rows skip the JVP":
        out.append(mock.patch.object(FlowMapLoss, "eulerian_parts", all_rows_eulerian_parts))
    return out


VARIANTS = ("before", "dual numbers", "+ DualSiLU", "+ s = t rows skip the JVP")


@contextlib.contextmanager
def variant_context(variant: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for p in patches(variant):
            stack.enter_context(p)
        yield


def make_step(setting: str, kind: str, config: dict[str, Any], cache: Path) -> Callable[[], None]:
    from fmmkit.spec import load_spec
    from fmmkit.training.build import build_pipeline

    teacher = teacher_run(setting, cache) if kind in TEACHER_KINDS else None
    spec = load_spec(setting_spec(setting, kind, config, 1, 1, teacher))
    torch.manual_seed(0)
    pipeline = build_pipeline(spec, device=torch.device("cpu"))
    optimizer = torch.optim.Adam(list(pipeline.model.parameters()) + pipeline.loss.parameters(), lr=1e-4)
    batch = pipeline.data.sample(spec.train.batch_size, torch.Generator().manual_seed(0))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        pipeline.loss(pipeline.model, batch, teacher=pipeline.teacher, step=1000).loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, default="peer")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fmmkit-step-cost"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    steps = {label: make_step(args.setting, kind, config, args.cache) for label, kind, config in registered_losses()}
    for variant in VARIANTS:  # warm-up
        with variant_context(variant):
            for step in steps.values():
                step()
    ratios: dict[tuple[str, str], list[float]] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for variant in VARIANTS:
            with variant_context(variant):
                got = {}
                for label, step in steps.items():
                    start = time.process_time()
                    step()
                    got[label] = time.process_time() - start
            for label, seconds in got.items():
                times.setdefault((variant, label), []).append(seconds * 1e3)
                ratios.setdefault((variant, label), []).append(seconds / got["flow matching"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    labels = list(steps)
    print(f"Setting {args.setting}; `uptime` before: `{uptime_before}`; after: `{uptime_after}`. "
          f"Command: `nice -n 5 .venv/bin/python benchmarks/derivative_passes.py --setting {args.setting} "
          f"--rounds {args.rounds}`.\n")
    print("| loss | " + " | ".join(f"{v}: x FM (CPU ms)" for v in VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for label in labels:
        cells = [f"**{statistics.median(ratios[(v, label)]):.2f}** ({statistics.median(times[(v, label)]):.0f})"
                 for v in VARIANTS]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
