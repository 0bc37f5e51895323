"""Image flow maps on this machine: the digits teacher and its distilled flow map scored by the offline
digits Frechet distance, and the cost of the attention backends in a derivative pass.

Writes the "Image flow maps ..." section of RESULTS.md.

    nice -n 10 python benchmarks/images.py [--teacher RUN --student RUN] [--threads N] [--attention-repeats 5]

Digits: unless given trained run directories, trains examples/digits_teacher.toml and then
examples/digits_lmd.toml (teacher.run pointed at the first) with ``fmmkit train``, then scores
the flow map with ``fmmkit eval`` (digits_fd, eval.num_samples = 2000 per row; its "teacher ODE"
rows integrate the teacher run's velocity); the "data" row is the distance
between independent draws of the digits of that size (the estimator's floor, 5 pairs). Attention: one
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


def train_digits(out: Path, threads: int) -> tuple[Path, Path, list[str]]:
    """Train the digits teacher and flow map; returns their run dirs and the commands used."""
    teacher, student = out / "digits_teacher", out / "digits_lmd"
    common = ["--quiet", "--overwrite", "--set", f"train.threads={threads}"]
    commands = [
        ["train", "examples/digits_teacher.toml", "--out", str(teacher), *common],
        ["train", "examples/digits_lmd.toml", "--out", str(student), "--set", f"teacher.run=\"{teacher}\"", *common],
    ]
    for command in commands:
        fmmkit(*command)
    return teacher, student, [" ".join(["fmmkit", *c]) for c in commands]


def eval_rows(run: Path) -> list[dict]:
    fmmkit("eval", str(run))
    return json.loads((run / "eval.json").read_text())["rows"]


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
    parser.add_argument("--teacher", type=Path, help="a trained digits_teacher run (skip training)")
    parser.add_argument("--student", type=Path, help="a trained digits_lmd run (skip training)")
    parser.add_argument("--threads", type=int, default=2, help="train.threads for the two trainings")
    parser.add_argument("--attention-repeats", type=int, default=5)
    args = parser.parse_args()

    load = os.getloadavg()
    commands: list[str] = []
    if args.teacher and args.student:
        teacher, student = args.teacher, args.student
    else:
        teacher, student, commands = train_digits(Path(tempfile.mkdtemp(prefix="fmmkit-digits-")), args.threads)
    student_rows = eval_rows(student)  # its teacher ODE rows are the teacher run's own
    floor = data_floor(student)
    torch.set_num_threads(2)
    attention = time_attention(args.attention_repeats)

    lines = [
        f"Machine: {MACHINE}, shared with other jobs (1-minute load average {load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end): wall-clock times are upper bounds. Trainings ran with "
        f"train.threads = {args.threads}.",
        "",
        "### Digits (8x8, scikit-learn): flow map vs teacher ODE, offline digits Frechet distance",
        "",
        f"Training wall-clock: teacher {seconds(teacher):.0f} s, flow map (LMD) {seconds(student):.0f} s.",
        "",
        classifier_line(),
        "",
        "| sampler | NFE | digits_fd |",
        "| --- | ---: | ---: |",
        *(f"| {r['label']} | {r['nfe']} | {r['metrics']['digits_fd']:.2f} |" for r in student_rows),
        f"| data vs data (floor: {len(floor)} pairs of independent draws) | - | {min(floor):.2f} to {max(floor):.2f} |",
        "",
        "Reproduce: " + ("; ".join(f"`{c}`" for c in commands) if commands else
                         "`fmmkit train examples/digits_teacher.toml --out runs/digits_teacher`; "
                         "`fmmkit train examples/digits_lmd.toml --out runs/digits_lmd`"),
        f"then `fmmkit eval` on the flow-map run; all of it: `nice -n 10 python benchmarks/images.py --threads {args.threads}`.",
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
