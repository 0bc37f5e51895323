"""Nothing lost, no traceback: replay issue 14's probe set as a user would, and count what went wrong.

Every probe runs the real ``fmmkit`` command line in a subprocess (crafted specs, bad data, bad
arguments, damaged and forged checkpoints, kill -9 at random moments and inside checkpoint writes,
SIGTERM / SIGINT, concurrent writers, permission bits, a small tmpfs that fills up, broken pipes).
Each outcome is classified:

  ok              the command succeeded where it should (a damaged checkpoint skipped, a resume, ...)
  one-line error  it refused with one ``fmmkit: error:`` line and the expected exit status
                  (2: a user mistake, 1: an environment problem)
  traceback       a Python traceback reached the user (must be 0)
  other failure   a wrong exit status, an accepted mistake, a multi-line error, a crash or a hang (must be 0)

and every run directory the probes leave behind is checked for files that disagree (spec.toml,
run.json, the final weights, the newest checkpoint and the event log must tell one story; a refused
writer must leave the run it touched unchanged). Runs continued after kill -9, SIGTERM, SIGINT, a
full disk or a damaged checkpoint are compared bit for bit with an uninterrupted run.

    nice -n 5 python benchmarks/reliability.py [--kills 12] [--keep DIR] [--write]

``--write`` records the table in benchmarks/RESULTS.md. Permissions are probed as an ordinary user,
or, when run as root, under ``setpriv`` without the capabilities that bypass permission bits; the
disk-full probes mount a tmpfs when the machine allows it (root) and say so when it does not. Every
subprocess runs under an address-space limit, so a probe that would allocate without bound fails
instead of taking the shared machine down.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_checks import run_problems, snapshot  # noqa: E402
from results_file import machine, write_section  # noqa: E402

TITLE = "Reliability: issue 14's probe set (nothing lost, no traceback)"
#: Address-space limit of every probe process (a torch process maps ~4 GiB before doing anything).
MEMORY_LIMIT = 8 * 2**30
TRACEBACK = "Traceback (most recent call last)"

OK, ONE_LINE, TRACEBACKS, OTHER = "ok", "one-line error", "traceback", "other failure"


@dataclass
class Result:
    """What one command did."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False


@dataclass
class Record:
    """The classified outcome of one probe."""

    name: str
    group: str
    outcome: str
    detail: str = ""
    identical: bool | None = None  # a resumed run compared with an uninterrupted one


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def unprivileged_prefix() -> list[str] | None:
    """A prefix under which permission bits apply, or None when there is none on this machine."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report an error (warnings and argparse's usage block left out)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("fmmkit: warning:")]
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if ": error:" in line]
    return lines


@dataclass
class Lab:
    """The probes' working directory and the ways to run fmmkit in it."""

    root: Path
    records: list[Record] = field(default_factory=list)
    runs: set[Path] = field(default_factory=set)
    watched: list[tuple[str, Path, dict[str, str]]] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, "FMMKIT_CACHE_DIR": str(self.root / "cache"), "PYTHONUNBUFFERED": "1"}
        return {**env, **(extra or {})}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fmmkit.cli", *args]

    def popen(self, *args: str, prefix: list[str] | None = None, env: dict[str, str] | None = None,
              **kwargs) -> subprocess.Popen:  # noqa: ANN003
        return subprocess.Popen([*(prefix or []), *self.command(*args)], cwd=self.root, env=self.env(env),
                                preexec_fn=_limit_memory, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **kwargs)

    def fmmkit(self, *args: str, prefix: list[str] | None = None, env: dict[str, str] | None = None,
               timeout: float = 600) -> Result:
        """Run ``fmmkit ARGS`` to completion (or the timeout)."""
        start = time.perf_counter()
        proc = self.popen(*args, prefix=prefix, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        return Result(list(args), proc.returncode, out, err, time.perf_counter() - start, timed_out)

    def shell(self, command: str, timeout: float = 600) -> Result:
        """A shell pipeline (for broken pipes); ``FMMKIT`` in it is replaced by the fmmkit command."""
        line = command.replace("FMMKIT", " ".join(self.command()))
        start = time.perf_counter()
        proc = subprocess.run(["sh", "-c", line], cwd=self.root, env=self.env(), capture_output=True, text=True,
                              timeout=timeout, preexec_fn=_limit_memory)
        return Result([command], proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------

    def record(self, name: str, group: str, outcome: str, detail: str = "", identical: bool | None = None) -> Record:
        rec = Record(name, group, outcome, detail, identical)
        self.records.append(rec)
        mark = {OK: ".", ONE_LINE: ".", TRACEBACKS: "T", OTHER: "X"}[outcome]
        print(f"{mark} {group:<12} {name:<48} {outcome:<15} {detail[:140]}", flush=True)
        return rec

    def judge(self, name: str, group: str, result: Result, expect: str | int) -> Record:
        """Classify ``result``: ``expect`` is "ok", an exit status (1 or 2), or "error" (1 or 2)."""
        lines = error_lines(result.stderr)
        first = next((line for line in lines if "error" in line), lines[-1] if lines else "")
        if TRACEBACK in result.stderr:
            last = [line for line in result.stderr.splitlines() if line.strip()][-1]
            return self.record(name, group, TRACEBACKS, last)
        if result.timed_out:
            return self.record(name, group, OTHER, f"no answer within the timeout ({result.seconds:.0f} s)")
        if expect == "ok":
            if result.code == 0:
                return self.record(name, group, OK, result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "")
            return self.record(name, group, OTHER, f"exit {result.code}, expected success: {first}")
        statuses = (1, 2) if expect == "error" else (expect,)
        if result.code == 0:
            return self.record(name, group, OTHER, "accepted (exit 0), expected a refusal")
        if result.code not in statuses:
            return self.record(name, group, OTHER, f"exit {result.code}, expected {statuses}: {first}")
        if len(lines) != 1 or ": error:" not in lines[0]:
            return self.record(name, group, OTHER, f"{len(lines)} error lines: {' | '.join(lines)[:200]}")
        return self.record(name, group, ONE_LINE, lines[0])

    def probe(self, name: str, group: str, *args: str, expect: str | int = 2, watch: Path | None = None,
              prefix: list[str] | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> Result:
        """Run one command, classify it; a refused command must leave ``watch`` (a run) unchanged."""
        before = snapshot(watch) if watch is not None else None
        result = self.fmmkit(*args, prefix=prefix, env=env, timeout=timeout)
        rec = self.judge(name, group, result, expect)
        if watch is not None and rec.outcome == ONE_LINE and snapshot(watch) != before:
            rec.outcome, rec.detail = OTHER, f"refused, but changed {watch}: {rec.detail}"
        return result

    def track(self, *runs: Path) -> None:
        """Run directories to check for disagreeing files at the end."""
        self.runs.update(Path(r) for r in runs)


# ----------------------------------------------------------------------------------------------
# the table


def summary(lab: Lab, problems: dict[Path, list[str]], seconds: float, note: Iterable[str]) -> str:
    counts = Counter(r.outcome for r in lab.records)
    resumed = [r for r in lab.records if r.identical is not None]
    rows = [
        ("probes run", len(lab.records)),
        ("ok (succeeded where they should)", counts[OK]),
        ("one-line errors", counts[ONE_LINE]),
        ("tracebacks (must be 0)", counts[TRACEBACKS]),
        ("other failures: wrong status, accepted mistakes, multi-line errors, crashes, hangs (must be 0)",
         counts[OTHER]),
        ("run directories checked", len(problems)),
        ("runs whose files disagree (must be 0)", sum(1 for p in problems.values() if p)),
        ("resumes bit-identical to an uninterrupted run", f"{sum(r.identical for r in resumed)} / {len(resumed)}"),
    ]
    lines = ["| | count |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)]
    groups = sorted({r.group for r in lab.records})
    lines += ["", "| group | probes | ok | one-line errors | tracebacks | other failures |", "|---|---|---|---|---|---|"]
    for g in groups:
        c = Counter(r.outcome for r in lab.records if r.group == g)
        lines.append(f"| {g} | {sum(c.values())} | {c[OK]} | {c[ONE_LINE]} | {c[TRACEBACKS]} | {c[OTHER]} |")
    bad = [r for r in lab.records if r.outcome in (TRACEBACKS, OTHER)]
    if bad:
        lines += ["", "Failures:", *(f"- {r.group} / {r.name}: {r.outcome}: {r.detail}" for r in bad)]
    disagree = {run: p for run, p in problems.items() if p}
    if disagree:
        lines += ["", "Runs whose files disagree:", *(f"- {run}: {'; '.join(p)}" for run, p in disagree.items())]
    lines += ["", *note, f"Wall-clock: {seconds / 60:.1f} min."]
    return "\n".join(lines)


def main() -> None:
    from reliability_probes import ALL_GROUPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="kill -9 trials at random moments")
    parser.add_argument("--keep", help="work in this directory and keep it (default: a temporary one, removed)")
    parser.add_argument("--only", action="append", default=[], help="run only these probe groups")
    parser.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fmmkit-reliability-"))
    root.mkdir(parents=True, exist_ok=True)
    lab = Lab(root.resolve())
    load_start, start = os.getloadavg(), time.perf_counter()
    notes: list[str] = []
    try:
        for name, group in ALL_GROUPS.items():
            if args.only and name not in args.only:
                continue
            notes += group(lab, kills=args.kills) or []
        problems = {run: run_problems(run) for run in sorted(lab.runs) if run.is_dir()}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    load_end = os.getloadavg()
    seconds = time.perf_counter() - start
    table = summary(lab, problems, seconds, notes)
    print("\n" + table)
    command = "nice -n 5 .venv/bin/python benchmarks/reliability.py" + (f" --kills {args.kills}" if args.kills != 12 else "")
    body = (f"Command: `{command} --write`. Machine: {machine()}; 1-minute load average {load_start[0]:.1f} at the "
            f"start and {load_end[0]:.1f} at the end (shared with other jobs). Every probe is a real `fmmkit` "
            f"subprocess under a {MEMORY_LIMIT // 2**30} GiB address-space limit; the list of probes is "
            "benchmarks/reliability_probes.py.\n\n" + table)
    if args.write:
        write_section(TITLE, body)
    counts = Counter(r.outcome for r in lab.records)
    sys.exit(1 if counts[TRACEBACKS] or counts[OTHER] or any(problems.values()) else 0)


if __name__ == "__main__":
    main()

