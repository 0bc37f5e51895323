"""How sharp can the main job's one-step map be at its budget? (issue 13, goals 1 and 5)

The checkerboard's velocity is known in closed form (:class:`fmmkit.exact.BoxMixtureFlowMap`), so its
exact flow map X_{0,1} is an RK4 solve away. This script

1. scores the exact map itself (RK4, ``--ode-steps``) on the quickstart's eval noise: the share inside
   the squares and the energy distance (a check of the oracle: data scores 1.0 and ~0);
2. regresses the quickstart's network (the built-in ``checkerboard_lsd`` MLP: 4 x 256, raw times, the
   flow-map parameterisation X_{0,1}(x) = x + v_{0,1}(x)) directly onto (noise, exact end point) pairs
   with the quickstart's optimiser and budget (Adam, lr 1e-3, cosine with 100 warm-up steps, batch 1024,
   ``--steps`` steps), and scores its one step the same way.

(2) is the best one step any flow-map loss could give that network and budget, with a perfect teacher
and no self-distillation: if it stays below a bar, the bar is out of reach for the recipe, not the loss.

    nice -n 5 .venv/bin/python benchmarks/checkerboard_ceiling.py --steps 2000 4000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart_screen import score  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[2000], help="regression budgets (optimiser steps)")
    parser.add_argument("--pairs", type=int, default=100_000, help="(noise, exact end point) training pairs")
    parser.add_argument("--ode-steps", type=int, default=100, help="RK4 steps of the exact map")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fmmkit.cli.quickstart import FLOW_MAP_SPEC, QUICKSTART_OVERRIDES
    from fmmkit.exact import BoxMixtureFlowMap
    from fmmkit.registry import get_registry
    from fmmkit.spec import load_spec
    from fmmkit.spec.builtin import builtin_spec_path
    from fmmkit.training.build import build_pipeline

    spec = load_spec(builtin_spec_path(FLOW_MAP_SPEC), list(QUICKSTART_OVERRIDES))
    pipeline = build_pipeline(spec, get_registry())
    data = pipeline.data
    n, seed = spec.eval.num_samples, spec.eval.seed
    reference = data.sample(n, torch.Generator().manual_seed(seed)).x1
    eval_noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 1))  # Run.noise's draw
    exact = BoxMixtureFlowMap.checkerboard(data.config.scale, steps=args.ode_steps)
    start = time.perf_counter()
    rows: dict[str, dict[str, float]] = {f"exact map (RK4, {args.ode_steps} steps)": score(
        exact.flow_map(eval_noise, 0.0, 1.0).float(), reference, data)}
    x0 = torch.randn(args.pairs, 2, generator=torch.Generator().manual_seed(7))
    x1 = torch.cat([exact.flow_map(c, 0.0, 1.0).float() for c in x0.split(20_000)])
    print(f"exact pairs: {time.perf_counter() - start:.0f} s", flush=True)
    for steps in args.steps:
        torch.manual_seed(spec.train.seed)
        model = build_pipeline(spec, get_registry()).model
        opt = torch.optim.Adam(model.parameters(), lr=spec.optim.lr)
        warm = spec.optim.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (
            1 + math.cos(math.pi * min(k, steps) / steps)))
        g = torch.Generator().manual_seed(11)
        start = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(args.pairs, (spec.train.batch_size,), generator=g)
            zeros, ones = torch.zeros(len(idx)), torch.ones(len(idx))
            loss = (model(x0[idx], zeros, ones) - x1[idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            one = model(eval_noise, torch.zeros(n), torch.ones(n))
        rows[f"regressed one step, {steps} steps"] = {**score(one, reference, data),
                                                      "seconds": time.perf_counter() - start}
        print(rows, flush=True)
    print("| map | in squares | energy distance |")
    print("|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['in_sq']:.4f} | {r['ed']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
