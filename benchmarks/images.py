"""Image flow maps on this machine: the digits teacher and its distilled flow map scored by the offline
digits Frechet distance, and the cost of the attention backends in a derivative pass.

Writes the "Image flow maps ..." section of RESULTS.md.

    nice -n 10 python benchmarks/images.py [--teacher RUN] [--students lmd imf freeflow] [--threads N] [--attention-repeats 5]

Digits: unless given trained run directories, trains examples/digits_teacher.toml and then the flow
maps examples/digits_lmd.toml (LMD, distilled), examples/digits_improved_meanflow.toml (iMF, from
scratch, no teacher) and examples/digits_freeflow.toml (FreeFlow: distilled with no data at all) with
``fmmkit train`` (teacher.run pointed at the first), then scores each with ``fmmkit eval`` (digits_fd,
eval.num_samples = 2000 per row; the "teacher ODE" rows integrate the teacher run's velocity); the
"data" row is the distance between independent draws of the digits of that size (the estimator's
floor, 5 pairs). ``--students lmd imf freeflow`` picks the flow maps. Attention: one
JVP in the input plus a backward pass through the tangent (what a JVP loss does) on
(B, H, N, D) = (8, 4, 256, 32) float32, median of ``--attention-repeats`` after a warm-up.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITLE = ("Image flow maps: two-time UNet and DiT backbones, forward-mode-AD-capable attention, image data sets, "
         "image metrics")
MACHINE = "2-core CPU, no GPU, torch 2.14.1"


def fmmkit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fmmkit.cli", *args], cwd=ROOT, check=True)


#: student label -> (example spec, whether it distils the teacher)
STUDENTS = {"lmd": ("digits_lmd", "LMD", True), "imf": ("digits_improved_meanflow", "iMF", False),
            "freeflow": ("digits_freeflow", "FreeFlow (no data)", True)}


def train_digits(out: Path, threads: int, students: list[str], teacher: Path | None = None
                 ) -> tuple[Path, dict[str, Path], list[str]]:
    """Train the digits teacher (unless given) and the flow maps (a run already finished in ``out`` is
    reused); returns their run dirs and the commands (each one would train it)."""
    common = ["--quiet", "--overwrite", "--set", f"train.threads={threads}"]
    commands = []
    if teacher is None:
        teacher = out / "digits_teacher"
        commands.append(["train", "examples/digits_teacher.toml", "--out", str(teacher), *common])
    runs = {}
    for name in students:
        spec, _, distils = STUDENTS[name]
        runs[name] = out / spec
        extra = ["--set", f"teacher.run=\"{teacher}\""] if distils else []
        commands.append(["train", f"examples/{spec}.toml", "--out", str(runs[name]), *extra, *common])
    for command in commands:
        if not (Path(command[command.index("--out") + 1]) / "run.json").is_file():
            fmmkit(*command)
    return teacher, runs, [" ".join(["fmmkit", *c]) for c in commands]


def eval_rows(run: Path) -> list[dict]:
    """The run's eval rows: its eval.json when written after its weights (a reused run), else ``fmmkit eval``."""
    scores, weights = run / "eval.json", run / "model.safetensors"
    if not (scores.is_file() and weights.is_file() and scores.stat().st_mtime > weights.stat().st_mtime):
        fmmkit("eval", str(run))
    return json.loads(scores.read_text())["rows"]


def data_floor(run: Path, pairs: int = 5) -> list[float]:
    """digits_fd between independent draws of the run's data (eval.num_samples each), for ``pairs`` pairs."""
    from fmmkit.metrics.digits_fd import DigitsFrechetDistance
    from fmmkit.runs.run import load_run

    loaded = load_run(run)
    n, metric = loaded.spec.eval.num_samples, DigitsFrechetDistance()
    draw = lambda seed: loaded.data.sample(n, torch.Generator().manual_seed(seed)).x1  # noqa: E731
    return [metric(draw(100 + 2 * i), draw(101 + 2 * i)) for i in range(pairs)]


def classifier_line() -> str:
    """Which digits classifier gave the features (recipe, seed, held-out accuracy, cache file)."""
    from safetensors import safe_open

    from fmmkit.metrics.digits_classifier import classifier_path

    path = classifier_path(0)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return (f"digits_fd features: fmmkit's digits classifier, recipe {meta['recipe']}, seed {meta['seed']}, "
            f"held-out accuracy {float(meta['heldout_accuracy']):.3f} (cached at {path.name} in the fmmkit cache "
            "directory; see fmmkit/metrics/_digits_classifier.py).")


def seconds(run: Path) -> float:
    return float(json.loads((run / "run.json").read_text())["seconds"])


def flow_map_table(scored: dict[str, list[dict]]) -> list[str]:
    """One markdown row per flow-map step count, one digits_fd column per student."""
    by_label = {name: {r["label"]: r for r in rows} for name, rows in scored.items()}
    first = next(iter(scored.values()))
    lines = []
    for row in first:
        if row["label"].startswith(("teacher", "ODE")):
            continue
        cells = [f"{by_label[n][row['label']]['metrics']['digits_fd']:.2f}" if row["label"] in by_label[n] else "-"
                 for n in scored]
        lines.append(f"| {row['label']} | {row['nfe']} | " + " | ".join(cells) + " |")
    return lines


def time_attention(repeats: int) -> dict[str, float]:
    """Milliseconds of one JVP + backward through the tangent, per backend."""
    from fmmkit.nets.attention.functional import forward_ad_attention, math_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 4, 256, 32, generator=g, requires_grad=True) for _ in range(3))
    tangents = tuple(torch.randn(8, 4, 256, 32, generator=g) for _ in range(3))
    out: dict[str, float] = {}
    for name, fn in (("math", math_attention), ("forward_ad", forward_ad_attention)):
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            _, tangent = torch.func.jvp(fn, (q, k, v), tangents)
            tangent.pow(2).sum().backward()
            if i:
                times.append(time.perf_counter() - start)
        out[name] = 1000 * statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, help="a trained digits_teacher run (skip training it)")
    parser.add_argument("--students", nargs="*", default=list(STUDENTS), choices=list(STUDENTS),
                        help="the flow maps to train and score")
    parser.add_argument("--threads", type=int, default=2, help="train.threads for the trainings")
    parser.add_argument("--out", type=Path, help="the runs' folder (default: a fresh temporary one); finished "
                                                 "runs there are reused")
    parser.add_argument("--attention-repeats", type=int, default=5)
    args = parser.parse_args()

    load = os.getloadavg()
    out = args.out or Path(tempfile.mkdtemp(prefix="fmmkit-digits-"))
    teacher, students, commands = train_digits(out, args.threads, args.students, args.teacher)
    scored = {name: eval_rows(run) for name, run in students.items()}
    distilled = next((n for n in students if STUDENTS[n][2]), None)
    teacher_rows = [r for r in scored[distilled] if r["label"].startswith("teacher ODE")] if distilled else []
    floor = data_floor(next(iter(students.values())))
    torch.set_num_threads(2)
    attention = time_attention(args.attention_repeats)

    lines = [
        f"Machine: {MACHINE}, shared with other jobs (1-minute load average {load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end): wall-clock times are upper bounds. Trainings ran with "
        f"train.threads = {args.threads}.",
        "",
        "### Digits (8x8, scikit-learn): flow map vs teacher ODE, offline digits Frechet distance",
        "",
        "Training wall-clock: teacher " + f"{seconds(teacher):.0f} s, "
        + ", ".join(f"{STUDENTS[n][1]} {seconds(r):.0f} s" for n, r in students.items()) + ". "
        "LMD and FreeFlow distil the teacher (FreeFlow with no data: no [data] table, scored against the "
        "teacher's data); iMF trains from scratch with the teacher's budget (2000 steps), no teacher.",
        "",
        classifier_line(),
        "",
        "| sampler | NFE | " + " | ".join(f"{STUDENTS[n][1]} digits_fd" for n in students) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in students) + " |",
        *flow_map_table(scored),
        *(f"| {r['label']} | {r['nfe']} | " + " | ".join([f"{r['metrics']['digits_fd']:.2f}"] * len(students)) + " |"
          for r in teacher_rows),
        f"| data vs data (floor: {len(floor)} pairs of independent draws) | - | "
        + " | ".join([f"{min(floor):.2f} to {max(floor):.2f}"] * len(students)) + " |",
        "",
        "Reproduce: " + "; ".join(f"`{c}`" for c in commands),
        f"then `fmmkit eval` on each flow-map run; all of it: `nice -n 10 python benchmarks/images.py --threads {args.threads}`.",
        "",
        "### Attention in a derivative pass",
        "",
        "One torch.func.jvp plus a backward pass through the tangent, (B, H, N, D) = (8, 4, 256, 32) float32, 2 threads:",
        f"`math` {attention['math']:.0f} ms, `forward_ad` {attention['forward_ad']:.0f} ms "
        f"(`sdpa` cannot take the JVP: NotImplementedError). Command: `nice -n 10 python benchmarks/images.py`.",
    ]
    write_section(TITLE, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
