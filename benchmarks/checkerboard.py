"""The main job's numbers: ``fmmkit quickstart`` (an LSD flow map of the checkerboard, no teacher), scored and timed.

Reads the ``eval.json`` that ``fmmkit quickstart`` wrote (flow map at 1, 2, 4, 8 steps and the ODE of the
map's own velocity, 20,000 samples per row) and the wall / CPU time given on the command line, and
writes the quickstart section of RESULTS.md beside the self-distillation paper's figures (2505.18825).

    /usr/bin/time -f '%e %U %S' fmmkit quickstart --out runs/quickstart 2> qs.time
    python benchmarks/checkerboard.py runs/quickstart --time "$(tail -1 qs.time)" --load "$(uptime)"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import machine, write_section  # noqa: E402

TITLE = "Issue 13, goal 5: the main job (fmmkit quickstart), scores and time"
PAPER_LSD_KL = {1: 0.086, 2: 0.077, 4: 0.071, 8: 0.070}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", help="the directory fmmkit quickstart wrote (holds flow_map/)")
    parser.add_argument("--time", default="", help="'WALL USER SYS' seconds of the whole command")
    parser.add_argument("--load", default="", help="uptime output during the run")
    parser.add_argument("--note", default="", help="a sentence on how the command was run")
    args = parser.parse_args()
    run = Path(args.run)
    report = json.loads((run / "flow_map" / "eval.json").read_text())
    train_s = json.loads((run / "flow_map" / "run.json").read_text())["seconds"]
    lines = ["| sampler | NFE | in squares | energy distance | sliced W2 | checkerboard KL | paper KL, LSD (CIFAR-scale net) |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        m = row["metrics"]
        paper = PAPER_LSD_KL.get(row["nfe"]) if row["label"].startswith("flow map") else None
        lines.append(f"| {row['label']} | {row['nfe']} | {m['in_support']:.4f} | {m['energy_distance']:.4f} | "
                     f"{m['sliced_w2']:.4f} | {m['histogram_kl']:.4f} | {'' if paper is None else f'{paper:.3f}'} |")
    timing = ""
    if args.time:
        wall, user, sys_ = (float(v) for v in args.time.split())
        timing = (f"The whole command took {wall:.0f} s wall and {user + sys_:.0f} s of CPU (user {user:.0f} s + system "
                  f"{sys_:.0f} s), training {train_s:.0f} s of it. ")
    from fmmkit.cli.quickstart import QUICKSTART_OVERRIDES

    budget = ", ".join(f"`{o}`" for o in QUICKSTART_OVERRIDES)
    body = f"""Machine: {machine()}. Load: `{args.load.strip()}`.
Command: `fmmkit quickstart --out {run} && python benchmarks/checkerboard.py {run}` (the README's main job:
the built-in `checkerboard_lsd` spec, LSD with no teacher, with the quickstart's overrides {budget}). {timing}{args.note}
{report['num_samples']} samples per row, the same noise for every row, scored against {report['num_samples']} data points.
"in squares" is the in_support metric (the share of samples on the black squares; data: 1.0). Checkerboard KL is
KL(p_data || p_model) on a 40 x 40 histogram over [-2, 2]^2 (true samples score about 0.02 at this N). The paper's
figures are its LSD flow map, with its own network, budget and histogram: compare trends, not digits.

""" + "\n".join(lines)
    write_section(TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
