"""LMD and EMD with a share of the batch on s = t: sample quality and training time (issue 13, goal 3).

On s = t rows the Lagrangian and Eulerian residuals are both the velocity residual v_{t,t}(x) - b^_t(x)
(X_{t,t} = x, d/dt X = v_{t,t}; the Eulerian transport term vanishes), which the losses take with one
plain pass instead of a JVP (:meth:`fmmkit.losses.base.FlowMapLoss.lagrangian_parts`). A diagonal share
eta then costs, in units of a 256 x 256 hidden product per row, eta x 12 + (1 - eta) x 24 for LMD and
eta x 12 + (1 - eta) x 21 for EMD (flow matching: 9). This screen trains the flow-matching teacher of
benchmarks/losses.py's budget (MLP 128 x 4, time_dim 2, batch 512, 2000 steps, one thread) once per
seed, then each loss at each share, and scores 1, 2 and 4 flow-map steps on fixed noise: checkerboard KL
(100,000 samples), energy distance (10,000) and the share of samples inside the squares.

    nice -n 5 .venv/bin/python benchmarks/distillation_diagonal.py --seeds 0 1 --jobs 2 --out runs/diag
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from losses import Scorer, base_spec, flow_map_samples  # noqa: E402

LOSSES = {"LMD": {"kind": "lagrangian_distillation"}, "EMD": {"kind": "eulerian_distillation"}}
FLOW_MAP_STEPS = (1, 2, 4)


def budget(args: argparse.Namespace) -> argparse.Namespace:
    """benchmarks/losses.py's budget (its argparse defaults), ``--steps`` steps."""
    return argparse.Namespace(width=128, depth=4, time_dim=2, lr=2e-3, steps=args.steps, batch=512, threads=1)


def spec(args: argparse.Namespace, seed: int, loss: dict[str, Any], teacher: Path | None) -> dict[str, Any]:
    """The run spec of one cell: the budget, ``loss``, the training seed and the teacher run (if any)."""
    out = base_spec(budget(args), loss["kind"], loss)
    out["train"]["seed"] = seed
    if teacher is not None:
        out["teacher"] = {"run": str(teacher.resolve())}
    return out


def train_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train one run (one torch thread) and score it; cached in ``job["cell"]``."""
    torch.set_num_threads(1)
    import fmmkit
    from fmmkit.registry import get_registry
    from fmmkit.core import BuildContext
    from fmmkit.runs.run import load_run

    cell = Path(job["cell"])
    if cell.exists():
        return json.loads(cell.read_text())
    start = time.perf_counter()
    run = load_run(fmmkit.train(job["spec"], out=job["run_dir"], progress=False, pictures=False))
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"label": job["label"], "seed": job["seed"], "eta": job["eta"], "seconds": seconds}
    if job["score"]:
        scorer = Scorer(run, 100_000, 10_000)
        registry = get_registry()
        inside = registry.build("metric", "in_support", registry.get("metric", "in_support").config(), BuildContext())
        for k in FLOW_MAP_STEPS:
            x = flow_map_samples(run, scorer.noise, k)
            kl, ed = scorer(x)
            result[f"kl{k}"], result[f"ed{k}"] = kl, ed
            result[f"in{k}"] = float(inside(x.float(), scorer.reference, run.data))
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.5, 0.75])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/distillation_diagonal")
    parser.add_argument("--json", help="write every cell here")
    args = parser.parse_args()
    out = Path(args.out)
    load = os.getloadavg()[0]
    wall = time.perf_counter()

    def job(label: str, seed: int, eta: float | None, loss: dict[str, Any]) -> dict[str, Any]:
        name = f"{label}-eta{eta}" if eta is not None else label
        teacher = None if eta is None else out / f"teacher-seed{seed}"
        if eta is not None:
            loss = {**loss, "times": {"diagonal_fraction": eta}}
        return {"label": label, "seed": seed, "eta": eta, "score": eta is not None,
                "spec": spec(args, seed, loss, teacher), "run_dir": str(out / f"{name}-seed{seed}"),
                "cell": str(out / f"{name}-seed{seed}.json")}

    with ProcessPoolExecutor(args.jobs) as pool:
        list(pool.map(train_cell, [job("teacher", s, None, {"kind": "flow_matching"}) for s in args.seeds]))
        jobs = [job(label, s, eta, LOSSES[label]) for label in args.losses for eta in args.etas for s in args.seeds]
        cells = list(pool.map(train_cell, jobs))
    lines = ["| loss | s = t share | train s (median) | " + " | ".join(
        f"{k} step{'s' if k > 1 else ''}: in squares / ED / KL" for k in FLOW_MAP_STEPS) + " |",
        "|---|---|---|" + "---|" * len(FLOW_MAP_STEPS)]
    for label in args.losses:
        for eta in args.etas:
            rows = [c for c in cells if c["label"] == label and c["eta"] == eta]
            med = {key: statistics.median(c[key] for c in rows) for key in rows[0] if key[:2] in ("kl", "ed", "in")}
            sec = statistics.median(c["seconds"] for c in rows)
            lines.append(f"| {label} | {eta} | {sec:.0f} | " + " | ".join(
                f"{med[f'in{k}']:.3f} / {med[f'ed{k}']:.4f} / {med[f'kl{k}']:.3f}" for k in FLOW_MAP_STEPS) + " |")
    print("\n".join(lines))
    print(f"seeds {args.seeds}: medians; {len(cells)} runs, {args.jobs} at a time; wall "
          f"{(time.perf_counter() - wall) / 60:.1f} min; load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(cells, indent=1))


if __name__ == "__main__":
    main()
