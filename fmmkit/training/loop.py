"""The training loop: run whatever the spec assembled, on one process or many, and write the run.

One optimiser step (``train_pipeline``):
  1. each micro-batch this process owns (``fmmkit.training.sharding``) draws its data from its own
     stream and runs the loss (under bf16 autocast on CUDA, JVPs in float32; compiled if asked),
     then backpropagates loss / (micro-batches per process);
  2. gradients are averaged over processes (one all-reduce; FSDP2 reduce-scatters its shards);
  3. the loss, its terms and the stop flag are averaged over processes in one small all-reduce;
  4. a non-finite loss or gradient stops the run (or skips the step, ``train.on_nonfinite``);
  5. clip, optimiser and schedule step, EMA update, the loss's own ``on_step_end``;
  6. log, checkpoint, pictures; on SIGINT/SIGTERM save a checkpoint and exit.

A run directory holds ``spec.toml``, ``metrics.jsonl``, ``events.jsonl``, ``checkpoints/``, the final raw weights
``model.safetensors`` and one ``ema-LABEL.safetensors`` per EMA, ``run.json`` and ``samples.png``.
``resume_run(RUN_DIR)`` (``fmmkit train --resume RUN_DIR``) continues from the newest readable
checkpoint; the result is bit-identical to an uninterrupted run on the same hardware.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fmmkit.registry import Registry, get_registry
from fmmkit.runs.files import atomic_write_text
from fmmkit.runs.layout import (CHECKPOINT_DIR, EVENTS_FILE, METRICS_FILE, PICTURES_DIR, RUN_INFO_FILE, SPEC_FILE,
                                TENSORBOARD_DIR, picture_file, sampling_label, weights_file)
from fmmkit.runs.run import load_run, open_run
from fmmkit.spec import Spec, SpecError, load_spec, spec_to_toml
from fmmkit.training import distributed as dist
from fmmkit.training.build import Pipeline, build_pipeline
from fmmkit.training.checkpoint import list_checkpoints, load_latest, remove_staging
from fmmkit.training.compile import make_compute
from fmmkit.training.distributed import DistEnv
from fmmkit.training.ema import EMA
from fmmkit.training.errors import TrainingError
from fmmkit.training.logs import RunLog
from fmmkit.training.optim import loss_parameters, make_optimizer, make_scheduler
from fmmkit.training.precision import autocast, autocast_dtype, with_float32_derivatives
from fmmkit.training.resume import check_resumable
from fmmkit.training.sharding import BatchPlan, Stream
from fmmkit.training.signals import StopFlag, TrainingInterrupted
from fmmkit.training.state import TrainState, export_weights, restore, weights_state, write_checkpoint
from fmmkit.version import __version__


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Create the run directory; refuse to write into an existing run unless ``overwrite``."""
    check_run_dir(out, overwrite)
    if overwrite:  # a fresh run must not inherit the old run's checkpoints or logs
        for name in (CHECKPOINT_DIR, TENSORBOARD_DIR, PICTURES_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (METRICS_FILE, EVENTS_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def check_run_dir(out: Path, overwrite: bool) -> None:
    """SpecError if ``out`` already holds a run and ``overwrite`` is off."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SpecError([f"{out}: a run directory already exists there; choose another --out, pass --overwrite "
                         f"to replace it, or continue it with 'fmmkit train --resume {out}'"])


def default_run_dir(spec: Spec) -> Path:
    """runs/<spec name>."""
    return Path("runs") / spec.name


# ----------------------------------------------------------------------------------------------
# pictures


def save_step_pictures(out: Path, pipeline: Pipeline, state: TrainState, env: DistEnv) -> None:
    """Sample pictures of the sampling weights at the current step (rank 0 draws, all gather)."""
    from fmmkit.evaluation import save_pictures

    label = sampling_label(pipeline.spec)
    tensors = weights_state(state, label)
    if not env.is_main:
        return
    run = open_run(out, pipeline.spec, pipeline.registry or get_registry(), pipeline.device, tensors, label=label,
                   data=pipeline.data, interpolant=pipeline.interpolant)
    save_pictures(run, out / picture_file(state.step))


# ----------------------------------------------------------------------------------------------
# one step


def _as_float(value: Any, device: torch.device) -> Tensor:
    return torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, dtype=torch.float64, device=device)


def nonfinite_problem(step: int, values: dict[str, float], grad_norm: float, state: TrainState) -> str | None:
    """A one-line description of a non-finite loss term or gradient at ``step``, or None."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        named = [k for k in bad if k != "loss"] or ["loss"]
        return f"step {step}: non-finite loss term '{named[0]}' ({terms})"
    if not math.isfinite(grad_norm):
        first = next((n for n, p in state.named_params()
                      if p.grad is not None and not bool(torch.isfinite(dist.local(p.grad)).all())), "?")
        return f"step {step}: non-finite gradient (norm {grad_norm}; first in parameter '{first}') with a finite loss"
    return None


# ----------------------------------------------------------------------------------------------
# the loop


def forward_backward(pipeline: Pipeline, state: TrainState, plan: BatchPlan, compute: Any,
                     dtype: torch.dtype | None, step: int) -> tuple[list[str], Tensor]:
    """Loss and backward of each micro-batch this process owns (gradients accumulate as the mean);
    returns the term names and the micro-batch mean of [loss, *terms] (float64)."""
    device = pipeline.device
    rows, keys = [], []
    for stream in state.streams:
        batch = pipeline.data.sample(plan.micro_batch_size, stream.data).to(device)
        with stream.loss_rng(), autocast(device, dtype):
            loss, terms = compute(batch.x1, batch.y, step)
        (loss / len(state.streams)).backward()
        keys = keys or sorted(terms)
        rows.append(torch.stack([_as_float(loss, device), *(_as_float(terms[k], device) for k in keys)]))
    return keys, torch.stack(rows).mean(dim=0)


def synchronise(state: TrainState, env: DistEnv, sharded: bool, keys: list[str], means: Tensor,
                stop: StopFlag) -> tuple[dict[str, float], bool]:
    """Average gradients (FSDP2 already reduced the sharded ones) and the logged values over
    processes, and agree on a stop request; returns ({"loss": .., term: ..}, stop)."""
    dist.average_gradients(loss_parameters(state.loss) if sharded else state.params(), env)
    flag = torch.tensor([float(stop.requested)], dtype=torch.float64, device=means.device)
    reduced = dist.all_reduce_(torch.cat([means / env.world_size, flag]), env).tolist()
    return dict(zip(["loss", *keys], reduced[:-1])), reduced[-1] > 0


def train_pipeline(pipeline: Pipeline, out: Path, progress: bool = True, *, env: DistEnv | None = None,
                   resume: bool = False) -> dict[str, float]:
    """Optimise the pipeline's loss up to ``train.steps`` steps; checkpoints, logs and weights go to ``out``.

    Every process of a torchrun job calls this with its ``env``; rank 0 writes the files.
    """
    env = env or DistEnv()
    spec, device, cfg = pipeline.spec, pipeline.device, pipeline.spec.train
    plan = BatchPlan.make(cfg, env, spec.source)
    sampling_label(spec)  # an unknown ema.sample_with fails before training, not after
    sharded = cfg.parallel == "fsdp" and env.active
    model = pipeline.model
    if sharded:
        dist.shard_model(model.backbone, env, device)
    else:
        dist.broadcast_parameters(model, env)
    params = [p for p in model.parameters() if p.requires_grad] + loss_parameters(pipeline.loss)
    optimizer = make_optimizer(params, spec.optim)
    state = TrainState(model, pipeline.loss, optimizer, make_scheduler(optimizer, cfg.steps, spec.optim),
                       EMA(model, spec.ema, cfg.batch_size), [Stream(j, cfg.seed, device) for j in plan.slots])
    if resume:
        if env.is_main:
            remove_staging(out)
        restore(state, load_latest(out, env, device, all_ranks=("rng",)), env, plan, cfg.parallel)
    dtype = autocast_dtype(cfg.precision, device)
    compute = make_compute(with_float32_derivatives(model, dtype, device), pipeline.loss, pipeline.teacher, spec)
    log = RunLog(out, name=spec.name, total=cfg.steps, start=state.step, active=env.is_main, progress=progress,
                 tensorboard=spec.log.tensorboard)
    if resume:
        log.event(state.step, "resume")
    last: dict[str, float] = {}
    window = (time.perf_counter(), state.step)
    model.train()
    try:
        with StopFlag(spec.checkpoint.on_signal) as stop:
            while state.step < cfg.steps:
                step = state.step
                optimizer.zero_grad(set_to_none=True)
                keys, means = forward_backward(pipeline, state, plan, compute, dtype, step)
                values, stop_now = synchronise(state, env, sharded, keys, means, stop)
                grad_norm = float(dist.gradient_norm(state.params(), env, device))
                problem = nonfinite_problem(step + 1, values, grad_norm, state)
                if problem is None:
                    dist.clip_gradients(state.params(), grad_norm, spec.optim.grad_clip)
                    optimizer.step()
                state.scheduler.step()
                state.step = step + 1
                if problem is None:
                    state.ema.update(model, state.step, state.step * cfg.batch_size)
                    pipeline.loss.on_step_end(model, step)
                elif cfg.on_nonfinite == "skip":
                    state.skipped += 1
                    log.event(state.step, "skipped", reason=problem)
                else:
                    log.event(state.step, "stopped", reason=problem)
                    kept = list_checkpoints(out)
                    where = f"the last good checkpoint is {kept[-1][1]}" if kept else "no checkpoint was written"
                    raise TrainingError(f"{problem}; {where}. Lower optim.lr, set optim.grad_clip, or set "
                                        "train.on_nonfinite = \"skip\"")
                log.advance()
                if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                    now = time.perf_counter()
                    rate = (state.step - window[1]) * cfg.batch_size / max(now - window[0], 1e-9)
                    window = (now, state.step)
                    last = {**values, "lr": state.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                            "samples_per_s": rate}
                    log.metrics(state.step, last)
                every = spec.checkpoint.every
                if (every and state.step % every == 0) or state.step == cfg.steps or stop_now:
                    path = write_checkpoint(out, state, env, spec, plan, sharded)
                    log.event(state.step, "checkpoint", path=str(path))
                if stop_now:
                    log.event(state.step, "interrupted", signal=stop.name)
                    if env.is_main:
                        print(f"fmmkit: stopped at step {state.step} ({stop.name or 'signal on another process'}); "
                              f"checkpoint saved; continue with: fmmkit train --resume {out}", file=sys.stderr)
                    raise TrainingInterrupted(f"stopped at step {state.step}")
                pictures = spec.log.pictures_every
                if pictures and state.step % pictures == 0 and state.step < cfg.steps:
                    save_step_pictures(out, pipeline, state, env)
        if not list_checkpoints(out) or list_checkpoints(out)[-1][0] != state.step:
            write_checkpoint(out, state, env, spec, plan, sharded)  # a run resumed at its end, or 0 steps
        model.eval()
        export_weights(out, state, env)
    finally:
        log.close()
    return last


# ----------------------------------------------------------------------------------------------
# entry points


def train(spec: str | Path | dict[str, Any] | Spec, *, out: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          overwrite: bool = False, progress: bool = True, pictures: bool = True, registry: Registry | None = None,
          resume: bool = False) -> Path:
    """Train a spec (path, dict or Spec) into a run directory and return its path.

    With ``resume=True`` the run in ``out`` continues from its newest readable checkpoint. Under
    torchrun every process calls this; rank 0 writes the run directory.
    """
    registry = registry or get_registry()
    resolved = load_spec(spec, overrides, registry)
    out_dir = Path(out) if out is not None else default_run_dir(resolved)
    if resolved.train.threads:
        torch.set_num_threads(resolved.train.threads)
    with dist.distributed_session(resolved.train.device) as (env, device):
        if resume:
            check_resumable(out_dir, resolved, registry)
        else:
            check_run_dir(out_dir, overwrite)
        torch.manual_seed(resolved.train.seed)
        pipeline = build_pipeline(resolved, registry, device)
        dist.barrier(env)  # every process has checked the directory before rank 0 writes into it
        if env.is_main:
            if not resume:
                prepare_run_dir(out_dir, overwrite)
            atomic_write_text(out_dir / SPEC_FILE, spec_to_toml(resolved))
        dist.barrier(env)
        started = time.time()
        last = train_pipeline(pipeline, out_dir, progress, env=env, resume=resume)
        if env.is_main:
            meta = {"fmmkit": __version__, "torch": torch.__version__, "device": str(device),
                    "processes": env.world_size, "steps": resolved.train.steps,
                    "weights": weights_file(sampling_label(resolved)),
                    "seconds": round(time.time() - started, 2), "final": last}
            atomic_write_text(out_dir / RUN_INFO_FILE, json.dumps(meta, indent=2))
            if pictures:
                from fmmkit.evaluation import save_pictures

                save_pictures(load_run(out_dir, registry=registry))
        dist.barrier(env)
    return out_dir


def resume_run(run_dir: str | Path, *, overrides: list[str] | tuple[str, ...] = (), progress: bool = True,
               pictures: bool = True, registry: Registry | None = None) -> Path:
    """Continue the run in ``run_dir`` from its newest readable checkpoint (its own spec.toml, with
    ``overrides`` such as ``train.steps=N`` to train longer)."""
    run_dir = Path(run_dir)
    if not (run_dir / SPEC_FILE).is_file():
        raise SpecError([f"{run_dir}: not a run directory (no {SPEC_FILE}); start a run with 'fmmkit train SPEC --out DIR'"])
    return train(run_dir / SPEC_FILE, out=run_dir, overrides=overrides, progress=progress, pictures=pictures,
                 registry=registry, resume=True)
