"""Cost and peak memory of one training step of each loss, relative to flow matching (issue 13, goals 3 and 7).

Time: fmmkit's real trainer (``fmmkit.train``: data, loss, backward, gradient norm, clipping, Adam,
logging) runs each loss for ``--steps`` and for ``--steps // 4`` steps; the difference over the
difference in steps is the cost of a step without set-up or warm-up, in process CPU time (one torch
thread: steadier than wall time on a shared machine, where waiting for a core inflates wall time)
and in wall time. Rounds are
interleaved (every loss once per round, and with ``--tree A --tree B`` each source tree once per
round, so both see the same machine load); a figure is the median over rounds, and the ratio to
flow matching is taken within each round before the median.

Memory (CPU, no caching allocator to ask): each loss in a fresh subprocess,
- "step peak": the largest amount of tensor memory live during one training step above what was live
  when the step began (loss, backward, Adam), from torch.profiler's allocation events
  (``profile_memory=True``): the activations, saved tensors and gradients of the step;
- "RSS peak": the process's peak resident set size (``ru_maxrss``) during a short ``fmmkit.train`` run
  minus the resident size just before it (includes allocator slack; a cross-check).

Settings: ``peer`` (Meta flow_matching's 2D example: checkerboard scaled by 1/0.45, MLP 4 x 256,
batch 4096, Adam 1e-3 constant, one torch thread), ``small`` (the MLP of benchmarks/losses.py:
128 x 4, time_dim 2, batch 512), ``digits`` (the digits UNet of the built-in digits_teacher spec, batch 64).

    nice -n 5 .venv/bin/python benchmarks/step_cost.py --settings peer small digits --rounds 5
    nice -n 5 .venv/bin/python benchmarks/step_cost.py --tree /tmp/old_checkout --tree . --no-write  # before / after
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TITLE = "Step cost and peak memory of each loss relative to flow matching"

#: (label, registered loss kind, loss config); rows whose kind is not registered are skipped
LOSSES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("flow matching", "flow_matching", {}),
    ("LSD", "lagrangian_self_distillation", {}),
    #: the loss as the built-in checkerboard_lsd spec configures it (60% of the batch on the diagonal, the stable
    #: target, logit-normal velocity times, the gap curriculum): what a user of that spec pays per step
    ("LSD (checkerboard_lsd spec)", "lagrangian_self_distillation", {"from_spec": "checkerboard_lsd"}),
    ("PSD-U", "progressive_self_distillation", {}),
    ("MeanFlow", "meanflow", {}),
    ("iMF", "improved_meanflow", {}),
    ("LMD", "lagrangian_distillation", {}),
    ("EMD", "eulerian_distillation", {}),
)
TEACHER_KINDS = ("lagrangian_distillation", "eulerian_distillation")
#: issue 13's bars (x flow matching) on the peer protocol; the small MLP has its own bar for LSD
BARS = {"peer": {"LSD": 1.3, "PSD-U": 1.15, "MeanFlow": 1.6, "iMF": 1.6, "LMD": 2.0, "EMD": 2.0},
        "small": {"LSD": 1.6}}
SETTINGS = ("peer", "small", "digits")


def setting_spec(setting: str, kind: str, config: dict[str, Any], steps: int, log_every: int,
                 teacher: Path | None) -> dict[str, Any]:
    """The spec of one timed run."""
    if setting == "digits":
        import tomllib

        from fmmkit.spec.builtin import builtin_spec_path

        spec = tomllib.loads(builtin_spec_path("digits_teacher").read_text())
        spec.pop("eval", None)
        spec.pop("sample", None)
        spec["train"].update({"threads": 1, "device": "cpu", "steps": steps, "log_every": log_every})
    else:
        peer = setting == "peer"
        spec = {
            "data": {"kind": "checkerboard", "scale": 1 / 0.45 if peer else 1.0},
            "interpolant": {"kind": "linear"},
            "model": {"kind": "mlp", "width": 256, "depth": 4} if peer else
                     {"kind": "mlp", "width": 128, "depth": 4, "time_dim": 2},
            "optim": {"lr": 1e-3} if peer else {"lr": 2e-3, "schedule": "cosine", "warmup_steps": 100, "grad_clip": 1.0},
            "train": {"steps": steps, "batch_size": 4096 if peer else 512, "seed": 0, "threads": 1, "device": "cpu",
                      "log_every": log_every},
        }
    spec.update({"name": f"step_cost_{setting}_{kind}", "loss": loss_table(kind, config),
                 "checkpoint": {"every": 0}, "log": {"tensorboard": False},
                 "compile": {"enabled": False}})  # eager steps (compiled ones: benchmarks/compile_gain.py)
    if teacher is not None:
        spec["teacher"] = {"run": str(teacher)}
    return spec


def loss_table(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """The ``[loss]`` table of a row: ``{"from_spec": NAME}`` takes the built-in spec NAME's table as it is."""
    if "from_spec" in config:
        from fmmkit.spec.builtin import builtin_spec_path
        from fmmkit.spec.loader import read_toml

        table = read_toml(builtin_spec_path(config["from_spec"]))["loss"]
        assert table["kind"] == kind, f"spec {config['from_spec']} trains {table['kind']}, not {kind}"
        return table
    return {"kind": kind, **config}


def registered_losses() -> list[tuple[str, str, dict[str, Any]]]:
    """The rows of LOSSES whose kind is registered (and named by ``FMMKIT_STEP_COST_ONLY``, if set)."""
    from fmmkit.registry import get_registry

    names = set(get_registry().names("loss"))
    only = [label for label in os.environ.get("FMMKIT_STEP_COST_ONLY", "").split(",") if label]
    return [row for row in LOSSES if row[1] in names and (not only or row[0] in only)]


def teacher_run(setting: str, cache: Path) -> Path:
    """A flow-matching run of the setting's network (its quality is irrelevant to the cost)."""
    import fmmkit

    out = cache / f"teacher_{setting}"
    if not (out / "run.json").exists():
        fmmkit.train(setting_spec(setting, "flow_matching", {}, 20, 10, None), out=out, progress=False,
                     pictures=False, overwrite=True)
    return out


# ---- workers (run in a subprocess with the tree under test first on sys.path) ----------------------

def time_worker(setting: str, steps: int, log_every: int, cache: Path) -> dict[str, dict[str, float]]:
    """Per-step CPU and wall time of each registered loss through ``fmmkit.train``: a run of ``steps``
    steps minus a run of ``steps // 4`` (the same set-up, warm-up and final checkpoint), over the
    difference in steps, after an untimed 2-step run."""
    import fmmkit
    import torch

    torch.set_num_threads(1)
    short = max(1, steps // 4)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, config in registered_losses():
            teacher = teacher_run(setting, cache) if kind in TEACHER_KINDS else None
            clocks = []
            fmmkit.train(setting_spec(setting, kind, config, 2, log_every, teacher), out=Path(tmp) / f"{kind}_warm",
                         progress=False, pictures=False, overwrite=True)  # one-time costs (imports, scripting) untimed
            for n in (short, steps):
                spec = setting_spec(setting, kind, config, n, log_every, teacher)
                cpu, wall = time.process_time(), time.perf_counter()
                fmmkit.train(spec, out=Path(tmp) / f"{kind}_{n}", progress=False, pictures=False, overwrite=True)
                clocks.append((time.process_time() - cpu, time.perf_counter() - wall))
            (cpu_a, wall_a), (cpu_b, wall_b) = clocks
            out[label] = {"cpu": (cpu_b - cpu_a) / (steps - short) * 1e3, "wall": (wall_b - wall_a) / (steps - short) * 1e3}
    return out


def peak_step_bytes(setting: str, kind: str, config: dict[str, Any], teacher: Path | None) -> int:
    """Peak tensor bytes live during one step (loss, backward, Adam) above those live at its start."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fmmkit.spec import load_spec
    from fmmkit.training.build import build_pipeline

    spec = load_spec(setting_spec(setting, kind, config, 3, 1, teacher))
    torch.manual_seed(0)
    pipeline = build_pipeline(spec, device=torch.device("cpu"))
    params = list(pipeline.model.parameters()) + pipeline.loss.parameters()
    optimizer = torch.optim.Adam(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        batch = pipeline.data.sample(spec.train.batch_size, generator)
        optimizer.zero_grad(set_to_none=True)
        pipeline.loss(pipeline.model, batch, teacher=pipeline.teacher, step=1).loss.backward()
        optimizer.step()

    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    deltas = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def rss_bytes(field: str = "VmRSS") -> int:
    """The process's resident size (VmRSS) or its peak since the last reset (VmHWM), in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident size (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_worker(setting: str, label: str, cache: Path) -> dict[str, float]:
    """One loss in this (fresh) process: the RSS peak of a short run above the RSS before it (after a
    one-step warm-up run at batch 8 has loaded every module), then the step peak."""
    import fmmkit
    import torch

    torch.set_num_threads(1)
    kind, config = next((k, c) for lab, k, c in registered_losses() if lab == label)
    teacher = teacher_run(setting, cache) if kind in TEACHER_KINDS else None
    with tempfile.TemporaryDirectory() as tmp:
        warm = setting_spec(setting, kind, config, 1, 1, teacher)
        warm["train"]["batch_size"] = 8  # loads every module without growing the heap to this loss's peak
        fmmkit.train(warm, out=Path(tmp) / "warm", progress=False, pictures=False)
        reset_peak_rss()
        before = rss_bytes()
        fmmkit.train(setting_spec(setting, kind, config, 4, 2, teacher), out=Path(tmp) / "run", progress=False,
                     pictures=False)
        rss_peak = rss_bytes("VmHWM") - before
    return {"rss": rss_peak, "step": peak_step_bytes(setting, kind, config, teacher)}


# ---- orchestration -------------------------------------------------------------------------------

def run_worker(tree: Path, args: list[str]) -> Any:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=env, capture_output=True,
                          text=True, cwd=tree)
    if proc.returncode:
        raise RuntimeError(f"worker {args} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(trees: list[Path], settings: list[str], rounds: int, steps: int, log_every: int, memory: bool,
            cache: Path) -> dict[str, Any]:
    """Time (``rounds`` > 0) and memory of every loss in every setting and tree."""
    results: dict[str, Any] = {"uptime_before": uptime()}
    for setting in settings:
        times: dict[str, dict[str, list[float]]] = {str(t): {} for t in trees}
        ratios: dict[str, dict[str, list[float]]] = {str(t): {} for t in trees}
        for r in range(rounds):
            for tree in trees:
                got = run_worker(tree, ["--worker", "time", "--setting", setting, "--steps", str(steps),
                                        "--log-every", str(log_every), "--cache", str(cache)])
                for label, ms in got.items():
                    times[str(tree)].setdefault(label, []).append(ms)
                    ratios[str(tree)].setdefault(label, []).append(ms["cpu"] / got["flow matching"]["cpu"])
                print(f"{setting} round {r + 1}/{rounds} {tree.name}: "
                      + ", ".join(f"{k} {v['cpu']:.1f} ms cpu ({v['wall']:.1f} wall)" for k, v in got.items()), flush=True)
        mem: dict[str, dict[str, dict[str, float]]] = {}
        if memory:
            for tree in trees:
                labels = list(times[str(tree)]) or run_worker(tree, ["--worker", "labels"])
                mem[str(tree)] = {label: run_worker(tree, ["--worker", "memory", "--setting", setting, "--label", label,
                                                           "--cache", str(cache)]) for label in labels}
        results[setting] = {"times": times, "ratios": ratios, "memory": mem}
    results["uptime_after"] = uptime()
    return results


def table(setting: str, data: dict[str, Any], tree: str, rounds: int) -> list[str]:
    times, ratios, mem = data["times"][tree], data["ratios"][tree], data["memory"].get(tree, {})
    bars = BARS.get(setting, {})
    lines = ["| loss | CPU ms / step | wall ms / step | x flow matching (CPU time) | issue 13 bar | "
             "step peak MB | x flow matching | RSS peak MB | x flow matching |", "|---|---|---|---|---|---|---|---|---|"]
    fm = mem.get("flow matching")
    for label in times or mem:
        m = mem.get(label)
        mem_cols = (f"{m['step'] / 2**20:.1f} | {m['step'] / fm['step']:.2f} | {m['rss'] / 2**20:.0f} | "
                    f"{m['rss'] / fm['rss']:.2f}") if m and fm else "- | - | - | -"
        bar = f"<= {bars[label]}" if label in bars else ""
        if label in times:
            cpu = statistics.median(m_["cpu"] for m_ in times[label])
            wall = statistics.median(m_["wall"] for m_ in times[label])
            time_cols = f"{cpu:.1f} | {wall:.1f} | **{statistics.median(ratios[label]):.2f}**"
        else:
            time_cols = "- | - | -"
        lines.append(f"| {label} | {time_cols} | {bar} | {mem_cols} |")
    return lines


SETTING_TEXT = {
    "peer": "Peer protocol (Meta flow_matching's 2D example): checkerboard scaled by 1/0.45, MLP 4 x 256 "
            "(fmmkit `mlp` defaults otherwise), batch 4096, Adam 1e-3 constant, 1 torch thread.",
    "small": "Small MLP of benchmarks/losses.py: checkerboard, MLP 128 x 4 with time_dim 2, batch 512, Adam 2e-3 "
             "cosine, grad clip 1, 1 torch thread.",
    "digits": "Digits UNet of the built-in digits_teacher spec (8x8 digits, channels 16, mult [1, 2], attention at 4x4), "
              "batch 64, 1 torch thread.",
}


def report(results: dict[str, Any], trees: list[Path], args: argparse.Namespace) -> str:
    from results_file import machine

    command = (f"nice -n 5 .venv/bin/python benchmarks/step_cost.py --settings {' '.join(args.settings)} "
               f"--rounds {args.rounds} --steps {args.steps}"
               + ("" if args.memory else " --no-memory"))
    lines = [f"Machine: {machine()}; `uptime` before: `{results['uptime_before']}`; after: "
             f"`{results['uptime_after']}` (this VM's speed drifts between rounds even when idle, so absolute times "
             "vary and the ratios, taken within each round, are the figures to compare).",
             f"Reproduce: `{command}`.", "",
             f"Time: fmmkit's real trainer (`fmmkit.train`, one torch thread): a run of {args.steps} steps minus a run of "
             f"{max(1, args.steps // 4)} steps (same set-up and warm-up), per step; CPU time of the process (what the "
             "step costs, steadier on a shared machine than wall time, which waiting for a core inflates) and wall time; "
             f"the ratio is taken within each round; {args.rounds} interleaved rounds, medians. Memory (CPU): each "
             "loss in a fresh subprocess; *step peak* is the most tensor memory live during one training step (loss, "
             "backward, Adam) above what was live when it began, from torch.profiler's allocation events; *RSS peak* "
             "is the process's peak resident size (VmHWM, reset after a 1-step warm-up run at batch 8) during a 4-step `fmmkit.train` "
             "minus its size just before (includes allocator slack and the run's set-up)."]
    for setting in args.settings:
        for tree in trees:
            name = "" if len(trees) == 1 else f" (tree {tree})"
            lines += ["", f"**{setting}**{name}: {SETTING_TEXT[setting]}", ""]
            lines += table(setting, results[setting], str(tree), args.rounds)
    if args.rounds > 1:
        lines += ["", f"Spread of the per-round time ratios (min-max over the {args.rounds} rounds): " + "; ".join(
            f"**{setting}**{'' if len(trees) == 1 else f' ({tree.name})'}: " + ", ".join(
                f"{label} {min(r):.2f}-{max(r):.2f}" for label, r in results[setting]["ratios"][str(tree)].items()
                if label != "flow matching")
            for setting in args.settings for tree in trees) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (0: memory only)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed run")
    parser.add_argument("--log-every", type=int, default=10, help="the trainer's log interval")
    parser.add_argument("--tree", action="append", type=Path, default=None,
                        help="source tree to measure (repeat for a side-by-side comparison; default: this one)")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--only", nargs="+", default=None, help="loss labels to measure (default: all registered)")
    parser.add_argument("--no-write", action="store_true", help="print without writing RESULTS.md")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fmmkit-step-cost")
    parser.add_argument("--worker", choices=("time", "memory", "labels"), help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "time":
        print(json.dumps(time_worker(args.setting, args.steps, args.log_every, args.cache)))
        return
    if args.worker == "labels":
        print(json.dumps([label for label, _, _ in registered_losses()]))
        return
    if args.worker == "memory":
        print(json.dumps(memory_worker(args.setting, args.label, args.cache)))
        return
    if args.only:
        os.environ["FMMKIT_STEP_COST_ONLY"] = ",".join(["flow matching", *args.only])  # the workers inherit it
    trees = [t.resolve() for t in (args.tree or [HERE.parent])]
    args.cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = measure(trees, args.settings, args.rounds, args.steps, args.log_every, args.memory, args.cache)
    body = report(results, trees, args)
    print(body)
    print(f"({(time.perf_counter() - start) / 60:.1f} min)")
    if not args.no_write:
        sys.path.insert(0, str(HERE))
        from results_file import write_section

        write_section(TITLE, body)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
