"""Issue 13, goal 2: a built-in recipe trained from samples of an 8-D Gaussian, against the exact flow map.

The data table of ``benchmarks/gaussian8d_lsd.toml`` (N(m, diag(std^2)) in 8 dimensions, std 0.3 to 2.0,
given to the trainer as a fixed set of 100,000 samples) replaces the data of a built-in spec
(``--spec``, default ``checkerboard_lsd``); the rest of the recipe is the spec's own. After training,
against the population's exact map X*_{s,t}(x) = mu_t + sqrt(S_t / S_s)(x - mu_s) (``fmmkit.exact``):

- map error: RMS over 4096 forward pairs s <= t (uniform on the triangle), points x = I_s and coordinates
  of X_{s,t}(x) - X*_{s,t}(x), divided by the RMS of the exact displacement X*_{s,t}(x) - x;
- one-step std: per-dimension standard deviation of 20,000 one-step samples X_{0,1}(x0) over the true
  std; the table gives the worst |ratio - 1| over dimensions (the bar: <= 0.05) and the range;
- in_support: the share of one-step samples in the population's 0.99 ellipsoid (data: 0.99).

Median over seeds. Each seed is one ``fmmkit.train`` run (1 torch thread).

    nice -n 10 .venv/bin/python benchmarks/gaussian8d.py --seeds 0 1 2 [--spec checkerboard_lsd] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import read_spec  # noqa: E402

DATA_SPEC = ROOT / "benchmarks" / "gaussian8d_lsd.toml"


def spec_for(name: str, seed: int, steps: int, overrides: list[str]) -> dict[str, Any]:
    """The built-in spec ``name`` with the 8-D Gaussian data, ``steps`` steps, seed, 1 thread, then ``overrides``."""
    from fmmkit.spec.loader import apply_overrides, read_toml

    raw = read_spec(name)
    raw["data"] = read_toml(DATA_SPEC)["data"]
    raw["eval"] = {"metrics": ["energy_distance", "in_support"]}
    base = [f"train.steps={steps}", f"train.seed={seed}", "train.threads=1", 'train.device="cpu"',
            "checkpoint.every=0", "log.tensorboard=false"]
    return apply_overrides(raw, base + overrides)


@torch.no_grad()
def measure(run_dir: Path) -> dict[str, float]:
    from fmmkit.metrics.in_support import InSupport
    from fmmkit.runs import load_run
    from fmmkit.verification.gaussian_fit import gaussian_fit

    run = load_run(run_dir)
    exact = run.data.exact_flow_map(run.interpolant)
    fit = gaussian_fit(run.model, exact, run.interpolant)
    z = torch.randn(20_000, 8, generator=torch.Generator().manual_seed(1))
    one = run.model(z, 0.0, 1.0)
    return {"map_error": fit.map_error, "std_worst": fit.std_worst, "std_min": float(fit.std_ratio.min()),
            "std_max": float(fit.std_ratio.max()), "mean_err_std": fit.mean_error,
            "in_support": InSupport()(one.float(), one.float(), run.data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="checkerboard_lsd")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/gaussian8d")
    parser.add_argument("--json", help="append the result as a JSON line here")
    args = parser.parse_args()
    import fmmkit

    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed-{seed}"
        start = time.perf_counter()
        fmmkit.train(spec_for(args.spec, seed, args.steps, args.overrides), out=out, overwrite=True,
                     progress=False, pictures=False)
        m = measure(out)
        m["seconds"] = time.perf_counter() - start
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()), flush=True)
        results.append(m)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    line = {"spec": args.spec, "steps": args.steps, "overrides": args.overrides, "seeds": args.seeds,
            "median": med, "per_seed": results}
    print("median: " + ", ".join(f"{k} {v:.4f}" for k, v in med.items()))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
