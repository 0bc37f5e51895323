"""What torch.compile gains on each loss's training step, and what compiling costs (issue 13, goal 3).

The evidence behind ``[compile] enabled = "auto"`` (fmmkit.training.autocompile): for every loss, an
eager and a compiled copy of the same training step (the trainer's ``make_compute``: the loss and its
JVPs compiled by inductor, the backward through AOT autograd, Adam eager) on a fixed batch; process
CPU time of alternating eager / compiled steps after warm-up (medians), and the wall time of the
first compiled step (the compile; inductor's on-disk cache shortens it when the graphs were seen
before, and inductor's compile workers run in other processes, so it is wall time).

    nice -n 5 .venv/bin/python benchmarks/compile_gain.py --setting small --steps 8
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
from step_cost import SETTINGS, TEACHER_KINDS, registered_losses, setting_spec, teacher_run  # noqa: E402


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
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
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
        rows.append(f"| {label} | {e:.1f} | {c:.1f} | **{e / c:.2f}x** | {compile_wall:.0f} |")
        print(rows[-1], flush=True)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nSetting {args.setting}; `uptime` before: `{uptime}`; after: `{after}`. Command: "
          f"`nice -n 5 .venv/bin/python benchmarks/compile_gain.py --setting {args.setting} --steps {args.steps}`.\n")
    print("| loss | eager CPU ms / step | compiled CPU ms / step | speed-up | first compiled step (s wall, the compile) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
