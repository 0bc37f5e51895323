"""Class-conditional 2D flow maps, each one model sampled at several guidance scales (variable guidance, issue 11).

Trains each of the class-conditional specs ``examples/checkerboard_guided_lsd.toml`` (LSD) and
``examples/checkerboard_guided_imf.toml`` (iMF) (labels = the 8 squares of the checkerboard; the guidance
scale w drawn per sample from [1, 4] and given to the model) once, then samples the *same* model at
w = 1, 1.5, 2, 3, 4 (interval [0, 1]) in 1 and 4 steps and scores, per scale, with samples drawn for
uniformly random labels:

- inside: the share of samples that land inside their own label's square (guidance sharpens the
  conditional, so this rises with w);
- spread: the RMS distance of the samples to their square's centre (falls with w: guidance
  concentrates each class; the data's own value is sqrt(1/6) = 0.408 for a unit square);
- energy distance between the samples and fresh data with the same labels (class-conditional; w = 1 is
  the learned conditional law, higher w trades it for sharpness).

and the same scores of the *exact* guided flow (closed-form checkerboard velocities integrated by RK4), the
reference every sampled row should match.

Writes the section "Variable guidance: one model, several guidance scales" of RESULTS.md.

    nice -n 10 .venv/bin/python benchmarks/guidance.py [--steps 4000] [--threads 1] [--jobs 2] [--spec PATH ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import fmmkit
from fmmkit.core import BuildContext
from fmmkit.core.conditioning import condition
from fmmkit.data.toy2d import Checkerboard
from fmmkit.exact import BoxMixtureFlowMap
from fmmkit.registry import get_registry
from fmmkit.runs.run import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPECS = (ROOT / "examples/checkerboard_guided_lsd.toml", ROOT / "examples/checkerboard_guided_imf.toml")
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


def exact_guided_samples(n: int, w: float, scale: float, steps: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact guided flow's samples: RK4 (``steps`` steps, float64) of b^w = b + w (b_k - b) from noise and labels
    drawn as :func:`sample` draws them, b the checkerboard's exact velocity and b_k that of its square k alone
    (:class:`fmmkit.exact.BoxMixtureFlowMap`): what a guided one-step map should reproduce."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 8, (n,), generator=g)
    x = torch.randn(n, 2, generator=g).double()
    corners = Checkerboard.CORNERS.double() * scale
    board = BoxMixtureFlowMap.checkerboard(scale)
    squares = [BoxMixtureFlowMap(corners[k:k + 1], corners[k:k + 1] + scale) for k in range(8)]

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        b, own = board.velocity(z, t), torch.empty_like(z)
        for k, square in enumerate(squares):
            rows = labels == k
            own[rows] = square.velocity(z[rows], t)
        return b + w * (own - b)

    h = 1.0 / steps
    for i in range(steps):
        t = i * h
        k1 = velocity(x, t)
        k2 = velocity(x + h / 2 * k1, t + h / 2)
        k3 = velocity(x + h / 2 * k2, t + h / 2)
        k4 = velocity(x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x.float(), labels


def train_run(spec: Path, out: Path, overrides: list[str]) -> tuple[Path, float, bool]:
    """Train ``spec`` into ``out`` unless it already holds a finished run; (run dir, its training seconds, reused)."""
    reused = (out / "model.safetensors").exists()
    if not reused:
        fmmkit.train(str(spec), out=out, overrides=overrides, progress=False, pictures=False)
    return out, float(json.loads((out / "run.json").read_text())["seconds"]), reused


def sweep(run_dir: Path, args: argparse.Namespace, exact: bool) -> list[str]:
    """The table rows of one trained run: every (steps, w), the data's own row and, with ``exact``, the exact
    guided flow's rows."""
    torch.set_num_threads(args.threads)
    run = load_run(run_dir)
    rows = []
    for steps in STEPS:
        for w in SCALES:
            x, labels = sample(run, args.samples, steps, w)
            s = scores(run, x, labels, args.ed_samples)
            rows.append(f"| {steps} | {w:g} | {s['inside']:.3f} | {s['spread']:.3f} | {s['energy_distance']:.4f} |")
    data = run.data.sample(args.samples, torch.Generator().manual_seed(5))
    floor = scores(run, data.x1, data.y, args.ed_samples)
    rows.append(f"| data | - | {floor['inside']:.3f} | {floor['spread']:.3f} | {floor['energy_distance']:.4f} |")
    if exact:
        for w in SCALES:
            x, labels = exact_guided_samples(args.exact_samples, w, run.data.config.scale)
            s = scores(run, x, labels, args.ed_samples)
            rows.append(f"| exact guided flow | {w:g} | {s['inside']:.3f} | {s['spread']:.3f} | "
                        f"{s['energy_distance']:.4f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, action="append",
                        help="a class-conditional checkerboard spec trained with [loss.guidance] scale = [lo, hi] "
                             "(repeatable; default: the guided LSD and iMF examples)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_guidance"),
                        help="the runs' folder: one run per spec, named after the spec (finished runs are reused)")
    parser.add_argument("--steps", type=int, default=4000, help="train.steps of the runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (one process each)")
    parser.add_argument("--samples", type=int, default=40_000)
    parser.add_argument("--ed-samples", type=int, default=2000, help="points per class for the energy distance")
    parser.add_argument("--exact-samples", type=int, default=16_000, help="samples of the exact guided flow per w")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a spec override for every trained run (repeatable), e.g. train.seed=1")
    parser.add_argument("--no-write", action="store_true", help="print the tables without writing RESULTS.md")
    args = parser.parse_args()
    specs = args.spec or list(SPECS)
    load_start, wall = os.getloadavg()[0], time.perf_counter()
    overrides = [f"train.steps={args.steps}", f"train.threads={args.threads}", "train.device=\"cpu\"", *args.set]
    outs = [args.out / spec.stem for spec in specs]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        trained = list(pool.map(train_run, specs, outs, [overrides] * len(specs)))
    tables = []
    for k, (spec, (run_dir, seconds, reused)) in enumerate(zip(specs, trained)):
        last = k == len(specs) - 1  # the exact guided flow's rows once, under the last table
        tables += ["", f"`examples/{spec.name}` (training {seconds:.0f} s{', a finished run reused' if reused else ''}):",
                   "", "| steps | guidance w | inside own square | spread | class-conditional energy distance |",
                   "|---|---|---|---|---|", *sweep(run_dir, args, exact=last and args.exact_samples > 0)]
    lines = [
        f"Machine: 2-core CPU, no GPU, torch {torch.__version__}, {args.threads} torch thread(s) per run, {args.jobs} "
        f"run(s) at once (1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). "
        f"Reproduce: `nice -n 5 .venv/bin/python benchmarks/guidance.py --steps {args.steps} --threads {args.threads} "
        f"--jobs {args.jobs}` ({(time.perf_counter() - wall) / 60:.1f} min in total).",
        "",
        f"Each model is trained once ({args.steps} steps of batch 1024, MLP 256 x 4, labels = the 8 squares) with the "
        "guidance scale w drawn per sample from [1, 4] as an input of the network, and sampled here at each w with "
        f"the interval [0, 1], {args.samples:,} samples of uniformly random labels per row. inside: share of "
        "samples in their own label's square; spread: RMS distance to the square's centre; energy distance: to "
        f"data of the same label, mean over the 8 labels ({args.ed_samples:,} points per label). The exact guided "
        "flow rows integrate b^w = b + w (b_k - b) of the checkerboard's closed-form velocities (b of the board, b_k "
        f"of square k alone; RK4, 200 steps, {args.exact_samples:,} samples): what each guided sample should match.",
        *tables,
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
