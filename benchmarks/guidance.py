"""One class-conditional 2D flow map sampled at several guidance scales (variable guidance, issue 11).

Trains ``examples/checkerboard_guided_imf.toml`` (iMF; labels = the 8 squares of the checkerboard; the
guidance scale w drawn per sample from [1, 4] and given to the model, with a random guidance interval)
once, then samples the *same* model at w = 1, 1.5, 2, 3, 4 (interval [0, 1]) in 1 and 4 steps and
scores, per scale, with samples drawn for uniformly random labels:

- inside: the share of samples that land inside their own label's square (guidance sharpens the
  conditional, so this rises with w);
- spread: the RMS distance of the samples to their square's centre (falls with w: guidance
  concentrates each class; the data's own value is sqrt(1/6) = 0.408 for a unit square);
- energy distance between the samples and fresh data with the same labels (class-conditional; w = 1 is
  the learned conditional law, higher w trades it for sharpness).

Writes the section "Variable guidance: one model, several guidance scales" of RESULTS.md.

    nice -n 10 .venv/bin/python benchmarks/guidance.py [--steps 4000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import fmmkit
from fmmkit.core import BuildContext
from fmmkit.core.conditioning import condition
from fmmkit.data.toy2d import Checkerboard
from fmmkit.registry import get_registry
from fmmkit.runs.run import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Variable guidance: one model, several guidance scales"
SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
STEPS = (1, 4)


def sample(run, n: int, steps: int, w: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """n samples of uniformly random labels at guidance w (interval [0, 1]) in ``steps`` flow-map jumps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 8, (n,), generator=g)
    x0 = torch.randn(n, 2, generator=g)
    registry = get_registry()
    sampler = registry.build("sampler", "flow_map", registry.get("sampler", "flow_map").config(steps=steps),
                             BuildContext(interpolant=run.interpolant))
    with torch.no_grad():
        return sampler(run.model, x0, condition(labels, w)).x, labels


def scores(run, x: torch.Tensor, labels: torch.Tensor, ed_samples: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """inside, spread and class-conditional energy distance of samples x with labels."""
    registry = get_registry()
    ed = registry.build("metric", "energy_distance", registry.get("metric", "energy_distance").config(), BuildContext())
    scale = run.data.config.scale
    corner = Checkerboard.CORNERS[labels] * scale
    u = (x - corner) / scale
    inside = ((u >= 0) & (u < 1)).all(dim=1).double().mean()
    spread = ((x - corner - scale / 2) ** 2).sum(dim=1).mean().sqrt()
    reference = run.data.sample(4 * len(x), torch.Generator().manual_seed(77))
    per_class = []
    for k in range(8):
        got, want = x[labels == k][:ed_samples], reference.x1[reference.y == k][:ed_samples]
        per_class.append(float(ed(got, want, run.data)))
    return {"inside": float(inside), "spread": float(spread), "energy_distance": sum(per_class) / 8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained checkerboard_guided_imf run (skip training)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_guidance"))
    parser.add_argument("--steps", type=int, default=4000, help="train.steps of the run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=40_000)
    parser.add_argument("--ed-samples", type=int, default=2000, help="points per class for the energy distance")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start, wall = os.getloadavg()[0], time.perf_counter()
    spec = ROOT / "examples/checkerboard_guided_imf.toml"
    overrides = [f"train.steps={args.steps}", f"train.threads={args.threads}", "train.device=\"cpu\""]
    if args.run is None:
        run_dir = fmmkit.train(str(spec), out=args.out, overrides=overrides, progress=False, pictures=False)
    else:
        run_dir = args.run
    run = load_run(run_dir)
    train_s = time.perf_counter() - wall
    rows = []
    for steps in STEPS:
        for w in SCALES:
            x, labels = sample(run, args.samples, steps, w)
            rows.append((steps, w, scores(run, x, labels, args.ed_samples)))
    data = run.data.sample(args.samples, torch.Generator().manual_seed(5))
    floor = scores(run, data.x1, data.y, args.ed_samples)
    lines = [
        f"Machine: 2-core CPU, no GPU, torch {torch.__version__}, {args.threads} torch thread(s), shared with other "
        f"jobs (1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). "
        f"Reproduce: `nice -n 5 .venv/bin/python benchmarks/guidance.py --steps {args.steps} --threads {args.threads}` "
        f"(training {train_s:.0f} s{'' if args.run is None else ', reused run'}; "
        f"{(time.perf_counter() - wall) / 60:.1f} min in total).",
        "",
        "One model: `examples/checkerboard_guided_imf.toml` (iMF, MLP 256 x 4, labels = the 8 squares, "
        f"{args.steps} steps, batch 1024), trained once with the guidance scale w drawn per sample from "
        "[1, 4] (and a random guidance interval) as an input of the network; sampled here at each w with the "
        f"interval [0, 1], {args.samples:,} samples of uniformly random labels per row. inside: share of samples "
        "in their own label's square; spread: RMS distance to the square's centre; energy distance: to data of "
        f"the same label, mean over the 8 labels ({args.ed_samples:,} points per label).",
        "",
        "| steps | guidance w | inside own square | spread | class-conditional energy distance |",
        "|---|---|---|---|---|",
        *(f"| {k} | {w:g} | {s['inside']:.3f} | {s['spread']:.3f} | {s['energy_distance']:.4f} |" for k, w, s in rows),
        f"| data | - | {floor['inside']:.3f} | {floor['spread']:.3f} | {floor['energy_distance']:.4f} |",
    ]
    body = "\n".join(lines)
    print(body)
    write_section(TITLE, body)


if __name__ == "__main__":
    main()
