"""The foundation benchmark: the main job's checkerboard teacher and LMD flow map, scored.

Reads the ``eval.json`` that ``fmmkit quickstart`` wrote (flow map at 1, 2, 4, 8 steps and the
teacher ODE at several NFE, 20,000 samples per row) and writes the "Checkerboard" section of
RESULTS.md beside the self-distillation paper's figures (2505.18825).

    fmmkit quickstart --out runs/quickstart && python benchmarks/checkerboard.py runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import machine, write_section  # noqa: E402

PAPER_LSD_KL = {1: 0.086, 2: 0.077, 4: 0.071, 8: 0.070}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", help="the directory fmmkit quickstart wrote (holds teacher/ and flow_map/)")
    args = parser.parse_args()
    run = Path(args.run)
    report = json.loads((run / "flow_map" / "eval.json").read_text())
    seconds = {name: json.loads((run / name / "run.json").read_text())["seconds"] for name in ("teacher", "flow_map")}
    lines = ["| sampler | NFE | checkerboard KL | energy distance | sliced W2 | samples/s | paper KL, LSD (CIFAR-scale net) |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        m = row["metrics"]
        paper = f"{PAPER_LSD_KL[row['nfe']]:.3f}" if row["label"].startswith("flow map") else ""
        lines.append(f"| {row['label']} | {row['nfe']} | {m['histogram_kl']:.4f} | {m['energy_distance']:.5f} | "
                     f"{m['sliced_w2']:.4f} | {row['samples_per_s']:,.0f} | {paper} |")
    body = f"""Machine: {machine()}.
Command: `fmmkit quickstart --out {run} && python benchmarks/checkerboard.py {run}` (the README's main job:
`examples/checkerboard_teacher.toml`, 3000 steps, then `examples/checkerboard_lmd.toml`, 3000 steps;
training took {seconds['teacher']:.0f} s and {seconds['flow_map']:.0f} s here, on a machine shared with other jobs).
{report['num_samples']} samples per row, the same noise for every row, scored against {report['num_samples']} data points.
Checkerboard KL is KL(p_data || p_model) on a 40 x 40 histogram over [-2, 2]^2 (true samples score about
0.02 at this N). The paper's figures are its LSD flow map, with its own network, budget and histogram: compare
trends, not digits. LSD and every other loss on one budget: see the loss-family section.

""" + "\n".join(lines)
    write_section("Checkerboard: the main job, flow map vs teacher ODE (issue 3)", body)
    print(body)


if __name__ == "__main__":
    main()
