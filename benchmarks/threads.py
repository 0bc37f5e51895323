"""Training time under load: torch thread counts against one competing CPU-bound process (issue 13, goal 4).

Runs ``fmmkit train`` (a ``--steps``-step run of ``--spec``, the LSD checkerboard example by default)
with ``train.threads`` = 1, 2 and "auto" (the default, :mod:`fmmkit.training.threads`), each once with
the machine as it is and once while this script keeps one other CPU-bound process running (a
one-thread PyTorch matrix-multiply loop, like another training job; ``--competitor python`` for a
pure-Python loop instead). Every (threads, load) pair runs once per round, interleaved; the figure is
the median over rounds of the run's training wall time (``seconds`` in run.json). Reports for each
thread setting the slowdown under the competitor (loaded / as-is) and, as-is, the time relative to
the best setting, with the 1-minute load average at the start of every run (the ``as-is`` column is
only "idle" on an otherwise idle machine: other users' load shows in that column). Bars (issue 13,
goal 4): "auto" under the competitor within 1.3x of "auto" as is, and "auto" as is within 1.1x of the
best pinned count as is.

    nice -n 5 .venv/bin/python benchmarks/threads.py --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
TITLE = "Threads under load"
THREADS: tuple[int | str, ...] = (1, 2, "auto")
COMPETITORS = {
    "torch": "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n",
    "python": "x = 1.0\nwhile True:\n    x = x * 1.0000001 % 7.0\n",
}


@contextlib.contextmanager
def competitor(kind: str | None) -> Iterator[None]:
    """One CPU-bound process for the duration of the block (none for ``kind=None``)."""
    if kind is None:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(1.0)  # let it reach full speed
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def load_average() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def train_seconds(spec: Path, steps: int, threads: int | str, out: Path) -> tuple[float, list[int]]:
    """Training wall time of one ``fmmkit train`` run (run.json ``seconds``) and the thread counts it used
    (the ``threads`` events of events.jsonl; a pinned count logs none)."""
    setting = f'"{threads}"' if isinstance(threads, str) else str(threads)
    command = [str(Path(sys.executable).parent / "fmmkit"), "train", str(spec), "--out", str(out), "--quiet",
               "--overwrite", "--set", f"train.steps={steps}", "--set", f"train.threads={setting}", "--set", "compile.enabled=false",
               "--set", "train.device=cpu", "--set", "checkpoint.every=0", "--set", "log.tensorboard=false",
               "--set", f"train.log_every={max(1, steps // 4)}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    meta = json.loads((out / "run.json").read_text())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    counts = [e["threads"] for e in events if e.get("event") == "threads"]
    return float(meta["seconds"]), counts or [int(threads)]


def label(threads: int | str) -> str:
    return '"auto" (the default)' if threads == "auto" else str(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=HERE.parent / "examples" / "checkerboard_lsd.toml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch")
    parser.add_argument("--threads", nargs="+", default=[str(t) for t in THREADS],
                        help='settings to compare (default: 1 2 auto; "auto" must be one of them)')
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    settings = tuple("auto" if t == "auto" else int(t) for t in args.threads)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    times: dict[tuple[int | str, bool], list[float]] = {}
    used: dict[tuple[int | str, bool], list[int]] = {}
    loads: dict[tuple[int | str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for loaded in (False, True):
                with competitor(args.competitor if loaded else None):
                    order = settings if r % 2 == 0 else settings[::-1]  # no setting always runs first
                    for threads in order:
                        loads.setdefault((threads, loaded), []).append(load_average())
                        seconds, counts = train_seconds(args.spec, args.steps, threads, Path(tmp) / "run")
                        times.setdefault((threads, loaded), []).append(seconds)
                        used.setdefault((threads, loaded), []).extend(counts)
                        print(f"round {r + 1}: threads {label(threads)}, {'competitor' if loaded else 'as is'}: "
                              f"{seconds:.1f} s (threads used {sorted(set(counts))}, load "
                              f"{loads[(threads, loaded)][-1]:.2f})", flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    median = {key: statistics.median(v) for key, v in times.items()}
    pinned = [t for t in settings if t != "auto"]
    best = min(median[(t, False)] for t in pinned)
    best_label = min(pinned, key=lambda t: median[(t, False)])
    lines = [f"Machine: {os.cpu_count()}-core CPU (`uptime` before: `{uptime_before}`; after: `{uptime_after}`).",
             f"Reproduce: `nice -n 5 .venv/bin/python benchmarks/threads.py --steps {args.steps} --rounds {args.rounds} "
             f"--competitor {args.competitor} --threads {' '.join(args.threads)}` ({args.spec.name}, {args.steps} steps, training wall time from run.json, "
             f"median of {args.rounds} interleaved rounds; the competitor is one {args.competitor} CPU-bound process "
             "started by the script).", "",
             f"| train.threads | as is (s) | with one competitor (s) | slowdown under the competitor | "
             f"as is, x the best pinned count ({best_label}) | threads used as is / with the competitor | "
             "1-min load at the runs' start, as is / with the competitor |", "|---|---|---|---|---|---|---|"]
    for threads in settings:
        idle, loaded = median[(threads, False)], median[(threads, True)]
        span = " / ".join(f"{min(loads[(threads, x)]):.1f}-{max(loads[(threads, x)]):.1f}" for x in (False, True))
        counts = " / ".join(str(sorted(set(used[(threads, x)]))) for x in (False, True))
        lines.append(f"| {label(threads)} | {idle:.1f} | {loaded:.1f} | **{loaded / idle:.2f}x** | "
                     f"**{idle / best:.2f}x** | {counts} | {span} |")
    auto_load, auto_idle = median[("auto", True)] / median[("auto", False)], median[("auto", False)] / best
    lines += ["", f"Bars: \"auto\" under the competitor {auto_load:.2f}x its as-is time (bar 1.3x: "
                  f"{'met' if auto_load <= 1.3 else 'not met'}); \"auto\" as is {auto_idle:.2f}x the best pinned "
                  f"count (bar 1.1x: {'met' if auto_idle <= 1.1 else 'not met'})."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(HERE))
        from results_file import write_section

        write_section(TITLE, body)


if __name__ == "__main__":
    main()
