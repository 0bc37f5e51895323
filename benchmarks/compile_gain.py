"""What torch.compile gains on each loss's training step, and what compiling costs (issue 13, goal 3).

The evidence behind ``[compile] enabled = "auto"`` (fmmkit.training.autocompile): for every loss, an
eager and a compiled copy of the same training step (the trainer's ``make_compute``: the loss and its
JVPs compiled by inductor, the backward through AOT autograd, Adam eager) on a fixed batch; process
CPU time of alternating eager / compiled steps after warm-up (medians), and the wall time of the
first compiled step (the compile; inductor's on-disk cache shortens it when the graphs were seen
before, and inductor's compile workers run in other processes, so it is wall time).

    nice -n 5 .venv/bin/python benchmarks/compile_gain.py --setting small --steps 8

Besides each loss's speed-up it reports the step cost relative to flow matching with both eager and
with each step in its faster form (what ``enabled = "auto"`` converges to on a run long enough to pay
for the compile), and writes the "Compiled step cost (SETTING)" section of RESULTS.md (``--no-write``:
print only).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import BARS, SETTING_TEXT, SETTINGS, TEACHER_KINDS, registered_losses, setting_spec, teacher_run  # noqa: E402


def step_pair(setting: str, kind: str, config: dict[str, Any], cache: Path) -> tuple[Any, Any]:
    """(eager step, compiled step): the same pipeline, one through a compiled make_compute."""
    from fmmkit.spec import load_spec
    from fmmkit.training.build import build_pipeline
    from fmmkit.training.compile import make_compute

    teacher = teacher_run(setting, cache) if kind in TEACHER_KINDS else None
    steps = []
    for compiled in (False, True):
        raw = setting_spec(setting, kind, config, 1, 1, teacher)
        raw["compile"] = {"enabled": compiled}
        spec = load_spec(raw)
        torch.manual_seed(0)
        pipeline = build_pipeline(spec, device=torch.device("cpu"))
        compute = make_compute(pipeline.model, pipeline.loss, pipeline.teacher, spec)
        optimizer = torch.optim.Adam(list(pipeline.model.parameters()) + pipeline.loss.parameters(), lr=1e-4)
        batch = pipeline.data.sample(spec.train.batch_size, torch.Generator().manual_seed(0))

        def step(c: Any = compute, o: torch.optim.Optimizer = optimizer, b: Any = batch) -> None:
            o.zero_grad(set_to_none=True)
            loss, _ = c(b.x1, b.y, 1000)
            loss.backward()
            o.step()

        steps.append(step)
    return steps[0], steps[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, default="small")
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fmmkit-step-cost"))
    parser.add_argument("--only", nargs="+", default=None, help="loss labels to measure besides flow matching")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.only:
        import os

        os.environ["FMMKIT_STEP_COST_ONLY"] = ",".join(["flow matching", *args.only])
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    measured: list[tuple[str, float, float, float]] = []
    for label, kind, config in registered_losses():
        torch._dynamo.reset()
        eager, compiled = step_pair(args.setting, kind, config, args.cache)
        start = time.perf_counter()
        compiled()
        compile_wall = time.perf_counter() - start
        for _ in range(2):
            eager(), compiled()
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.steps):
            for name, fn in (("eager", eager), ("compiled", compiled)):
                start = time.process_time()
                fn()
                times[name].append(time.process_time() - start)
        e, c = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
        measured.append((label, e, c, compile_wall))
        print(f"{label}: eager {e:.1f} ms, compiled {c:.1f} ms, compile {compile_wall:.0f} s", flush=True)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    fm_eager, fm_compiled = next((e, c) for label, e, c, _ in measured if label == "flow matching")
    fm_best = min(fm_eager, fm_compiled)
    bars = BARS.get(args.setting, {})
    lines = [f"{SETTING_TEXT[args.setting]} `uptime` before: `{uptime}`; after: `{after}`. Command: "
             f"`nice -n 5 .venv/bin/python benchmarks/compile_gain.py --setting {args.setting} --steps {args.steps}`. "
             "One step = the trainer's make_compute (loss, JVPs) + backward + Adam on a fixed batch, process CPU "
             f"time, {args.steps} alternating eager / compiled steps after warm-up, medians; inductor, default mode. "
             "*best* = the faster of the two forms of each step (what `[compile] enabled = \"auto\"` keeps on a run "
             "long enough to pay for the compile).", "",
             "| loss | eager CPU ms / step | compiled CPU ms / step | speed-up | compile (s wall, first compiled step) "
             "| eager x flow matching (eager) | best x flow matching (best) | issue 13 bar |",
             "|---|---|---|---|---|---|---|---|"]
    for label, e, c, wall in measured:
        bar = f"<= {bars[label]}" if label in bars else ""
        lines.append(f"| {label} | {e:.1f} | {c:.1f} | **{e / c:.2f}x** | {wall:.0f} | {e / fm_eager:.2f} | "
                     f"**{min(e, c) / fm_best:.2f}** | {bar} |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write and not args.only:
        from results_file import write_section

        write_section(f"Compiled step cost ({args.setting})", body)


if __name__ == "__main__":
    main()
