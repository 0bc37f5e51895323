"""Issue 13 goal 1, root cause: can the backbone represent the one-step map at all?

Supervised regression of X_{0,1} on (noise, ODE end point) pairs of a trained run's own velocity
(midpoint, 16 steps): an upper bound for what any flow-map loss can reach with that network and budget.
If the regressed map scores like the ODE, the blur of self-distillation is the loss's, not the network's.

    nice -n 5 .venv/bin/python benchmarks/map_capacity.py RUN_DIR [--steps 2000] [--set model.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import fixed_noise, score  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="model.KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from fmmkit.core import FlowMap
    from fmmkit.nets.mlp import MLP, MLPConfig
    from fmmkit.runs import load_run

    run = load_run(args.run_dir)
    with torch.no_grad():
        z = torch.randn(args.pairs, 2, generator=torch.Generator().manual_seed(7))
        ode = run.sampler("midpoint", steps=16)
        target = torch.cat([ode(run.model, c).x for c in z.split(20_000)])
        x0 = fixed_noise()
        print("ODE midpoint(16) on the fixed noise:", score(ode(run.model, x0).x), flush=True)
    import ast

    import attrs

    base = run.spec.model.config  # the run's MLPConfig
    for item in args.overrides:
        key, _, value = item.removeprefix("model.").partition("=")
        base = attrs.evolve(base, **{key: type(getattr(base, key))(ast.literal_eval(value))})
    torch.manual_seed(0)
    net = FlowMap(MLP(base, (2,)))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        idx = torch.randint(0, args.pairs, (args.batch,), generator=g)
        loss = (net(z[idx], 0.0, 1.0) - target[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        print(f"regressed map ({base}), {args.steps} steps in {time.perf_counter() - start:.0f} s, loss {float(loss):.4f}:",
              score(net(x0, 0.0, 1.0)), "| the run's own one step:", score(run.model(x0, 0.0, 1.0)), flush=True)


if __name__ == "__main__":
    main()
