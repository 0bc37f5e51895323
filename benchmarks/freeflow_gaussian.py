"""FreeFlow with the exact Gaussian teacher and no data: how close the student gets to the exact map.

Each row trains a data-free spec (no ``[data]`` table; ``[teacher] kind = "gaussian"`` with mean
[1, -0.5], std [0.6, 1.3]; MLP 64 x 3 with time_dim 2; Adam 3e-3 cosine; batch 256) with ``fmmkit.train``
for a fixed budget and measures, on 20,000 fresh prior draws x0, the relative map error
RMS|X_{0,1}(x0) - X*_{0,1}(x0)| / RMS|X*_{0,1}(x0) - x0| against the exact map X* (1 for the
zero-initialised model), and the same for the two-jump map X_{1/2,1}(X_{0,1/2}(x0)) when
``path_fraction`` > 0. Writes the section "FreeFlow without data on the exact Gaussian teacher".

    nice -n 10 .venv/bin/python benchmarks/freeflow_gaussian.py [--budgets 300 600 1200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import fmmkit
from fmmkit.exact import GaussianFlowMap
from fmmkit.runs.run import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

TITLE = "FreeFlow without data on the exact Gaussian teacher"
MEAN, STD = [1.0, -0.5], [0.6, 1.3]
VARIANTS = [("predictor only", {"corrector_weight": 0.0}), ("predictor + corrector (default 0.1)", {}),
            ("predictor + corrector 1.0", {"corrector_weight": 1.0}),
            ("default, path_fraction 0.5", {"path_fraction": 0.5})]


def spec(steps: int, threads: int, loss: dict[str, Any]) -> dict[str, Any]:
    return {"name": "freeflow_gaussian", "loss": {"kind": "freeflow", **loss},
            "teacher": {"kind": "gaussian", "mean": MEAN, "std": STD},
            "model": {"kind": "mlp", "width": 64, "depth": 3, "time_dim": 2},
            "optim": {"lr": 3e-3, "schedule": "cosine"},
            "train": {"steps": steps, "batch_size": 256, "seed": 0, "threads": threads, "device": "cpu",
                      "log_every": max(1, steps // 5)},
            "checkpoint": {"every": 0}, "log": {"tensorboard": False}}


def map_errors(run: Any) -> tuple[float, float]:
    """Relative RMS error of X_{0,1} and of the two-jump X_{1/2,1} o X_{0,1/2} against the exact map."""
    exact = GaussianFlowMap(run.interpolant, torch.tensor(MEAN), torch.tensor(STD))
    x0 = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = exact(x0, 0.0, 1.0)
        scale = (want - x0).norm(dim=1).pow(2).mean().sqrt()
        one = run.flow_map(x0, 0.0, 1.0)
        two = run.flow_map(run.flow_map(x0, 0.0, 0.5), 0.5, 1.0)
    rel = lambda got: float((got - want).norm(dim=1).pow(2).mean().sqrt() / scale)  # noqa: E731
    return rel(one), rel(two)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[300, 600, 1200])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load, wall = os.getloadavg()[0], time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="fmmkit-freeflow-"))
    rows = []
    for steps in args.budgets:
        for label, loss in VARIANTS:
            start = time.perf_counter()
            run = load_run(fmmkit.train(spec(steps, args.threads, loss), out=out / f"{steps}_{len(rows)}",
                                        progress=False, pictures=False))
            one, two = map_errors(run)
            rows.append((steps, label, one, two, time.perf_counter() - start))
            print(rows[-1], flush=True)
    lines = [
        f"Machine: 2-core CPU, no GPU, torch {torch.__version__}, {args.threads} torch thread(s), shared with other "
        f"jobs (1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). Reproduce: "
        f"`nice -n 5 .venv/bin/python benchmarks/freeflow_gaussian.py --budgets {' '.join(map(str, args.budgets))}` "
        f"({(time.perf_counter() - wall) / 60:.1f} min).",
        "",
        "Data-free spec (no [data]; the prior takes the teacher's shape), teacher = the exact velocity of "
        f"N({MEAN}, diag({STD})^2) (linear interpolant), MLP 64 x 3 (time_dim 2), Adam 3e-3 cosine, batch 256. "
        "Relative map error = RMS|X - X*| / RMS|X* - x0| on 20,000 fresh prior draws (1.00 for the "
        "zero-initialised model); two jumps = X_(1/2,1) o X_(0,1/2).",
        "",
        "| steps | FreeFlow variant | map error X_(0,1) | map error, two jumps | train (s) |",
        "|---|---|---|---|---|",
        *(f"| {s} | {label} | {one:.4f} | {two:.4f} | {sec:.0f} |" for s, label, one, two, sec in rows),
    ]
    body = "\n".join(lines)
    print(body)
    write_section(TITLE, body)


if __name__ == "__main__":
    main()
