"""The ``fmmkit`` command: a thin face over the Python API.

  fmmkit train SPEC|NAME [--out DIR] [--set KEY.PATH=VALUE ...]   (NAME: a built-in spec, fmmkit spec list)
  fmmkit train --resume RUN_DIR [--set train.steps=N]
  torchrun --nproc_per_node N -m fmmkit.cli train SPEC --out DIR
  fmmkit sample RUN_DIR --steps K --num N --out FILE(.npy|.png) [--sampler S] [--guidance W] [--label Y]
                [--max-memory GIB]
  fmmkit eval RUN_DIR [--num N] [--max-memory GIB]
  fmmkit plugins
  fmmkit spec check|show SPEC|NAME [--set ...]
  fmmkit spec list
  fmmkit spec copy NAME... DIR | --all DIR
  fmmkit quickstart [--out DIR]
  fmmkit verify RUN_DIR [--threshold LAW=VALUE ...] [--json]
  fmmkit export RUN_DIR --out DIR [--format fmmkit|diffusers] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from fmmkit.core.errors import EnvironmentProblem, UserError, describe_os_error, os_error_fix
from fmmkit.losses.times import TIME_ORDERS
from fmmkit.registry import PluginWarning, plural
from fmmkit.runs.layout import EVAL_FILE, VERIFY_FILE
from fmmkit.spec.errors import SpecWarning
from fmmkit.training.signals import TrainingInterrupted


def _one_line_warnings() -> None:
    original = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, (PluginWarning, SpecWarning)):
            return f"fmmkit: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    warnings.formatwarning = fmt  # type: ignore[assignment]


def at_least(flag: str, value: int | float, least: int | float) -> None:
    """UserError unless ``value`` >= ``least`` (``--num: must be >= 1, got 0``)."""
    if value < least:
        raise UserError(f"{flag}: must be >= {least}, got {value}")


def seed_in_range(flag: str, value: int) -> None:
    """UserError unless ``value`` is a seed torch accepts (the spec's own range for seeds)."""
    from fmmkit.spec.schema import SEED_RANGE

    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise UserError(f"{flag}: must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {value}")


def memory_limit(args: argparse.Namespace) -> float:
    """``--max-memory`` in GiB (default: half the machine's memory)."""
    from fmmkit.memory import default_call_limit

    if args.max_memory is None:
        return default_call_limit()
    if not args.max_memory > 0:
        raise UserError(f"--max-memory: must be > 0, got {args.max_memory}")
    return float(args.max_memory)


def write_results(path: Path, data: object) -> None:
    """Write eval.json / verify.json after the results were shown; a refusal is one line (exit 1)."""
    from fmmkit.runs.files import atomic_write_json

    try:
        atomic_write_json(path, data)
    except OSError as exc:
        raise EnvironmentProblem(f"{path}: cannot write ({exc.strerror or exc}); the results above were not saved; "
                                 f"{os_error_fix(exc)}") from None


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from fmmkit.runs.files import read_json
    from fmmkit.runs.layout import RUN_INFO_FILE
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
        info = read_json(out / RUN_INFO_FILE)
        print(f"trained: {out} ({info['steps']} steps, {info.get('skipped', 0)} skipped)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import math

    import numpy as np

    from fmmkit.memory import check_call, sampling_bytes
    from fmmkit.runs.run import load_run

    at_least("--num", args.num, 1)
    at_least("--steps", args.steps, 1)
    seed_in_range("--seed", args.seed)
    limit = memory_limit(args)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a .npy or .png file name")
    if out.suffix not in (".npy", ".png"):
        raise UserError(f"--out {out}: use a .npy or .png file name")
    run = load_run(args.run_dir)
    if args.solver and (args.sampler or args.guidance is not None):
        raise UserError("--solver integrates the velocity: it takes neither --sampler nor --guidance")
    if args.sampler:
        entry = run.registry.get("sampler", args.sampler)  # RegistryError: a one-line unknown-name message
        if not getattr(entry.component, "uses_flow_map", False):
            raise UserError(f"--sampler {args.sampler}: an ODE solver; use --solver {args.sampler}, or a flow-map "
                            "sampler (flow_map, consistency, stochastic_flow_map)")
    labels = None
    if args.label is not None:
        if not run.data.num_classes or not 0 <= args.label < run.data.num_classes:
            raise UserError(f"--label {args.label}: this run has {run.data.num_classes or 'no'} classes")
        import torch

        labels = torch.full((args.num,), args.label, dtype=torch.long)
    parts = sampling_bytes(math.prod(run.data.shape), args.num, args.steps, args.solver)
    check_call(parts, {"num": args.num, "steps": args.steps}, limit)
    result = run.sample_result(args.num, steps=args.steps, seed=args.seed, solver=args.solver, y=labels,
                               guidance=args.guidance, sampler=args.sampler)
    samples = result.x.float().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        from fmmkit.evaluation.scores import decoded

        np.save(out, decoded(run, result.x).numpy())  # latent runs: the decoded images
    else:
        from fmmkit.evaluation import save_panels

        kind = (args.sampler or run.flow_map_sampler).replace("_", " ")
        label = f"{args.solver}({args.steps})" if args.solver else f"{kind}, {args.steps} steps"
        if args.guidance is not None:
            label += f", guidance {args.guidance:g}"
        save_panels(run, [(label, samples)], out)
    print(f"wrote {args.num} samples ({result.nfe} NFE each) to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import math

    from fmmkit.evaluation import eval_record, evaluate, format_table
    from fmmkit.memory import check_call, evaluation_bytes
    from fmmkit.runs.run import load_run

    if args.num is not None:
        at_least("--num", args.num, 2)
    limit = memory_limit(args)
    run = load_run(args.run_dir)
    num = args.num or run.spec.eval.num_samples
    rows = len(run.spec.sample.steps) + len(run.spec.eval.ode)
    check_call({"num": evaluation_bytes(math.prod(run.data.shape), num, rows)}, {"num": num}, limit)
    results = evaluate(run, num_samples=num, write=False)
    print(format_table(results), flush=True)  # shown before eval.json is written: a read-only run still shows them
    path = run.path / EVAL_FILE
    write_results(path, eval_record(results, num))
    print(f"written: {path}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from fmmkit.registry import BLOCK_VARIABLE, load_registry

    registry = load_registry(strict=False)  # name clashes are listed here, not raised
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
    for plugin in registry.blocked:
        print(f"\nblocked: plugin '{plugin.name}' {plugin.version} (distribution {plugin.distribution}) by {BLOCK_VARIABLE}")
    for failure in registry.failures:
        print(f"\nskipped: {failure}")
    for clash in registry.clashes:
        print(f"\nclash: {clash}")
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    from fmmkit.evaluation import build_metrics
    from fmmkit.spec import load_spec, spec_to_toml
    from fmmkit.training.build import build_pipeline

    spec = load_spec(args.spec, args.set)
    if args.action == "show":
        print(spec_to_toml(spec, comments=True), end="")
    else:
        from fmmkit.training.distributed import DistEnv
        from fmmkit.training.sharding import BatchPlan

        from fmmkit.spec import SpecError
        from fmmkit.spec.loader import attribute_to_overrides

        try:  # builds every component (and checks data and memory): build-time errors show here
            pipeline = build_pipeline(spec)
            build_metrics(spec, pipeline.registry)
            BatchPlan.make(spec.train, DistEnv(), spec.source)
        except SpecError as exc:
            raise attribute_to_overrides(exc, spec.source, args.set) from None
        print(f"{args.spec}: ok")
    return 0


def cmd_spec_list(args: argparse.Namespace) -> int:
    from fmmkit.spec.builtin import builtin_spec_names, summary

    names = builtin_spec_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {summary(name)}")
    print(f"\ntrain one with 'fmmkit train NAME', read it with 'fmmkit spec show NAME', edit a copy made with "
          f"'fmmkit spec copy NAME DIR'")
    return 0


def cmd_spec_copy(args: argparse.Namespace) -> int:
    from fmmkit.spec.builtin import builtin_spec_names, copy_specs

    *names, out = args.items
    if args.all == bool(names):
        raise UserError("fmmkit spec copy: give NAME... DIR, or --all DIR")
    for path in copy_specs(builtin_spec_names() if args.all else names, Path(out)):
        print(f"wrote {path}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from fmmkit.cli.quickstart import run_quickstart

    run_quickstart(Path(args.out), progress=not args.quiet, overrides=args.set)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import math

    from fmmkit.memory import check_call, verification_bytes
    from fmmkit.runs.run import load_run
    from fmmkit.verification import VerifySettings, format_report, parse_thresholds, verify_run
    from fmmkit.verification.verify import MAX_SEARCH_EXAMPLES, MIN_SEARCH_EXAMPLES

    at_least("--num", args.num, 2)
    if args.search_examples < MIN_SEARCH_EXAMPLES:
        raise UserError(f"--search-examples: must be >= {MIN_SEARCH_EXAMPLES} (the search needs {MIN_SEARCH_EXAMPLES} "
                        f"examples), got {args.search_examples}")
    if args.search_examples > MAX_SEARCH_EXAMPLES:
        raise UserError(f"--search-examples: must be <= {MAX_SEARCH_EXAMPLES}, got {args.search_examples}")
    seed_in_range("--seed", args.seed)
    limit = memory_limit(args)
    settings = VerifySettings(num_points=args.num, search_examples=args.search_examples, seed=args.seed,
                              order=args.order, derivative=args.derivative, thresholds=parse_thresholds(args.threshold))
    run = load_run(args.run_dir)
    check_call({"num": verification_bytes(math.prod(run.data.shape), args.num)}, {"num": args.num}, limit)
    report = verify_run(run, settings)
    print(report.to_json() if args.json else format_report(report), flush=True)
    out = run.path / VERIFY_FILE
    write_results(out, report.to_dict())
    if not args.json:
        print(f"written: {out}")
    return 0 if report.passed else 1


def cmd_export(args: argparse.Namespace) -> int:
    from fmmkit.export.folder import export_run

    out = export_run(args.run_dir, args.out, format=args.format, overwrite=args.overwrite)
    print(f"exported {args.run_dir} ({args.format}) to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmmkit", description="Flow map matching: train, sample and evaluate flow maps.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec key, e.g. --set train.steps=500 (repeatable)")

    def add_max_memory(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-memory", type=float, metavar="GIB",
                       help="the most memory (GiB) this call may allocate (default: half of the machine's)")

    p = sub.add_parser("train", help="train a spec into a run directory")
    p.add_argument("spec", nargs="?", help="a TOML file, or the name of a built-in spec (fmmkit spec list)")
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
    add_max_memory(p)
    p.add_argument("--sampler", help="the flow-map sampler (flow_map, consistency, stochastic_flow_map; default: the "
                                     "run's own, consistency for consistency models)")
    p.add_argument("--guidance", type=float, help="guidance scale w, for a run trained with variable guidance")
    p.add_argument("--label", type=int, help="class label of every sample (default: random labels with --guidance)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="score a run at 1, 2, 4, 8 steps and against the teacher ODE")
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, help="samples per row (default eval.num_samples)")
    add_max_memory(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plugins", help="list registered components and the plugins that provide them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("spec", help="check or show a spec (a file or a built-in spec's name); list or copy the built-in specs")
    actions = p.add_subparsers(dest="action", required=True)
    for action, text in (("check", "validate a spec and build every component it names"),
                         ("show", "print a spec with every default filled in")):
        q = actions.add_parser(action, help=text)
        q.add_argument("spec", help="a TOML file, or the name of a built-in spec (fmmkit spec list)")
        add_set(q)
        q.set_defaults(func=cmd_spec)
    q = actions.add_parser("list", help="the built-in specs, with what each trains")
    q.set_defaults(func=cmd_spec_list)
    q = actions.add_parser("copy", help="copy built-in specs into a folder to edit them")
    q.add_argument("items", nargs="+", metavar="NAME... DIR", help="built-in spec names, then the folder")
    q.add_argument("--all", action="store_true", help="every built-in spec (then give only DIR)")
    q.set_defaults(func=cmd_spec_copy)

    p = sub.add_parser("quickstart", help="the main job: a one-step checkerboard flow map trained from data (LSD), eval table and PNG")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--quiet", action="store_true")
    add_set(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("verify", help="measure the flow-map laws of a run (table + verify.json; exit 1 if one fails)")
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=2048, help="points (each with its own random times)")
    p.add_argument("--threshold", action="append", default=[], metavar="LAW=VALUE",
                   help="relative-RMS threshold of one law, e.g. --threshold semigroup=0.1 (repeatable)")
    p.add_argument("--order", choices=TIME_ORDERS, help="time order of (s, u, t) (default: the run's)")
    p.add_argument("--search-examples", type=int, default=200, help="hypothesis examples for the worst triple")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--derivative", choices=["jvp", "finite_difference"], help="default: jvp when the model allows it")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    add_max_memory(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export", help="write a run as a self-describing model folder (or a diffusers pipeline)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the folder to write (a Hugging Face model repository layout)")
    p.add_argument("--format", choices=["fmmkit", "diffusers"], default="fmmkit",
                   help="fmmkit: config.json, model.safetensors, spec.toml, README.md; diffusers: a pipeline folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_export)
    return parser


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit into a closed pipe raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fmmkit`` console script. Never a traceback for what a user can fix: one
    ``fmmkit: error:`` line and exit 2 for a mistake in the command or spec, 1 for a problem of the
    machine (a permission, a full disk, a run another process writes); 128 + N after signal N stopped
    training (130 SIGINT, 143 SIGTERM), 141 when the reader of the output went away (``| head``)."""
    _one_line_warnings()
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except UserError as exc:
        for line in str(exc).splitlines():
            print(f"fmmkit: error: {line}", file=sys.stderr)
        return exc.exit_status
    except TrainingInterrupted as exc:  # the loop said where it stopped and how to continue
        return exc.exit_status
    except KeyboardInterrupt:
        print("fmmkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except OSError as exc:
        place = next((str(v) for v in (getattr(args, k, None) for k in ("out", "resume", "run_dir")) if v), None)
        print(f"fmmkit: error: {describe_os_error(exc, place)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("fmmkit: error: out of memory; ask for fewer points or a smaller model", file=sys.stderr)
        return 1
