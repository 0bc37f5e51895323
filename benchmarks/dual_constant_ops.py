"""One operation on a dual number with a tangent-free operand: torch's forward-mode rule against fmmkit's jvp.

torch's rule for ``a * c`` (a dual, c without a tangent), ``a - c`` and a norm with an affine weight
and bias builds the missing tangent as an "efficient zero" tensor, whose kernels add a fixed cost to
every call; :class:`fmmkit.core.jvp.FrozenWeightTangents` takes the tangent as ``da * c``, ``da`` and
``d norm(x) * w`` instead (issue 13, session 10). Times one call of each, in one process on one thread,
process CPU time, interleaved rounds, medians; the plain call (no dual number) is what the operation
costs without forward-mode AD.

    nice -n 5 .venv/bin/python benchmarks/dual_constant_ops.py --rounds 7
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from fmmkit.core.jvp import FrozenWeightTangents

TORCH = "torch's rule"


def cases() -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]]:
    """name -> (the operation on a dual number, the dual number's shape)."""
    c, gn_w, gn_b = torch.rand(1, 1), torch.randn(64), torch.randn(64)
    return {
        "time embedding angles t[:, None] * freqs, t (512,)": (lambda t: t[:, None] * c, (512,)),
        "t - s, (512,)": (lambda t: t - c[0], (512,)),
        "x * c, (4096, 256) by (1, 256)": (lambda x: x * torch.ones(1, 256), (4096, 256)),
        "group norm with affine weight, (16, 64, 16, 16)": (lambda x: F.group_norm(x, 32, gn_w, gn_b), (16, 64, 16, 16)),
    }


def cpu_time(fn: Callable[[], object], calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, (op, shape) in cases().items():
            primal = torch.randn(shape)
            for mode, context in ((TORCH, contextlib.nullcontext), ("fmmkit jvp", FrozenWeightTangents)):
                with fwAD.dual_level(), context():
                    dual = fwAD.make_dual(primal, torch.randn_like(primal))
                    op(dual)  # warm-up
                    times.setdefault((name, mode), []).append(cpu_time(lambda: op(dual), args.calls))
            times.setdefault((name, "plain"), []).append(cpu_time(lambda: op(primal), args.calls))
    print("| operation | torch's rule, us | fmmkit jvp, us | speed-up | no tangent at all, us |\n|---|---|---|---|---|")
    for name in cases():
        med = {mode: statistics.median(times[(name, mode)]) for mode in (TORCH, "fmmkit jvp", "plain")}
        print(f"| {name} | {med[TORCH]:.0f} | {med['fmmkit jvp']:.0f} | "
              f"{med[TORCH] / med['fmmkit jvp']:.1f}x | {med['plain']:.0f} |")
    print(f"one thread, {args.rounds} interleaved rounds of {args.calls} calls, medians of process CPU time; "
          f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
