"""Distilling models people already have, measured on the digits: a student initialised from its teacher vs
from scratch, the export / torch_module round trip, a diffusers teacher and a latent-space run.

Writes the "Pretrained teachers ..." section of RESULTS.md.

    nice -n 10 python benchmarks/pretrained.py [--threads 1] [--work DIR] [--parts init,round_trip,diffusers,latent]

- init: examples/digits_teacher.toml, then examples/digits_lmd.toml from scratch and with
  ``model.init_from="teacher"``, same seed and budget (train.steps, checkpoints every ``--every`` steps);
  digits_fd of the flow map at 1/2/4/8 steps at every checkpoint (its raw weights; digits_lmd has no EMA),
  and the teacher ODE rows of ``fmmkit eval`` at the end.
- round_trip: ``fmmkit export`` of that teacher, re-imported as a torch_module teacher
  (examples/digits_torch_module_lmd.toml) and distilled with the same seed and budget as the direct run.
- diffusers: fmmkit.demos.tiny_diffusers_teacher, then examples/digits_diffusers_lmd.toml.
- latent: fmmkit.demos.digits_vae, then examples/digits_latent_teacher.toml and digits_latent_lmd.toml.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Pretrained teachers: torch_module / diffusers teachers, latent space, students initialised from the teacher, export"
STEPS = (1, 2, 4, 8)


#: --smoke: extra overrides for every training (a quick check of the script itself; RESULTS.md is left alone)
SMOKE: list[str] = []
#: --teacher-steps / --lmd-steps: train.steps of the digits teacher / of every digits LMD run (empty: the specs')
TEACHER_STEPS: list[str] = []
LMD_STEPS: list[str] = []
#: --reuse: a training whose run directory already holds a finished run (run.json) is not run again
REUSE = False


def run(args: list[str], log: list[str]) -> float:
    """Run a command from the repository root; record it; return its wall-clock seconds."""
    if SMOKE and "train" in args:
        args = [*args, *SMOKE]
    elif SMOKE and any(a.startswith("fmmkit.demos.") for a in args):
        args = [*args, "--steps", "20"]
    log.append(" ".join(args).replace(sys.executable + " -m fmmkit.cli", "fmmkit").replace(sys.executable, "python"))
    out = Path(args[args.index("--out") + 1]) if "train" in args and "--out" in args else None
    if REUSE and out is not None and (out / "run.json").is_file():  # finished by an earlier call: its own time
        return float(json.loads((out / "run.json").read_text())["seconds"])
    start = time.time()
    subprocess.run(args, cwd=ROOT, check=True)
    return time.time() - start


def fmmkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "fmmkit.cli", *args]


def eval_rows(run_dir: Path, log: list[str]) -> list[dict[str, Any]]:
    run(fmmkit("eval", str(run_dir)), log)
    return json.loads((run_dir / "eval.json").read_text())["rows"]


def flow_map_fd(run_dir: Path, weights: Any = None) -> dict[int, float]:
    """{K: digits_fd of the flow map at K steps} of the run (its sampling weights, or ``weights``); no ODE rows."""
    import attrs
    import torch

    from fmmkit.evaluation.scores import evaluate
    from fmmkit.runs.run import load_run, open_run

    base = load_run(run_dir)
    spec = attrs.evolve(base.spec, eval=attrs.evolve(base.spec.eval, ode=[]))
    loaded = open_run(run_dir, spec, base.registry, torch.device("cpu"),
                      weights if weights is not None else base.model.state_dict(), data=base.data,
                      interpolant=base.interpolant)
    return {r.nfe: r.metrics["digits_fd"] for r in evaluate(loaded, write=False)}


def checkpoint_fd(run_dir: Path) -> dict[int, dict[int, float]]:
    """{step: {K: digits_fd at K steps}} for every checkpoint of the run (its raw weights)."""
    from fmmkit.training.checkpoint import list_checkpoints, read_checkpoint
    from fmmkit.training.distributed import DistEnv

    return {step: flow_map_fd(run_dir, read_checkpoint(path, DistEnv()).parts["model"])
            for step, path in list_checkpoints(run_dir)}


def fd_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| sampler | NFE | digits_fd |", "| --- | ---: | ---: |"]
    lines += [f"| {r['label']} | {r['nfe']} | {r['metrics']['digits_fd']:.2f} |" for r in rows]
    return "\n".join(lines)


def part_init(work: Path, threads: int, every: int, log: list[str]) -> tuple[str, dict[str, Any]]:
    common = ["--quiet", "--overwrite", "--set", f"train.threads={threads}"]
    teacher, scratch, init = work / "digits_teacher", work / "digits_lmd", work / "digits_lmd_init"
    seconds = {"teacher": run(fmmkit("train", "examples/digits_teacher.toml", "--out", str(teacher), *common,
                                     *TEACHER_STEPS), log)}
    lmd = ["--set", f"teacher.run=\"{teacher}\"", "--set", f"checkpoint.every={every}", "--set", "checkpoint.keep=100",
           *LMD_STEPS]
    seconds["scratch"] = run(fmmkit("train", "examples/digits_lmd.toml", "--out", str(scratch), *common, *lmd), log)
    seconds["init"] = run(fmmkit("train", "examples/digits_lmd.toml", "--out", str(init), *common, *lmd,
                                 "--set", "model.init_from=\"teacher\""), log)
    curves = {"scratch": checkpoint_fd(scratch), "init": checkpoint_fd(init)}
    teacher_rows = [r for r in eval_rows(scratch, log) if r["label"].startswith("teacher")]
    steps = sorted(curves["scratch"])
    lines = ["| training step | " + " | ".join(f"scratch {k} step{'s' if k > 1 else ''}" for k in STEPS) + " | "
             + " | ".join(f"init {k} step{'s' if k > 1 else ''}" for k in STEPS) + " |",
             "| ---: |" + " ---: |" * (2 * len(STEPS))]
    for step in steps:
        cells = [f"{curves[name][step][k]:.2f}" for name in ("scratch", "init") for k in STEPS]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    from fmmkit.runs.run import load_run

    lmd_steps, teacher_steps = load_run(scratch).spec.train.steps, load_run(teacher).spec.train.steps
    body = (f"digits_teacher.toml ({teacher_steps} steps), then digits_lmd.toml (LMD, semigradient, {lmd_steps} "
            f"steps, batch 64, seed 0) from scratch and with "
            f"`model.init_from=\"teacher\"` (the student's UNet starts from the teacher's weights, the second time "
            f"through a zero-initialised embedding). digits_fd of the flow map (raw weights at each checkpoint, "
            f"eval.num_samples = 2000, lower is better):\n\n" + "\n".join(lines)
            + "\n\nThe teacher's ODE on the same noise:\n\n" + fd_table(teacher_rows)
            + f"\n\nWall-clock: teacher {seconds['teacher']:.0f} s, LMD from scratch {seconds['scratch']:.0f} s, "
              f"LMD initialised {seconds['init']:.0f} s.")
    return body, {"teacher": teacher, "scratch": scratch}


def part_round_trip(work: Path, threads: int, state: dict[str, Any], log: list[str]) -> str:
    common = ["--quiet", "--overwrite", "--set", f"train.threads={threads}"]
    export, via = work / "digits_teacher_export", work / "digits_torch_module_lmd"
    run(fmmkit("export", str(state["teacher"]), "--out", str(export), "--overwrite"), log)
    seconds = run(fmmkit("train", "examples/digits_torch_module_lmd.toml", "--out", str(via), *common, *LMD_STEPS,
                         "--set", f"teacher.kwargs.path=\"{export}\"",
                         "--set", f"teacher.weights=\"{export / 'model.safetensors'}\""), log)
    direct, module = flow_map_fd(state["scratch"]), flow_map_fd(via)
    from safetensors.torch import load_file

    a, b = load_file(str(state["scratch"] / "model.safetensors")), load_file(str(via / "model.safetensors"))
    same = all(bool((a[k] == b[k]).all()) for k in a)
    lines = ["| sampler | direct (teacher.run) | torch_module (exported) | difference |", "| --- | ---: | ---: | ---: |"]
    for k in direct:
        lines.append(f"| flow map, {k} step{'s' if k > 1 else ''} | {direct[k]:.2f} | {module[k]:.2f} | "
                     f"{100 * (module[k] - direct[k]) / direct[k]:+.2f}% |")
    return ("The same digits teacher exported (`fmmkit export`) and re-imported as a `torch_module` teacher "
            "(prediction velocity, process linear, noise at 0), distilled with the same spec, seed and budget as the "
            f"direct run ({seconds:.0f} s): final weights bit-identical: **{'yes' if same else 'no'}**.\n\n" + "\n".join(lines))


def part_diffusers(work: Path, threads: int, log: list[str], ddpm: str | None) -> str:
    folder, lmd = (Path(ddpm) if ddpm else work / "tiny_ddpm_digits"), work / "digits_diffusers_lmd"
    if ddpm:  # made earlier by the same command (default arguments)
        log.append(f"python -m fmmkit.demos.tiny_diffusers_teacher --out {folder} --threads {threads}  (run before)")
        t_teacher = float("nan")
    else:
        t_teacher = run([sys.executable, "-m", "fmmkit.demos.tiny_diffusers_teacher", "--out", str(folder),
                         "--threads", str(threads)], log)
    t_lmd = run(fmmkit("train", "examples/digits_diffusers_lmd.toml", "--out", str(lmd), "--quiet", "--overwrite",
                       "--set", f"teacher.path=\"{folder}\"", "--set", f"train.threads={threads}"), log)
    return ("A diffusers DDPM (UNet2DModel 32/64 channels + DDPMScheduler, epsilon, squaredcos_cap_v2, 2000 steps) "
            "made by fmmkit.demos.tiny_diffusers_teacher, distilled by examples/digits_diffusers_lmd.toml (the VP "
            "process as fmmkit's trig interpolant): digits_fd\n\n" + fd_table(eval_rows(lmd, log))
            + (f"\n\nWall-clock: DDPM {t_teacher:.0f} s, " if t_teacher == t_teacher else "\n\nWall-clock: DDPM made "
               "before this run (--ddpm), ") + f"LMD {t_lmd:.0f} s.")


def part_latent(work: Path, threads: int, log: list[str]) -> str:
    vae, teacher, lmd = work / "digits_vae", work / "digits_latent_teacher", work / "digits_latent_lmd"
    common = ["--quiet", "--overwrite", "--set", f"train.threads={threads}", "--set", f"data.vae=\"{vae}\"",
              "--set", f"data.cache=\"{work / 'latents'}\""]
    t_vae = run([sys.executable, "-m", "fmmkit.demos.digits_vae", "--out", str(vae), "--threads", str(threads)], log)
    t_teacher = run(fmmkit("train", "examples/digits_latent_teacher.toml", "--out", str(teacher), *common), log)
    t_lmd = run(fmmkit("train", "examples/digits_latent_lmd.toml", "--out", str(lmd), *common,
                       "--set", f"teacher.run=\"{teacher}\""), log)
    return ("8x8 digits encoded by a tiny AutoencoderKL (fmmkit.demos.digits_vae) into (4, 4, 4) latents; a "
            "flow-matching teacher and its LMD flow map in latent space, decoded to digits for digits_fd:\n\n"
            + fd_table(eval_rows(lmd, log))
            + f"\n\nWall-clock: VAE {t_vae:.0f} s, latent teacher {t_teacher:.0f} s, latent LMD {t_lmd:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_pretrained"))
    parser.add_argument("--every", type=int, default=300, help="checkpoint (and score) every N steps")
    parser.add_argument("--parts", default="init,round_trip,diffusers,latent")
    parser.add_argument("--ddpm", help="a folder fmmkit.demos.tiny_diffusers_teacher wrote already (skips making it)")
    parser.add_argument("--teacher-steps", type=int, help="train.steps of the digits teacher (default: the spec's)")
    parser.add_argument("--lmd-steps", type=int, help="train.steps of every digits LMD run (default: the spec's)")
    parser.add_argument("--reuse", action="store_true", help="keep the finished runs in --work (run the same "
                        "command again after an interruption; wall-clock times are the runs' own)")
    parser.add_argument("--smoke", action="store_true", help="20 training steps everywhere; do not write RESULTS.md")
    args = parser.parse_args()
    if args.smoke:
        SMOKE.extend(["--set", "train.steps=20", "--set", "eval.num_samples=100", "--set", "train.log_every=10"])
    global REUSE
    REUSE = args.reuse
    if args.teacher_steps:
        TEACHER_STEPS.extend(["--set", f"train.steps={args.teacher_steps}"])
    if args.lmd_steps:
        LMD_STEPS.extend(["--set", f"train.steps={args.lmd_steps}"])
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    load_before = os.getloadavg()[0]
    log: list[str] = []
    sections = []
    state: dict[str, Any] = {}
    if "init" in parts or "round_trip" in parts:
        body, state = part_init(work, args.threads, args.every, log)
        if "init" in parts:
            sections.append(("### Digits LMD: initialised from the teacher vs from scratch, same budget", body))
    if "round_trip" in parts:
        sections.append(("### Export and re-import: the digits round trip", part_round_trip(work, args.threads, state, log)))
    if "diffusers" in parts:
        sections.append(("### A diffusers teacher", part_diffusers(work, args.threads, log, args.ddpm)))
    if "latent" in parts:
        sections.append(("### Latent space", part_latent(work, args.threads, log)))
    load_after = os.getloadavg()[0]
    head = (f"Machine: 2-core CPU, no GPU, torch and Python as in the project venv; shared with other jobs (1-minute "
            f"load average {load_before:.1f} at the start, {load_after:.1f} at the end): wall-clock times are upper "
            f"bounds. Every training ran with train.threads = {args.threads}.\n\n"
            f"Reproduce: `nice -n 5 python benchmarks/pretrained.py --threads {args.threads} --parts {args.parts} "
            f"--every {args.every}"
            + (f" --teacher-steps {args.teacher_steps}" if args.teacher_steps else "")
            + (f" --lmd-steps {args.lmd_steps}" if args.lmd_steps else "") + "`; "
            "the commands it ran:\n\n" + "\n".join(f"    {c}" for c in log))
    text = head + "\n\n" + "\n\n".join(f"{t}\n\n{b}" for t, b in sections)
    if args.smoke:
        print(text)
    else:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
