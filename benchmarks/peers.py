"""The peers' own 2D protocol (issue 13): Meta's flow_matching and fmmkit on the same seeds, data, net and budget.

The protocol is the one of Meta's ``flow_matching`` 2D example (examples/2d_flow_matching.ipynb of
facebookresearch/flow_matching, PyPI ``flow_matching`` 1.0.10): the checkerboard as that notebook
generates it (scaled by 1 / 0.45), an MLP of 4 hidden layers of 256 units, batch 4096, Adam 1e-3 with a
constant rate, 3000 steps, one torch thread. Every row is scored on 20,000 samples from the same fixed
noise against the same 20,000 reference points:

- ED: energy distance (fmmkit's ``energy_distance``, U-statistic); data scores ~0;
- in_sq: fraction of samples inside the occupied squares (fmmkit's ``in_support``); data scores 1.0.

Each system is trained once per seed; each table cell is the median over seeds (the per-seed values are
in the JSON). Training compute of a row = sum over the runs it needs (a distilled map also needs its
teacher) of steps x step cost, in units of the peer's 3000 flow-matching steps; step costs are measured
side by side in this process, interleaved round-robin, as the median over rounds of
(wall(n2 steps) - wall(n1 steps)) / (n2 - n1) of the real training loop (fmmkit: ``fmmkit.train`` on the
row's spec, so its fixed start-up cost cancels; the peer: the notebook's loop).

fmmkit rows are built-in specs (``fmmkit/specs/NAME.toml``) with the protocol's data scale, network size,
seed and thread count set, plus the entry's own ``KEY=VALUE`` overrides; steps and batch default to the
protocol's and may be overridden (the compute column counts them). Nothing is installed at run time:
the peer rows need ``pip install 'fmmkit[benchmarks]'`` (flow_matching 1.0.10) and are skipped with a
message when it is absent.

    nice -n 10 .venv/bin/python benchmarks/peers.py --jobs 2            # the default table, 3 seeds
    nice -n 10 .venv/bin/python benchmarks/peers.py --entry 'lsd-raw=checkerboard_lsd;model.time_embedding="identity"' \
        --no-peer --no-cost --no-write                                   # one experiment

An entry is ``LABEL=SPEC[;KEY=VALUE;...]``; SPEC is a built-in spec name or a TOML path; a spec with a
``[teacher]`` table distills the ``--teacher`` entry of the same seed. Results are cached per
(entry, seed) under ``--out`` keyed by the resolved spec, so re-running reuses finished cells.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

TITLE = "Issue 13, goals 1, 2, 5: the peers' 2D protocol, side by side"

SCALE = 1 / 0.45
WIDTH, DEPTH = 256, 4
BATCH, LR, STEPS = 4096, 1e-3, 3000
NUM_EVAL = 20_000
NOISE_SEED, REFERENCE_SEED = 1235, 1234
FLOW_MAP_STEPS = (1, 2, 4, 8)
PEER = "flow_matching 1.0.10"


# ---- the peer: Meta's flow_matching 2D example, as its notebook writes it ----------------------------

def peer_checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """The notebook's ``inf_train_gen``: the 8 black squares of a 4 x 4 board on [-2, 2]^2, divided by 0.45."""
    x1 = torch.rand(n, generator=generator) * 4 - 2
    x2_ = torch.rand(n, generator=generator) - torch.randint(high=2, size=(n,), generator=generator) * 2
    x2 = x2_ + (torch.floor(x1) % 2)
    return (1.0 * torch.cat([x1[:, None], x2[:, None]], dim=1) / 0.45).float()


class PeerMLP(nn.Module):
    """The notebook's velocity MLP: [x, t] -> 4 x (Linear, Swish) -> Linear, PyTorch's default init, raw t."""

    def __init__(self, input_dim: int = 2, hidden_dim: int = WIDTH) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(input_dim + 1, hidden_dim), nn.SiLU()]
        for _ in range(DEPTH - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.SiLU()]
        self.main = nn.Sequential(*layers, nn.Linear(hidden_dim, input_dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.reshape(-1, 1).float().expand(x.shape[0], 1)
        return self.main(torch.cat([x, t], dim=1))


def have_peer() -> bool:
    return importlib.util.find_spec("flow_matching") is not None


def train_peer(seed: int, steps: int, batch: int = BATCH) -> tuple[PeerMLP, float]:
    """The notebook's training loop (its AffineProbPath(CondOTScheduler()) and MSE), ``steps`` steps."""
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    torch.manual_seed(seed)
    vf = PeerMLP()
    path = AffineProbPath(scheduler=CondOTScheduler())
    optim = torch.optim.Adam(vf.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(steps):
        optim.zero_grad()
        x_1 = peer_checkerboard(batch)
        x_0 = torch.randn_like(x_1)
        t = torch.rand(x_1.shape[0])
        sample = path.sample(t=t, x_0=x_0, x_1=x_1)
        loss = torch.pow(vf(sample.x_t, sample.t) - sample.dx_t, 2).mean()
        loss.backward()
        optim.step()
    return vf, time.perf_counter() - start


def peer_samples(vf: PeerMLP, x0: Tensor) -> list[tuple[str, int, Tensor]]:
    """(sampler, NFE, samples) with the library's ODESolver: Euler 1 and 32 steps, midpoint 8 and 16, dopri5."""
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    class Counted(ModelWrapper):
        calls = 0

        def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
            Counted.calls += 1
            return self.model(x, t)

    solver = ODESolver(velocity_model=Counted(vf))
    grid = torch.tensor([0.0, 1.0])
    out = []
    with torch.no_grad():
        for method, k in [("euler", 1), ("euler", 32), ("midpoint", 8), ("midpoint", 16)]:
            Counted.calls = 0
            x = solver.sample(x_init=x0, step_size=1.0 / k, method=method, time_grid=grid)
            out.append((f"{method}({k})", Counted.calls, x))
        Counted.calls = 0
        x = solver.sample(x_init=x0, step_size=None, method="dopri5", atol=1e-5, rtol=1e-5, time_grid=grid)
        out.append(("dopri5(1e-5)", Counted.calls, x))
    return out


# ---- fmmkit rows: the real trainer on a built-in spec -----------------------------------------------

@dataclass
class Entry:
    """A fmmkit row group: a label, a built-in spec (or a path) and KEY=VALUE overrides."""

    label: str
    spec: str
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Entry:
        label, _, rest = text.partition("=")
        spec, *overrides = [p.strip() for p in rest.split(";") if p.strip()]
        return cls(label.strip(), spec, overrides)


def read_spec(name: str) -> dict[str, Any]:
    from fmmkit.spec.loader import read_toml

    if name.endswith(".toml"):
        return read_toml(name)
    with resources.as_file(resources.files("fmmkit") / "specs" / f"{name}.toml") as path:
        return read_toml(path)


def protocol_overrides(seed: int, steps: int = STEPS, batch: int = BATCH) -> list[str]:
    return [f"data.scale={SCALE!r}", f"model.width={WIDTH}", f"model.depth={DEPTH}", f"train.seed={seed}",
            "train.threads=1", 'train.device="cpu"', f"train.steps={steps}", f"train.batch_size={batch}",
            "checkpoint.every=0", "log.tensorboard=false", f"train.log_every={max(1, steps // 10)}"]


def resolved_spec(entry: Entry, seed: int, teacher_dir: Path | None, protocol_steps: int = STEPS,
                  steps: int | None = None, batch: int = BATCH) -> dict[str, Any]:
    """The entry's spec as a dict with every override applied (steps: replaces train.steps, for timing)."""
    from fmmkit.spec.loader import apply_overrides

    raw = read_spec(entry.spec)
    overrides = protocol_overrides(seed, protocol_steps, batch) + entry.overrides
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    if "teacher" in raw:
        assert teacher_dir is not None, f"entry {entry.label} distills a teacher: give --teacher"
        overrides.append(f'teacher.run="{teacher_dir.resolve()}"')
    return apply_overrides(raw, overrides)


def is_distillation(entry: Entry) -> bool:
    return "teacher" in read_spec(entry.spec)


def fmmkit_samples(run_dir: Path, screen: bool = False) -> list[tuple[str, int, Tensor]]:
    """Flow-map rows (1, 2, 4, 8 jumps) unless the run trains only a velocity, then ODE rows on its velocity
    (``screen``: only 1 and 2 jumps and the midpoint ODE)."""
    from fmmkit.runs import load_run

    run = load_run(run_dir)
    x0 = fixed_noise()
    trains_map = getattr(run.registry.get("loss", run.spec.loss.kind).component, "trains_flow_map", True)
    out = []
    with torch.no_grad():
        if trains_map:
            for k in (1, 2) if screen else FLOW_MAP_STEPS:
                result = run.sampler("flow_map", steps=k)(run.model, x0)
                out.append((f"flow map({k})", result.nfe, result.x))
        for kind, params in [("midpoint", {"steps": 16})] + ([] if screen else [("dopri5", {})]):
            result = run.sampler(kind, **params)(run.model, x0)
            label = f"ODE {kind}({params.get('steps', '1e-5')})"
            out.append((label, result.nfe, result.x))
    return out


# ---- scoring ----------------------------------------------------------------------------------------

def num_eval() -> int:
    """Samples per row: 20,000 (the protocol), or PEERS_NUM_EVAL for cheaper screening runs."""
    return int(os.environ.get("PEERS_NUM_EVAL", NUM_EVAL))


def fixed_noise() -> Tensor:
    return torch.randn(num_eval(), 2, generator=torch.Generator().manual_seed(NOISE_SEED))


def reference() -> Tensor:
    return peer_checkerboard(num_eval(), torch.Generator().manual_seed(REFERENCE_SEED))


def score(samples: Tensor) -> dict[str, float]:
    from fmmkit.data.toy2d import Checkerboard, CheckerboardConfig
    from fmmkit.metrics.in_support import InSupport
    from fmmkit.metrics.point_cloud import EnergyDistance

    board = Checkerboard(CheckerboardConfig(scale=SCALE))
    samples = samples.float()
    return {"ED": EnergyDistance()(samples, reference(), board), "in_sq": InSupport()(samples, reference(), board)}


# ---- cells: one system trained and scored for one seed (cached) -------------------------------------

def cell_key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) one system for one seed and score its rows; runs in a worker process."""
    torch.set_num_threads(1)
    path = Path(job["cell"])
    if path.is_file() and json.loads(path.read_text()).get("key") == job["key"]:
        return json.loads(path.read_text())
    if job["system"] == "peer":
        vf, seconds = train_peer(job["seed"], job["steps"], job["batch"])
        rows, steps = peer_samples(vf, fixed_noise()), job["steps"]
    else:
        import shutil

        import fmmkit

        run_dir = Path(job["run_dir"])
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.perf_counter()
        fmmkit.train(job["spec"], out=run_dir, progress=False, pictures=False)
        seconds = time.perf_counter() - start
        rows, steps = fmmkit_samples(run_dir, job.get("screen", False)), job["spec"]["train"]["steps"]
    result = {"key": job["key"], "label": job["label"], "seed": job["seed"], "train_seconds": seconds,
              "steps": steps, "batch": job.get("batch", BATCH),
              "rows": [{"sampler": s, "nfe": nfe, **score(x)} for s, nfe, x in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"  {job['label']} seed {job['seed']}: trained in {seconds:.0f} s; "
          + ", ".join(f"{r['sampler']} ED {r['ED']:.4f} in_sq {r['in_sq']:.3f}" for r in result["rows"][:2]), flush=True)
    return result


def run_cells(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [run_cell(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_cell, jobs))


# ---- step cost: interleaved rounds of the real training loops ---------------------------------------

def step_costs(entries: list[Entry], teacher_dirs: dict[str, Path], rounds: int, n1: int, n2: int,
               with_peer: bool, batch: int = BATCH) -> dict[str, float]:
    """Seconds per optimiser step of each system (median over interleaved rounds of a two-length difference)."""
    import shutil
    import tempfile

    import fmmkit

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="peers-cost-"))

    def fmmkit_timer(entry: Entry) -> Any:
        def timed(n: int) -> float:
            spec = resolved_spec(entry, 0, teacher_dirs.get(entry.label), steps=n, batch=batch)
            out = tmp / f"{entry.label}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            fmmkit.train(spec, out=out, progress=False, pictures=False)
            return time.perf_counter() - start
        return timed

    timers: dict[str, Any] = {}
    if with_peer:
        timers[PEER] = lambda n: train_peer(0, n, batch)[1]
    for entry in entries:
        timers[entry.label] = fmmkit_timer(entry)
    for timer in timers.values():  # warm-up: imports, allocator
        timer(n1)
    samples: dict[str, list[float]] = {label: [] for label in timers}
    for _ in range(rounds):
        for label, timer in timers.items():
            short, long = timer(n1), timer(n2)
            samples[label].append((long - short) / (n2 - n1))
    shutil.rmtree(tmp, ignore_errors=True)
    return {label: statistics.median(v) for label, v in samples.items()}


# ---- the table --------------------------------------------------------------------------------------

def medians(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per sampler: the median ED and in_sq over the cells (seeds) and the per-seed values."""
    out = []
    for i, row in enumerate(cells[0]["rows"]):
        eds = [c["rows"][i]["ED"] for c in cells]
        ins = [c["rows"][i]["in_sq"] for c in cells]
        out.append({"sampler": row["sampler"], "nfe": row["nfe"], "ED": statistics.median(eds),
                    "in_sq": statistics.median(ins), "ED_seeds": eds, "in_sq_seeds": ins})
    return out


def build_table(groups: dict[str, list[dict[str, Any]]], costs: dict[str, float], teacher_of: dict[str, str],
                peer_steps: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows = []
    compute: dict[str, float] = {}
    peer_cost = costs.get(PEER)
    for label, cells in groups.items():
        if peer_cost and label in costs:
            units = cells[0]["steps"] * costs[label]
            if label in teacher_of and teacher_of[label] in costs:
                units += groups[teacher_of[label]][0]["steps"] * costs[teacher_of[label]]
            compute[label] = units / (peer_steps * peer_cost)
        for r in medians(cells):
            rows.append({"system": label, **r, "compute": compute.get(label)})
    return rows, compute


def markdown(rows: list[dict[str, Any]], costs: dict[str, float], seeds: list[int]) -> str:
    lines = [f"| system | sampler | NFE | ED (median) | in_sq (median) | ED per seed {tuple(seeds)} | "
             "training compute (x peer) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = " / ".join(f"{v:.4f}" for v in r["ED_seeds"])
        comp = f"{r['compute']:.2f}" if r["compute"] is not None else "n/a"
        lines.append(f"| {r['system']} | {r['sampler']} | {r['nfe']} | {r['ED']:.4f} | {r['in_sq']:.3f} | "
                     f"{per_seed} | {comp} |")
    if costs:
        base = costs.get(PEER)
        lines += ["", "| system | ms / step | x peer step |", "|---|---|---|"]
        for label, c in costs.items():
            lines.append(f"| {label} | {1000 * c:.1f} | {c / base:.2f} |" if base else f"| {label} | {1000 * c:.1f} | n/a |")
    return "\n".join(lines)


#: the headline LSD row spends the protocol's compute on steps: batch 256 for 16,000 steps is 1.12x the peer's
#: 3000 steps of batch 4096 on one thread (RESULTS.md, "Issue 13, session 6"); the gap curriculum keeps it stable
DEFAULT_ENTRIES = [
    "fmmkit FM=checkerboard_teacher",
    "fmmkit LSD=checkerboard_lsd;train.batch_size=256;train.steps=16000",
    "fmmkit LMD=checkerboard_lmd",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--entry", action="append", default=None, help="LABEL=SPEC[;KEY=VALUE;...] (repeatable)")
    parser.add_argument("--teacher", default="fmmkit FM", help="label of the entry that distillation entries distill")
    parser.add_argument("--no-peer", action="store_true", help="skip Meta's flow_matching rows")
    parser.add_argument("--no-cost", action="store_true", help="skip the step-cost measurement")
    parser.add_argument("--cost-rounds", type=int, default=5)
    parser.add_argument("--cost-steps", type=int, nargs=2, default=[10, 40], metavar=("N1", "N2"))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for training (1 thread each; <= 2 here)")
    parser.add_argument("--screen", action="store_true", help="fmmkit rows: flow map 1 and 2 steps and one ODE only")
    parser.add_argument("--num-eval", type=int, default=NUM_EVAL, help="samples per row (20,000: the protocol)")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps of the protocol (3000)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size of the protocol (4096)")
    parser.add_argument("--out", default="runs/peers")
    parser.add_argument("--json", help="write the table as JSON here")
    parser.add_argument("--no-write", action="store_true", help="print the table without writing RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["PEERS_NUM_EVAL"] = str(args.num_eval)  # read by the worker processes too
    wall = time.perf_counter()
    load_start = os.getloadavg()
    out = Path(args.out)
    entries = [Entry.parse(e) for e in (args.entry or DEFAULT_ENTRIES)]
    by_label = {e.label: e for e in entries}
    with_peer = not args.no_peer and have_peer()
    if not args.no_peer and not with_peer:
        print(f"skipping {PEER}: the package is not installed (pip install 'fmmkit[benchmarks]')", file=sys.stderr)
    distilled = [e for e in entries if is_distillation(e)]
    if distilled and args.teacher not in by_label:
        teacher_entry = Entry.parse(f"{args.teacher}=checkerboard_teacher")
        entries.insert(0, teacher_entry)
        by_label[teacher_entry.label] = teacher_entry
    teacher_of = {e.label: args.teacher for e in distilled}

    def cell_dir(label: str) -> Path:
        return out / "".join(c if c.isalnum() or c in "-_" else "_" for c in label)

    def job(entry: Entry, seed: int) -> dict[str, Any]:
        teacher = cell_dir(args.teacher) / f"seed-{seed}" if entry.label in teacher_of else None
        spec = resolved_spec(entry, seed, teacher, args.steps, batch=args.batch)
        import fmmkit

        key = cell_key({"spec": spec, "fmmkit": fmmkit.__version__, "screen": args.screen, "num_eval": args.num_eval, "teacher_key": None if teacher is None else
                        json.loads((cell_dir(args.teacher) / f"seed-{seed}.json").read_text())["key"]})
        return {"system": "fmmkit", "label": entry.label, "seed": seed, "spec": spec, "key": key, "screen": args.screen,
                "run_dir": str(cell_dir(entry.label) / f"seed-{seed}"),
                "cell": str(cell_dir(entry.label) / f"seed-{seed}.json")}

    phase1 = [job(e, s) for e in entries if e.label not in teacher_of for s in args.seeds]
    if with_peer:
        phase1 = [{"system": "peer", "label": PEER, "seed": s, "steps": args.steps, "batch": args.batch,
                   "key": cell_key({"peer": PEER, "seed": s, "steps": args.steps, "batch": args.batch,
                                    "num_eval": args.num_eval}),
                   "cell": str(cell_dir(PEER) / f"seed-{s}.json")} for s in args.seeds] + phase1
    results = run_cells(phase1, args.jobs)
    results += run_cells([job(e, s) for e in entries if e.label in teacher_of for s in args.seeds], args.jobs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)

    costs: dict[str, float] = {}
    if not args.no_cost:
        print("measuring step costs (interleaved rounds) ...", flush=True)
        teacher_dirs = {label: cell_dir(t) / f"seed-{args.seeds[0]}" for label, t in teacher_of.items()}
        costs = step_costs(entries, teacher_dirs, args.cost_rounds, *args.cost_steps, with_peer, args.batch)
    rows, compute = build_table(groups, costs, teacher_of, args.steps)
    table = markdown(rows, costs, args.seeds)
    minutes = (time.perf_counter() - wall) / 60
    load_end = os.getloadavg()
    print(table)
    print(f"wall {minutes:.1f} min; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "costs": costs, "compute": compute, "seeds": args.seeds,
                                               "entries": [asdict(e) for e in entries]}, indent=1))
    if not args.no_write:
        command = " ".join(["nice -n 10 .venv/bin/python benchmarks/peers.py", *sys.argv[1:]])
        write_section(TITLE, f"Command: `{command}` "
                      f"({minutes:.0f} min wall, load average {load_start[0]:.1f} -> {load_end[0]:.1f}).\n\n{table}")


if __name__ == "__main__":
    main()
