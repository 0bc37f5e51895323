"""The ``fmmkit`` command: a thin face over the Python API.

  fmmkit train SPEC [--out DIR] [--set KEY.PATH=VALUE ...]
  fmmkit train --resume RUN_DIR [--set train.steps=N]
  torchrun --nproc_per_node N -m fmmkit.cli train SPEC --out DIR
  fmmkit sample RUN_DIR --steps K --num N --out FILE(.npy|.png)
  fmmkit eval RUN_DIR [--num N]
  fmmkit plugins
  fmmkit spec check|show SPEC [--set ...]
  fmmkit quickstart [--out DIR]
  fmmkit verify RUN_DIR [--threshold LAW=VALUE ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from fmmkit.core.errors import UserError
from fmmkit.registry import PluginWarning, plural
from fmmkit.runs.layout import EVAL_FILE, VERIFY_FILE


def _one_line_warnings() -> None:
    original = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, PluginWarning):
            return f"fmmkit: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = fmt  # type: ignore[assignment]


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from fmmkit.training.loop import resume_run, train

    if args.resume is not None:
        if args.spec is not None or args.out is not None or args.overwrite:
            raise UserError(f"--resume {args.resume}: the run keeps its own spec and directory; drop SPEC, --out and --overwrite")
        out = resume_run(args.resume, overrides=args.set, progress=not args.quiet)
    elif args.spec is None:
        raise UserError("fmmkit train: give a SPEC file to train, or --resume RUN_DIR to continue a run")
    else:
        out = train(args.spec, out=args.out, overrides=args.set, overwrite=args.overwrite, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":
        print(f"trained: {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from fmmkit.runs.run import load_run

    run = load_run(args.run_dir)
    out = Path(args.out)
    if out.suffix not in (".npy", ".png"):
        raise UserError(f"--out {out}: use a .npy or .png file name")
    result = run.sample_result(args.num, steps=args.steps, seed=args.seed, solver=args.solver)
    samples = result.x.float().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, samples)
    else:
        from fmmkit.evaluation import save_panels

        label = f"{args.solver}({args.steps})" if args.solver else f"flow map, {args.steps} steps"
        save_panels(run, [(label, samples)], out)
    print(f"wrote {args.num} samples ({result.nfe} NFE each) to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fmmkit.evaluation import evaluate, format_table

    rows = evaluate(args.run_dir, num_samples=args.num)
    print(format_table(rows))
    print(f"written: {Path(args.run_dir) / EVAL_FILE}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from fmmkit.registry import get_registry

    registry = get_registry()
    if args.json:
        print(json.dumps({kind: {name: {"plugin": e.plugin, "version": e.version} for name, e in table.items()}
                          for kind, table in registry.entries.items()}, indent=2))
        return 0
    print("Plugins:")
    for p in registry.plugins:
        if p.hooks:
            origin = "built-in" if p.builtin else "installed"
            print(f"  {p.name} {p.version} ({origin}): {', '.join(p.hooks)}")
    for kind, table in registry.entries.items():
        print(f"\n{plural(kind)}:")
        for name in sorted(table):
            entry = table[name]
            print(f"  {name:<32} {entry.plugin} {entry.version}")
    for failure in registry.failures:
        print(f"\nskipped: {failure}")
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    from fmmkit.spec import load_spec, spec_to_toml
    from fmmkit.training.build import build_pipeline

    spec = load_spec(args.spec, args.set)
    if args.action == "show":
        print(spec_to_toml(spec), end="")
    else:
        build_pipeline(spec)  # builds every component, so build-time errors show here too
        print(f"{args.spec}: ok")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from fmmkit.cli.quickstart import run_quickstart

    run_quickstart(Path(args.out), progress=not args.quiet, overrides=args.set)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fmmkit.runs.files import atomic_write_text
    from fmmkit.verification import VerifySettings, format_report, parse_thresholds, verify_run

    settings = VerifySettings(num_points=args.num, search_examples=args.search_examples, seed=args.seed,
                              order=args.order, derivative=args.derivative, thresholds=parse_thresholds(args.threshold))
    report = verify_run(args.run_dir, settings)
    print(report.to_json() if args.json else format_report(report))
    out = Path(args.run_dir) / VERIFY_FILE
    atomic_write_text(out, report.to_json())
    if not args.json:
        print(f"written: {out}")
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmmkit", description="Flow map matching: train, sample and evaluate flow maps.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec key, e.g. --set train.steps=500 (repeatable)")

    p = sub.add_parser("train", help="train a spec into a run directory")
    p.add_argument("spec", nargs="?")
    p.add_argument("--out", help="run directory (default runs/<spec name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest readable checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_set(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=1, help="flow-map jumps (or ODE steps with --solver)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--out", required=True, help="a .npy or .png file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", help="integrate the velocity with this ODE sampler instead (euler, heun, midpoint, rk4, dopri5)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="score a run at 1, 2, 4, 8 steps and against the teacher ODE")
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, help="samples per row (default eval.num_samples)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plugins", help="list registered components and the plugins that provide them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("spec", help="check a spec, or show it with every default filled in")
    p.add_argument("action", choices=["check", "show"])
    p.add_argument("spec")
    add_set(p)
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("quickstart", help="the main job: checkerboard teacher, then a flow map, eval table and PNG")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--quiet", action="store_true")
    add_set(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("verify", help="measure the flow-map laws of a run (table + verify.json; exit 1 if one fails)")
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=2048, help="points (each with its own random times)")
    p.add_argument("--threshold", action="append", default=[], metavar="LAW=VALUE",
                   help="relative-RMS threshold of one law, e.g. --threshold semigroup=0.1 (repeatable)")
    p.add_argument("--order", choices=["forward", "both"], help="time order of (s, u, t) (default: the run's)")
    p.add_argument("--search-examples", type=int, default=200, help="hypothesis examples for the worst triple")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--derivative", choices=["jvp", "finite_difference"], help="default: jvp when the model allows it")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fmmkit`` console script; user mistakes exit 2 with one line, no traceback."""
    _one_line_warnings()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        for line in str(exc).splitlines():
            print(f"fmmkit: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fmmkit: interrupted", file=sys.stderr)
        return 130

