"""Screen recipe changes on the main job's own budget (issue 13, goals 1 and 5).

Each variant is the quickstart run (the built-in ``checkerboard_lsd`` spec with
``fmmkit.cli.quickstart.QUICKSTART_OVERRIDES``) plus the variant's ``KEY=VALUE`` overrides, trained by
the real trainer, then scored like the quickstart's table on 20,000 samples from the eval noise: the
share of samples inside the squares (``in_support``) and the energy distance to 20,000 data points,
for the flow map at 1 and 2 steps and the midpoint(16) ODE of the run's own velocity v_{t,t}.
Training seconds come from run.json (one torch thread each unless a variant sets ``train.threads``).

    nice -n 5 .venv/bin/python benchmarks/quickstart_screen.py --jobs 2 --out runs/qs_screen \\
        --variant 'base=' --variant 'anchor 0.5=loss.times.anchor_fraction=0.5'

A variant is ``LABEL=KEY=VALUE;KEY=VALUE`` (empty after the first ``=``: the quickstart as is); results
are cached per label under ``--out`` (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch


def parse_variant(text: str) -> tuple[str, list[str]]:
    label, _, rest = text.partition("=")
    return label.strip(), [p.strip() for p in rest.split(";") if p.strip()]


def score(x: torch.Tensor, reference: torch.Tensor, data: Any) -> dict[str, float]:
    """The screen's two scores of samples x: the share inside the squares and the energy distance."""
    from fmmkit.metrics.in_support import InSupport
    from fmmkit.metrics.point_cloud import EnergyDistance

    return {"in_sq": InSupport()(x, reference, data), "ed": EnergyDistance()(x, reference)}


def train_and_score(label: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """Train one variant (unless finished) and score it; returns the JSON row."""
    from fmmkit.cli.quickstart import FLOW_MAP_SPEC, QUICKSTART_OVERRIDES
    from fmmkit.runs.run import load_run
    from fmmkit.spec.builtin import builtin_spec_path
    from fmmkit.training.loop import train

    torch.set_num_threads(1)
    run_dir = out / label.replace(" ", "_").replace("/", "_")
    cached = run_dir / "screen.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    train(builtin_spec_path(FLOW_MAP_SPEC), out=run_dir, overrides=[*QUICKSTART_OVERRIDES, *overrides],
          progress=False, overwrite=True, pictures=False)
    run = load_run(run_dir)
    n, seed = run.spec.eval.num_samples, run.spec.eval.seed
    reference = run.data.sample(n, torch.Generator().manual_seed(seed)).x1
    row: dict[str, Any] = {"label": label, "overrides": overrides,
                           "seconds": json.loads((run_dir / "run.json").read_text())["seconds"]}
    for name, kwargs in (("1 step", {"steps": 1}), ("2 steps", {"steps": 2}),
                         ("ODE midpoint(16)", {"steps": 16, "solver": "midpoint"})):
        x = run.sample(n, seed=seed + 1, **kwargs)
        row[name] = score(x, reference, run.data)
    cached.write_text(json.dumps(row, indent=1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="LABEL=KEY=VALUE;... (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/qs_screen"))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    args.out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(train_and_score, [v[0] for v in variants], [v[1] for v in variants],
                             [args.out] * len(variants)))
    print("| variant | train s | 1 step in_sq | 1 step ED | 2 steps in_sq | 2 steps ED | ODE in_sq | ODE ED |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]['in_sq']:.3f} | {r[k]['ed']:.4f}" for k in ("1 step", "2 steps", "ODE midpoint(16)")]
        print(f"| {r['label']} | {r['seconds']:.0f} | " + " | ".join(cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
