"""Where a training step's time goes, for each loss (issue 13, goal 3: profile before changing code).

One step (loss, backward, Adam) of every loss under torch.profiler, with the derivative machinery
before issue 13 (``torch.func.jvp``, MeanFlow's JVP over every row: rebuilt by patching, see
benchmarks/derivative_passes.py) and as it is now. Per step: GEMM calls (``mm``/``addmm``/``bmm``)
and their GFLOP (the profiler's count), relative to flow matching, and the profiler's self CPU
time split into GEMMs, other ATen operations (elementwise, reductions, copies) and everything else
(Python, autograd, dispatch). Profiled times are inflated and shift with the machine's load; the
GEMM counts and FLOPs are exact.

    nice -n 5 .venv/bin/python benchmarks/profile_step.py --setting peer [--write]

``--write`` puts the table in the "Step profile (SETTING)" section of RESULTS.md, with the load.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from derivative_passes import make_step, variant_context  # noqa: E402
from step_cost import SETTINGS, registered_losses  # noqa: E402

GEMMS = {"aten::mm", "aten::addmm", "aten::bmm"}


def profile_step(step, variant: str, repeats: int = 3) -> dict[str, float]:  # type: ignore[no-untyped-def]
    with variant_context(variant):
        step()
        step()
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for _ in range(repeats):
                step()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) / repeats / 1e3
    gemm = sum(e.self_cpu_time_total for e in averages if e.key in GEMMS) / repeats / 1e3
    aten = sum(e.self_cpu_time_total for e in averages if e.key.startswith("aten::") and e.key not in GEMMS) / repeats / 1e3
    return {"ms": total, "gemm_ms": gemm, "aten_ms": aten, "other_ms": total - gemm - aten,
            "gemm_calls": sum(e.count for e in averages if e.key in GEMMS) / repeats,
            "gflop": sum(e.flops for e in averages if e.key in GEMMS) / repeats / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, default="peer")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fmmkit-step-cost"))
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    args = parser.parse_args()
    before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    steps = {label: make_step(args.setting, kind, config, args.cache) for label, kind, config in registered_losses()}
    lines = ["| loss | machinery | GEMM calls / step | GEMM GFLOP / step | x flow matching | profiled ms / step | "
             "GEMM | other ATen (elementwise, ...) | Python, autograd, dispatch |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    fm: dict[str, float] = {}
    for label, step in steps.items():
        for variant, name in (("before", "before (torch.func.jvp)"), ("+ s = t rows skip the JVP", "now")):
            got = profile_step(step, variant)
            fm.setdefault(variant, got["gflop"])
            lines.append(f"| {label} | {name} | {got['gemm_calls']:.0f} | {got['gflop']:.2f} | "
                         f"{got['gflop'] / fm[variant]:.2f} | {got['ms']:.0f} | {got['gemm_ms'] / got['ms']:.0%} | "
                         f"{got['aten_ms'] / got['ms']:.0%} | {got['other_ms'] / got['ms']:.0%} |")
            print(lines[-1], flush=True)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    from results_file import machine

    head = (f"Machine: {machine()}; `uptime` before: `{before}`; after: `{after}` (profiled times are inflated and "
            "follow the load; GEMM counts and FLOPs are exact). Command: `nice -n 5 .venv/bin/python "
            f"benchmarks/profile_step.py --setting {args.setting} --write`. One training step (loss, backward, Adam), "
            "3 profiled steps after 2 warm-up steps.")
    if args.write:
        from results_file import write_section

        write_section(f"Step profile ({args.setting})", head + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
