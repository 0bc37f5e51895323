"""The training engine's speed: torch.compile against eager, and 1 against 2 torchrun processes.

Writes the "The training engine for real runs" section of RESULTS.md. Every ratio compares figures
measured in the same invocation (same machine load), so the ratios are meaningful even where the
absolute numbers move with what else the shared machine is doing.

    nice -n 10 python benchmarks/engine.py [--compile-steps 30] [--process-steps 120] [--compile-threads 1]

Compile: one training step (loss with its JVPs, backward, Adam step) through the engine's own
``make_compute``, MLP width 256 x depth 4, batch 1024; medians of alternating eager and compiled
steps after a warm-up, and the first compiled call (compile time). Processes: the real ``fmmkit
train`` on the same model with LSD, global batch 2048 (2 micro-batches), throughput from
metrics.jsonl over the steps after the first log window, 1 and 2 processes interleaved.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

TITLE = ("The training engine for real runs: checkpoints and exact resume, EMA, mixed precision, torch.compile, "
         "multi-process training with torchrun (DDP and FSDP2), logging")
MACHINE = "2-core CPU, no GPU, torch 2.14.1"
LOSSES = ("flow_matching", "lagrangian_self_distillation", "meanflow")


def spec_dict(loss: str, batch: int, steps: int, compiled: bool = False) -> dict[str, Any]:
    """The benchmark run: checkerboard, MLP 256 x 4, the given loss."""
    return {"name": "bench_engine", "data": {"kind": "checkerboard"},
            "model": {"kind": "mlp", "width": 256, "depth": 4},
            "loss": {"kind": loss}, "optim": {"lr": 1e-3},
            "train": {"steps": steps, "batch_size": batch, "device": "cpu", "log_every": max(1, steps // 4),
                      "micro_batches": 2},
            "checkpoint": {"every": 0}, "log": {"tensorboard": False}, "compile": {"enabled": compiled}}


class StepTimer:
    """One training step (loss with its JVPs, backward, Adam step) through the engine's ``make_compute``."""

    def __init__(self, loss: str, compiled: bool) -> None:
        from fmmkit.spec import load_spec
        from fmmkit.training.build import build_pipeline
        from fmmkit.training.optim import make_optimizer
        from fmmkit.training.compile import make_compute

        torch.manual_seed(0)
        spec = load_spec(spec_dict(loss, 1024, 1, compiled))
        self.pipeline = build_pipeline(spec, device=torch.device("cpu"))
        self.compute = make_compute(self.pipeline.model, self.pipeline.loss, self.pipeline.teacher, spec)
        self.optimizer = make_optimizer(list(self.pipeline.model.parameters()), spec.optim)
        self.generator = torch.Generator().manual_seed(0)
        self.step = 0
        for name in ("times", "guidance"):  # fill cache_loss_defaults' caches outside the compiled region
            getattr(self.pipeline.loss, name, None)

    def __call__(self) -> float:
        """Seconds of one step."""
        batch = self.pipeline.data.sample(1024, self.generator)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        value, _ = self.compute(batch.x1, batch.y, self.step)
        value.backward()
        self.optimizer.step()
        self.step += 1
        return time.perf_counter() - start


def paired_times(loss: str, steps: int, warmup: int = 3) -> tuple[float, float, float]:
    """(eager s/step, compiled s/step, first compiled step s): medians of alternating eager and
    compiled steps, so both see the same machine load."""
    torch._dynamo.reset()
    eager, compiled = StepTimer(loss, False), StepTimer(loss, True)
    first = compiled()
    for _ in range(warmup):
        eager(), compiled()
    pairs = [(eager(), compiled()) for _ in range(steps)]
    return statistics.median(e for e, _ in pairs), statistics.median(c for _, c in pairs), first


def compile_rows(steps: int, threads: int) -> list[str]:
    torch.set_num_threads(threads)
    rows = []
    for loss in LOSSES:
        eager, compiled, first = paired_times(loss, steps)
        rows.append(f"| {loss} | {eager * 1e3:.1f} | {compiled * 1e3:.1f} | **{eager / compiled:.2f}x** | {first:.0f} |")
        print(rows[-1], flush=True)
    return rows


def throughput(out: Path, processes: int, threads: int, steps: int) -> float:
    """Samples per second of ``fmmkit train`` on ``processes`` torchrun processes (after the first log window)."""
    spec = out.parent / f"{out.name}.json"
    spec.write_text(json.dumps(spec_dict("lagrangian_self_distillation", 2048, steps)))
    toml = out.parent / f"{out.name}.toml"
    from fmmkit.spec.toml_writer import dumps

    toml.write_text(dumps(json.loads(spec.read_text())))
    bin_dir = Path(sys.executable).parent
    args = ["train", str(toml), "--out", str(out), "--quiet", "--set", f"train.threads={threads}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        command = [str(bin_dir / "fmmkit"), *args]
    else:
        command = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", str(processes), "-m", "fmmkit.cli", *args]
    subprocess.run(command, check=True, env=env, capture_output=True)
    windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in windows if "samples_per_s" in r][1:]
    return statistics.mean(rates)


def process_rows(steps: int, rounds: int = 2) -> list[str]:
    """Each configuration ``rounds`` times, interleaved, so that all see the same machine load."""
    configs = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2),
               ("2 processes x 1 thread (torchrun, gloo, DDP)", 2, 1)]
    rates: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for label, processes, threads in configs:
                rates[label].append(throughput(Path(tmp) / f"p{processes}t{threads}r{r}", processes, threads, steps))
                print(label, f"{rates[label][-1]:,.0f} samples/s", flush=True)
    base = statistics.mean(rates[configs[0][0]])
    return [f"| {label} | {statistics.mean(rates[label]):,.0f} | {statistics.mean(rates[label]) / base:.2f} |"
            for label, _, _ in configs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-steps", type=int, default=30)
    parser.add_argument("--process-steps", type=int, default=120)
    parser.add_argument("--compile-threads", type=int, default=1,
                        help="1 by default: on a loaded 2-core machine 2-thread kernels mostly wait for a core")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    compile_table = compile_rows(args.compile_steps, args.compile_threads)
    process_table = process_rows(args.process_steps)
    after = os.getloadavg()[0]
    body = f"""Machine: {MACHINE} (shared with other work: 1-minute load average {load:.1f} at the start and
{after:.1f} at the end of the run, so absolute times are inflated; each ratio compares figures from the same run).
Reproduce: `nice -n 10 .venv/bin/python benchmarks/engine.py --compile-steps {args.compile_steps} --process-steps {args.process_steps} --compile-threads {args.compile_threads}`.

torch.compile (inductor) of the training step (loss with its JVPs, backward; Adam step eager), MLP 256 x 4,
batch 1024, {args.compile_threads} thread(s); medians over {args.compile_steps} alternating eager / compiled steps after warm-up.
The first compiled step includes compiling (inductor's on-disk cache shortens it when the graphs were seen before).

| loss | eager ms/step | compiled ms/step | speed-up | first compiled step (s, compile time) |
|---|---|---|---|---|
{chr(10).join(compile_table)}

Throughput of `fmmkit train` with LSD, MLP 256 x 4, global batch 2048 (2 micro-batches), {args.process_steps} steps,
samples/s after the first log window, mean of 2 interleaved rounds (the 2-process run:
`torchrun --standalone --nproc_per_node 2 -m fmmkit.cli train ...`):

| processes | samples/s | ratio to 1 process x 1 thread |
|---|---|---|
{chr(10).join(process_table)}
"""
    write_section(TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
