"""The flow-map loss family side by side on the checkerboard (issue 4).

Every registered flow-map loss trains the same MLP on the same data with the same optimiser, batch and
number of steps (the distillation losses also get the flow-matching teacher trained with that budget).
Writes the section "The whole flow-map loss family, each checked against exact flow maps and measured
side by side" of benchmarks/RESULTS.md:

1. sample quality: checkerboard KL (100 x 100 bins, ``--kl-samples`` points) and energy distance
   (``--ed-samples`` points) of each flow map at 1, 2, 4, 8 steps, of the teacher ODE at matched NFE,
   and of Meta's ``flow_matching`` library (PyPI ``flow-matching``, installed here only for this
   benchmark, never a dependency of fmmkit) trained on the same data, network and budget and sampled
   with its own ``ODESolver`` at several NFE;
2. the cost of one training step of each loss relative to flow matching on the same batch, timed in
   one process, interleaved round-robin, median over rounds.

    nice -n 10 .venv/bin/python benchmarks/losses.py > /tmp/bench_losses.log 2>&1
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import fmmkit
from fmmkit.core import Batch, BuildContext, FlowMap
from fmmkit.registry import get_registry
from fmmkit.runs.run import Run, load_run
from fmmkit.spec import load_spec
from fmmkit.training.build import build_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

TITLE = "The whole flow-map loss family, each checked against exact flow maps and measured side by side"
#: MeanFlow as fmmkit configured it before issue 11 (uniform times, eps 1e-3 on the per-dimension mean); the
#: s = t rows now keep the pair's start time (official ``sample_tr``), which this row cannot undo
PRE_ISSUE_11_MEANFLOW: dict[str, Any] = {
    "times": {"distribution": "uniform", "diagonal_fraction": 0.75},
    "weighting": {"kind": "adaptive", "power": 1.0, "eps": 1e-3, "reduction": "mean"},
}
STEPS = (1, 2, 4, 8)


@dataclass
class Method:
    """One row group: a label, the registered loss kind and its config (beyond the defaults)."""

    label: str
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    teacher: bool = False
    #: model settings that differ from the common backbone (ablation rows; not in the step-cost table)
    model: dict[str, Any] = field(default_factory=dict)
    #: False for a data-free loss: its spec has no [data] table (FreeFlow)
    data: bool = True

    @property
    def sampler(self) -> str:
        """The registered sampler of the loss's k-step rows (``consistency`` for losses that learn X_{s,1} only)."""
        return get_registry().get("loss", self.kind).component.default_sampler


def methods(steps: int) -> list[Method]:
    """Every flow-map loss (and the forms the issue names), configured for a run of ``steps`` steps."""
    warmup = steps // 4
    return [
        Method("LMD", "lagrangian_distillation", teacher=True),
        Method("LMD semigradient", "lagrangian_distillation", {"semigradient": True}, teacher=True),
        Method("EMD", "eulerian_distillation", teacher=True),
        Method("EMD semigradient", "eulerian_distillation", {"semigradient": True}, teacher=True),
        Method("PFMM", "progressive_distillation", {"rounds": 4, "steps_per_round": max(1, steps // 5)}, teacher=True),
        Method("AYF-EMD", "ayf_eulerian", {"warmup_steps": warmup}, teacher=True),
        Method("AYF-LMD", "ayf_lagrangian", {"warmup_steps": warmup}, teacher=True),
        Method("sCM distillation", "consistency_distillation", {"warmup_steps": warmup}, teacher=True),
        Method("direct FMM", "direct_flow_map_matching"),
        Method("LSD", "lagrangian_self_distillation"),
        Method("ESD", "eulerian_self_distillation"),
        Method("PSD-U", "progressive_self_distillation", {"split": "uniform"}),
        Method("PSD-M", "progressive_self_distillation", {"split": "midpoint"}),
        Method("MeanFlow", "meanflow"),  # the official defaults (issue 11)
        Method("MeanFlow, pre-issue-11 defaults", "meanflow", PRE_ISSUE_11_MEANFLOW),
        Method("MeanFlow, 75% s != t", "meanflow", {"times": {"diagonal_fraction": 0.25}}),
        Method("iMF", "improved_meanflow"),
        Method("FreeFlow (no data)", "freeflow", {"path_fraction": 0.5}, teacher=True, data=False),
        Method("FreeFlow (no data), prior only", "freeflow", teacher=True, data=False),
        Method("ESD convex", "eulerian_self_distillation", {"stopgrad": "convex"}),
        Method("Shortcut", "shortcut"),  # the official defaults: EMA 0.999, clips +-4
        Method("sCM training", "consistency_training", {"warmup_steps": warmup}),
        # the default MLP time embedding (time_dim 64: frequencies 1 to 1000) against the common time_dim 2
        Method("AYF-EMD, time_dim 64", "ayf_eulerian", {"warmup_steps": warmup}, teacher=True, model={"time_dim": 64}),
        Method("LSD, time_dim 64", "lagrangian_self_distillation", model={"time_dim": 64}),
        Method("sCM training, time_dim 64", "consistency_training", {"warmup_steps": warmup}, model={"time_dim": 64}),
    ]


def base_spec(args: argparse.Namespace, name: str, loss: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"kind": "checkerboard"},
        "interpolant": {"kind": "linear"},
        "model": {"kind": "mlp", "width": args.width, "depth": args.depth, "time_dim": args.time_dim},
        "loss": loss,
        "optim": {"lr": args.lr, "schedule": "cosine", "warmup_steps": 100, "grad_clip": 1.0},
        "train": {"steps": args.steps, "batch_size": args.batch, "seed": 0, "log_every": max(1, args.steps // 10),
                  "threads": args.threads, "device": "cpu"},
        "checkpoint": {"every": 0},
        "log": {"tensorboard": False},
    }


def method_spec(args: argparse.Namespace, m: Method, teacher: Run) -> dict[str, Any]:
    """The run spec of one method: the common budget, its loss, its teacher, no [data] for a data-free loss."""
    spec = base_spec(args, m.kind, {"kind": m.kind, **m.config})
    spec["model"].update(m.model)
    if m.teacher:
        spec["teacher"] = {"run": str(teacher.path.resolve())}
    if not m.data:
        del spec["data"]
    return spec


# ---- metrics ------------------------------------------------------------------------------------

class Scorer:
    """Checkerboard KL and energy distance of samples, against fixed reference draws."""

    def __init__(self, run: Run, kl_samples: int, ed_samples: int) -> None:
        registry = get_registry()
        self.data = run.data
        self.kl, self.ed = (registry.build("metric", name, registry.get("metric", name).config(), BuildContext())
                            for name in ("histogram_kl", "energy_distance"))
        self.reference = run.data.sample(max(kl_samples, ed_samples), torch.Generator().manual_seed(1234)).x1.float()
        self.noise = torch.randn(kl_samples, 2, generator=torch.Generator().manual_seed(1235))
        self.ed_samples = ed_samples

    def __call__(self, samples: Tensor) -> tuple[float, float]:
        samples = samples.float().cpu()
        kl = float(self.kl(samples, self.reference, self.data))
        m = self.ed_samples
        return kl, float(self.ed(samples[:m], self.reference[:m], self.data))


@torch.no_grad()
def flow_map_samples(run: Run, x0: Tensor, k: int, kind: str = "flow_map") -> Tensor:
    """k steps of a registered flow-map sampler from noise: ``flow_map`` (k jumps X_{t_i, t_{i+1}}) or
    ``consistency`` (jump to data, re-noise through the interpolant)."""
    registry = get_registry()
    config = registry.get("sampler", kind).config(steps=k)
    sampler = registry.build("sampler", kind, config, BuildContext(interpolant=run.interpolant))
    return sampler(run.model, x0).x


@torch.no_grad()
def ode_samples(run: Run, x0: Tensor, kind: str, steps: int) -> tuple[Tensor, int]:
    sampler = run.sampler(kind, steps=steps)
    result = sampler(run.model, x0)
    return result.x, result.nfe


# ---- Meta's flow_matching ----------------------------------------------------------------------

def ensure_meta_flow_matching() -> str:
    """Import Meta's flow_matching, pip-installing it into this interpreter's environment if missing."""
    if importlib.util.find_spec("flow_matching") is None:
        print("installing flow-matching (benchmark only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "flow-matching"], check=True)
    from importlib.metadata import version

    return version("flow-matching")


def train_meta(args: argparse.Namespace) -> tuple[Any, float]:
    """The same MLP as a velocity u(x, t) = v_{t,t}(x), trained with flow_matching's path and MSE."""
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    from fmmkit.training.optim import make_optimizer, make_scheduler

    spec = load_spec(base_spec(args, "meta_flow_matching", {"kind": "flow_matching"}))
    torch.manual_seed(0)
    pipeline = build_pipeline(spec, device=torch.device("cpu"))
    model, data = pipeline.model, pipeline.data
    optimizer = make_optimizer(list(model.parameters()), spec.optim)
    scheduler = make_scheduler(optimizer, args.steps, spec.optim)
    path = AffineProbPath(scheduler=CondOTScheduler())
    gen = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    model.train()
    for _ in range(args.steps):
        x1 = data.sample(args.batch, gen).x1
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0])
        sample = path.sample(x_0=x0, x_1=x1, t=t)
        loss = (model.velocity(sample.x_t, t) - sample.dx_t).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optim.grad_clip)
        optimizer.step()
        scheduler.step()
    model.eval()
    return model, time.perf_counter() - start


def meta_rows(model: FlowMap, scorer: Scorer, x0: Tensor) -> list[tuple[str, int, float, float]]:
    """Meta's ODESolver on the trained velocity: Euler and midpoint at NFE 1..8, dopri5 (adaptive)."""
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    class Velocity(ModelWrapper):
        calls = 0

        def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
            Velocity.calls += 1
            return self.model.velocity(x, t.reshape(()).expand(x.shape[0]))

    solver = ODESolver(velocity_model=Velocity(model))
    rows = []
    grid = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        for method, stages, ks in [("euler", 1, STEPS), ("midpoint", 2, (1, 2, 4))]:
            for k in ks:
                Velocity.calls = 0
                x = solver.sample(x_init=x0, step_size=1.0 / k, method=method, time_grid=grid)
                rows.append((f"flow_matching ODESolver {method}, {k} step{'s' if k > 1 else ''}", Velocity.calls,
                             *scorer(x)))
        Velocity.calls = 0
        x = solver.sample(x_init=x0, step_size=None, method="dopri5", atol=1e-5, rtol=1e-5, time_grid=grid)
        rows.append(("flow_matching ODESolver dopri5 (tol 1e-5)", Velocity.calls, *scorer(x)))
    return rows


# ---- step cost -----------------------------------------------------------------------------------

def step_costs(args: argparse.Namespace, teacher: Run, rounds: int) -> dict[str, float]:
    """Median wall time (ms) of one optimiser step of each loss on one fixed batch, interleaved."""
    entries: list[tuple[str, Callable[[], None]]] = []
    chosen = [m for m in methods(args.steps) if not m.model and (not args.only or m.label in args.only)]
    all_methods = [Method("flow matching", "flow_matching"), *chosen]
    batch: Batch | None = None
    for m in all_methods:
        spec = method_spec(args, m, teacher)
        torch.manual_seed(0)
        pipeline = build_pipeline(load_spec(spec), device=torch.device("cpu"))
        if batch is None:
            batch = pipeline.data.sample(args.batch, torch.Generator().manual_seed(7))
        optimizer = torch.optim.Adam(list(pipeline.model.parameters()) + pipeline.loss.parameters(), lr=1e-4)

        def step(p: Any = pipeline, opt: torch.optim.Optimizer = optimizer, b: Batch = batch) -> None:
            out = p.loss(p.model, b, teacher=p.teacher, step=args.steps)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        step()  # warm-up (allocations, the frozen copies)
        entries.append((m.label, step))
    times: dict[str, list[float]] = {label: [] for label, _ in entries}
    for _ in range(rounds):
        for label, step in entries:
            start = time.perf_counter()
            for _ in range(3):
                step()
            times[label].append((time.perf_counter() - start) / 3 * 1000)
    return {label: statistics.median(v) for label, v in times.items()}


# ---- main -----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_losses")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--time-dim", type=int, default=2, help="MLP time_dim (2: one sinusoid per time)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--kl-samples", type=int, default=100_000)
    parser.add_argument("--ed-samples", type=int, default=10_000)
    parser.add_argument("--cost-rounds", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None, help="labels of the methods to run (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print the table without writing RESULTS.md")
    parser.add_argument("--no-meta", action="store_true", help="skip Meta's flow_matching rows (a subset run)")
    parser.add_argument("--title", default=TITLE, help="the RESULTS.md section to write (another one for a subset)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    meta_version = "" if args.no_meta else ensure_meta_flow_matching()

    start = time.perf_counter()
    teacher = load_run(fmmkit.train(base_spec(args, "teacher", {"kind": "flow_matching"}), out=out / "teacher",
                                    progress=False, pictures=False))
    train_seconds = {"flow matching": time.perf_counter() - start}
    scorer = Scorer(teacher, args.kl_samples, args.ed_samples)
    x0 = scorer.noise
    rows: list[tuple[str, str, int, float, float]] = []
    for kind, ks in [("euler", STEPS), ("midpoint", (1, 2, 4)), ("rk4", (2,))]:
        for k in ks:
            x, nfe = ode_samples(teacher, x0, kind, k)
            label = f"teacher ODE {kind}, {k} step{'s' if k > 1 else ''}"
            rows.append(("flow matching (teacher)", label, nfe, *scorer(x)))
    with torch.no_grad():
        result = teacher.sampler("dopri5")(teacher.model, x0)
    x, nfe = result.x, result.nfe
    rows.append(("flow matching (teacher)", "teacher ODE dopri5 (fmmkit)", nfe, *scorer(x)))
    print(f"teacher trained in {train_seconds['flow matching']:.0f} s, evaluated at {time.perf_counter() - wall:.0f} s",
          flush=True)

    for m in methods(args.steps):
        if args.only and m.label not in args.only:
            continue
        spec = method_spec(args, m, teacher)
        start = time.perf_counter()
        name = "".join(c if c.isalnum() else "_" for c in m.label)
        run = load_run(fmmkit.train(spec, out=out / name, progress=False, pictures=False))
        train_seconds[m.label] = time.perf_counter() - start
        for k in STEPS:
            label = "flow map" if m.sampler == "flow_map" else m.sampler
            x, sampler = flow_map_samples(run, x0, k, m.sampler), f"{label}, {k} step{'s' if k > 1 else ''}"
            rows.append((m.label, sampler, k, *scorer(x)))
        print(f"{m.label}: {train_seconds[m.label]:.0f} s, 1-step KL {rows[-4][3]:.3f} ED {rows[-4][4]:.4f}",
              flush=True)

    if not args.no_meta:
        start = time.perf_counter()
        meta_model, meta_train = train_meta(args)
        train_seconds["Meta flow_matching"] = meta_train
        rows += [(f"Meta flow_matching {meta_version}", label, nfe, kl, ed)
                 for label, nfe, kl, ed in meta_rows(meta_model, scorer, x0)]
        print(f"meta flow_matching done in {time.perf_counter() - start:.0f} s", flush=True)

    start = time.perf_counter()
    costs = step_costs(args, teacher, args.cost_rounds)
    print(f"step costs measured in {time.perf_counter() - start:.0f} s", flush=True)
    total = time.perf_counter() - wall
    body = report(args, rows, costs, train_seconds, total, meta_version)
    print(body)
    if not args.no_write:
        write_section(args.title, body)


PAPER_COST = {"LSD": "~1.4 (paper est.)", "ESD": "~1.4 (paper est.)", "PSD-U": "~1.5 (paper est.)",
              "PSD-M": "~1.5 (paper est.)"}


def report(args: argparse.Namespace, rows: list, costs: dict[str, float], train_seconds: dict[str, float],
           total: float, meta_version: str) -> str:
    command = ("nice -n 10 .venv/bin/python benchmarks/losses.py" +
               "".join(f" --{k.replace('_', '-')} {v}" for k, v in [("steps", args.steps), ("batch", args.batch),
                                                                      ("width", args.width), ("depth", args.depth),
                                                                      ("time_dim", args.time_dim), ("lr", args.lr),
                                                                      ("threads", args.threads),
                                                                      ("kl_samples", args.kl_samples),
                                                                      ("ed_samples", args.ed_samples),
                                                                      ("cost_rounds", args.cost_rounds)]))
    if args.only:
        command += " --only " + " ".join(f"'{label}'" for label in args.only)
    if args.no_meta:
        command += " --no-meta"
    if args.title != TITLE:
        command += f" --title '{args.title}'"
    lines = [
        f"Machine: 2-core CPU, no GPU, torch {torch.__version__}, {args.threads} torch thread(s); the CPU was shared "
        "with other jobs, so timings are noisy. "
        f"Reproduce: `{command}` ({total / 60:.1f} min wall in total).",
        "",
        f"Budget for every row: checkerboard, MLP {args.width} x {args.depth} with time_dim {args.time_dim} (fmmkit "
        f"`mlp`; time_dim 2 is one sinusoid per time, see below), Adam lr {args.lr} cosine "
        f"with 100 warm-up steps, grad clip 1, batch {args.batch}, {args.steps} steps, seed 0, linear interpolant. "
        "The distillation rows (LMD, EMD, PFMM, AYF, sCM distillation) distill the flow-matching teacher row, "
        "which itself took the same budget. Metrics on the same noise for every row: checkerboard KL "
        f"(100 x 100 bins, {args.kl_samples:,} samples; true samples score ~0.03 at 100k) and energy distance "
        f"({args.ed_samples:,} samples). sCM rows learn only X_(s,1): their k-step rows use the registered "
        "`consistency` sampler (jump to data, re-noise to the next time through the interpolant). "
        "FreeFlow rows read no data (no [data] table): every state comes from the prior pushed by the student. "
        + (f"Meta's library is PyPI `flow-matching` {meta_version}, installed only for this benchmark; it trains "
           "the same MLP as a velocity with its `AffineProbPath(CondOTScheduler())` and samples with its "
           "`ODESolver`. " if meta_version else "") +
        ("The rows marked time_dim 64 rerun "
         "three losses with the MLP's default time embedding (sinusoids of frequencies 1 to 1000) instead of the "
         "common time_dim 2 (one sinusoid of frequency 1 per time): a JVP in s or t multiplies each time feature "
         "by its frequency, which a semigradient target (AYF, sCM) does not damp."
         if any("time_dim 64" in m for m, *_ in rows) else ""),
        "",
        "| method | sampler | NFE | checkerboard KL | energy distance |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {s} | {nfe} | {kl:.3f} | {ed:.4f} |" for m, s, nfe, kl, ed in rows]
    fm = costs["flow matching"]
    lines += [
        "",
        f"Cost of one training step (forward, backward, Adam) on one batch of {args.batch}, median of "
        f"{args.cost_rounds} interleaved rounds of 3 steps, relative to flow matching ({fm:.1f} ms); training "
        "wall time of each row's run (same process, same budget).",
        "",
        "| method | ms / step | x flow matching | self-distillation paper | training run (s) |",
        "|---|---|---|---|---|",
    ]
    for label, ms in costs.items():
        seconds = train_seconds.get(label)
        run_s = f"{seconds:.0f}" if seconds is not None else "not trained"
        lines.append(f"| {label} | {ms:.1f} | {ms / fm:.2f} | {PAPER_COST.get(label, '')} | {run_s} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
