"""The training loop: run whatever the spec assembled, on one process or many, and write the run.

One optimiser step (``train_pipeline``):
  0. the loss's ``begin_step`` (per-step state it reads as tensors: the gap curriculum's factor);
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

import contextlib
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.registry import Registry, get_registry
from fmmkit.runs.files import atomic_write_json, atomic_write_text
from fmmkit.runs.layout import (CHECKPOINT_DIR, EVENTS_FILE, LOCK_FILE, METRICS_FILE, PICTURES_DIR, RUN_INFO_FILE,
                                SPEC_FILE, TENSORBOARD_DIR, picture_file, sampling_label, weights_file)
from fmmkit.runs.lock import writer_lock
from fmmkit.runs.plugins import plugins_used
from fmmkit.runs.run import load_run, open_run
from fmmkit.spec import Spec, SpecError, load_spec, spec_to_toml
from fmmkit.spec.loader import attribute_to_overrides
from fmmkit.spec.build import check_data
from fmmkit.spec.schema import ComponentSpec
from fmmkit.training import distributed as dist
from fmmkit.training.build import Pipeline, build_pipeline
from fmmkit.training.checkpoint import list_checkpoints, load_latest, remove_staging
from fmmkit.training.autocompile import AutoCompile
from fmmkit.training.compile import make_compute
from fmmkit.training.distributed import DistEnv
from fmmkit.training.ema import EMA
from fmmkit.training.errors import TrainingError
from fmmkit.training.logs import RunLog
from fmmkit.training.optim import loss_parameters, lr_factor, make_optimizer, make_scheduler
from fmmkit.training.precision import autocast, autocast_dtype, with_float32_derivatives
from fmmkit.training.resume import check_resumable
from fmmkit.training.sharding import BatchPlan, Stream
from fmmkit.training.signals import StopFlag, TrainingInterrupted
from fmmkit.training.threads import ThreadGovernor
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
    """SpecError if ``out`` already holds a run (anything but the lock file) and ``overwrite`` is off;
    also if ``out`` is a file."""
    if out.exists() and not out.is_dir():
        raise SpecError([f"{out}: a file is there, not a run directory; choose another --out"])
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not overwrite:
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


def nonfinite_weights(step: int, state: TrainState, env: DistEnv, device: torch.device) -> str | None:
    """A one-line description of a parameter the optimiser step at ``step`` made non-finite, or None
    (one fused norm per step; every process agrees, since FSDP shards differ)."""
    params = [dist.local(p.detach()) for p in state.params()]
    finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()) if params else True
    if dist.all_agree(finite, env, device):
        return None
    first = next((n for n, p in state.named_params() if not bool(torch.isfinite(dist.local(p.detach())).all())),
                 "on another process")
    return f"step {step}: the optimiser step made parameter '{first}' non-finite (the loss and gradients were finite)"


def _stop_message(problem: str, out: Path, advice: str) -> str:
    kept = list_checkpoints(out)
    if kept:
        return (f"{problem}; the last good checkpoint is {kept[-1][1]}. {advice}, then continue with "
                f"'fmmkit train --resume {out} --set optim.lr=...'")
    return f"{problem}; no checkpoint was written. {advice}, then start again with --overwrite"


def apply_resumed_lr(state: TrainState, spec: Spec) -> None:
    """A resume with another optim.lr: the schedule continues from the checkpoint's step at the new base rate."""
    scheduler = state.scheduler
    if all(base == spec.optim.lr for base in scheduler.base_lrs):
        return
    factor = lr_factor(scheduler.last_epoch, spec.train.steps, spec.optim)
    scheduler.base_lrs = [spec.optim.lr for _ in scheduler.base_lrs]
    for group in state.optimizer.param_groups:
        group["initial_lr"], group["lr"] = spec.optim.lr, spec.optim.lr * factor
    scheduler._last_lr = [group["lr"] for group in state.optimizer.param_groups]  # what get_last_lr() reports


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


@dataclass
class Trained:
    """What a training run ends with: the last logged metrics and how many steps it skipped."""

    final: dict[str, float] = field(default_factory=dict)
    skipped: int = 0


def train_pipeline(pipeline: Pipeline, out: Path, progress: bool = True, *, env: DistEnv | None = None,
                   resume: bool = False, changes: list[tuple[str, Any, Any]] = ()) -> Trained:
    """Optimise the pipeline's loss up to ``train.steps`` steps; checkpoints, logs and weights go to ``out``.

    Every process of a torchrun job calls this with its ``env``; rank 0 writes the files. ``changes``
    are the resumable spec keys a resume changed (logged as ``changed`` events).
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
        load_latest(out, env, device, all_ranks=("rng",), use=lambda c: restore(state, c, env, plan, cfg.parallel))
        state.resumed_from = state.step
        if state.step > cfg.steps:  # an older checkpoint than check_resumable saw can only be earlier
            raise SpecError([f"{spec.source}: train.steps = {cfg.steps} is below the checkpoint's step {state.step}"])
        apply_resumed_lr(state, spec)
    dtype = autocast_dtype(cfg.precision, device)
    log = RunLog(out, name=spec.name, total=cfg.steps, start=state.step, active=env.is_main, progress=progress,
                 tensorboard=spec.log.tensorboard)
    compute = make_compute(with_float32_derivatives(model, dtype, device), pipeline.loss, pipeline.teacher, spec,
                           steps_left=cfg.steps - state.step, calls_per_step=len(state.streams),
                           device_type=device.type, on_event=lambda kind, **fields: log.event(state.step, kind, **fields))
    if isinstance(compute, AutoCompile):
        state.autocompile = compute
        if state.compile_record:  # the resumed run continues with the choice the checkpoint recorded
            compute.load_state_dict(state.compile_record)
    if resume:
        log.event(state.step, "resume")
        for key, before, now in changes:
            log.event(state.step, "changed", **{"key": key, "from": before, "to": now})
    threads_before = torch.get_num_threads()
    governor = ThreadGovernor(cfg.threads)
    if governor.auto:
        log.event(state.step, "threads", threads=governor.threads, cores=governor.cores,
                  busy_elsewhere=round(governor.history[-1][0], 2))
    last: dict[str, float] = {}
    window = (time.perf_counter(), state.step)
    model.train()
    try:
        with StopFlag(spec.checkpoint.on_signal) as stop:
            while state.step < cfg.steps:
                step = state.step
                optimizer.zero_grad(set_to_none=True)
                pipeline.loss.begin_step(step)
                keys, means = forward_backward(pipeline, state, plan, compute, dtype, step)
                values, stop_now = synchronise(state, env, sharded, keys, means, stop)
                grad_norm = float(dist.gradient_norm(state.params(), env, device))
                problem = nonfinite_problem(step + 1, values, grad_norm, state)
                if problem is None:
                    dist.clip_gradients(state.params(), grad_norm, spec.optim.grad_clip)
                    optimizer.step()
                    broken = nonfinite_weights(step + 1, state, env, device)
                    if broken is not None:  # cannot be skipped: the step is done; nothing of it is saved
                        log.event(step + 1, "stopped", reason=broken)
                        raise TrainingError(_stop_message(broken, out, "Lower optim.lr or set optim.grad_clip"))
                state.scheduler.step()
                state.step = step + 1
                if problem is None:
                    state.ema.update(model, state.step, state.step * cfg.batch_size)
                    pipeline.loss.on_step_end(model, step)
                elif cfg.on_nonfinite == "skip":
                    state.skipped += 1
                    log.event(state.step, "skipped", reason=problem)
                    if state.skipped > cfg.max_skipped():
                        too_many = (f"step {state.step}: {state.skipped} of {cfg.steps} steps skipped, more than "
                                    f"train.skip_limit = {cfg.skip_limit} allows ({cfg.max_skipped()}); the last: {problem}")
                        log.event(state.step, "stopped", reason=too_many)
                        raise TrainingError(_stop_message(too_many, out, "Lower optim.lr or set optim.grad_clip"))
                else:
                    log.event(state.step, "stopped", reason=problem)
                    raise TrainingError(_stop_message(problem, out, "Lower optim.lr, set optim.grad_clip, or set "
                                                                    "train.on_nonfinite = \"skip\""))
                log.advance()
                threads = governor.threads
                if governor.tick() != threads:
                    log.event(state.step, "threads", threads=governor.threads, cores=governor.cores,
                              busy_elsewhere=round(governor.history[-1][0], 2))
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
                    raise TrainingInterrupted(f"stopped at step {state.step}", stop.signum or signal.SIGINT)
                pictures = spec.log.pictures_every
                if pictures and state.step % pictures == 0 and state.step < cfg.steps:
                    save_step_pictures(out, pipeline, state, env)
        if not list_checkpoints(out) or list_checkpoints(out)[-1][0] != state.step:
            write_checkpoint(out, state, env, spec, plan, sharded)  # a run resumed at its end, or 0 steps
        model.eval()
        export_weights(out, state, env)
    finally:
        log.close()
        torch.set_num_threads(threads_before)
    return Trained(last, state.skipped)


# ----------------------------------------------------------------------------------------------
# entry points


def runs_read_by(spec: Spec) -> list[tuple[str, Path]]:
    """(spec key, directory) of every run the spec reads: ``teacher.run`` and any component key
    named ``run`` or ``*_run`` (a guide run, say)."""
    found = []
    for field_ in attrs.fields(Spec):
        component = getattr(spec, field_.name)
        if not isinstance(component, ComponentSpec) or not attrs.has(type(component.config)):
            continue
        for key in attrs.fields(type(component.config)):
            value = getattr(component.config, key.name)
            if (key.name == "run" or key.name.endswith("_run")) and isinstance(value, str) and value:
                found.append((f"{field_.name}.{key.name}", Path(value)))
    return found


def check_inputs_outside(spec: Spec, out: Path) -> None:
    """A run may not be its own teacher: no run the spec reads may be ``out`` or lie inside it
    (``--overwrite`` would delete it, and evaluation would compare the run with itself)."""
    target = out.expanduser().resolve()
    for key, path in runs_read_by(spec):
        read = path.expanduser().resolve()
        if read == target or target in read.parents:
            what = "the teacher run" if key == "teacher.run" else "the run"
            raise SpecError([f"{spec.source}: {key}: {what} {path} is inside --out {out} (the directory this run "
                             f"writes); train into another directory, or point {key} elsewhere"])


def train(spec: str | Path | dict[str, Any] | Spec, *, out: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          overwrite: bool = False, progress: bool = True, pictures: bool = True, registry: Registry | None = None,
          resume: bool = False) -> Path:
    """Train a spec (path, dict or Spec) into a run directory and return its path.

    Everything that can be checked is checked before the run directory is created or touched: the
    spec, the data (read now), the memory a model and a micro-batch need, the split of the batch, the
    runs the spec reads (never inside ``out``), and for a resume the checkpoints' spec and step. Then
    the process holds the run's writer lock (:mod:`fmmkit.runs.lock`) while it writes. With
    ``resume=True`` the run in ``out`` continues from its newest readable checkpoint. Under torchrun
    every process calls this; rank 0 writes the run directory.
    """
    registry = registry or get_registry()
    resolved = load_spec(spec, overrides, registry)
    out_dir = Path(out) if out is not None else default_run_dir(resolved)
    if resolved.train.threads != "auto" and resolved.train.threads > 0:  # "auto": the loop's ThreadGovernor
        torch.set_num_threads(resolved.train.threads)
    check_inputs_outside(resolved, out_dir)
    with dist.distributed_session(resolved.train.device) as (env, device):
        if resume:
            check_resumable(out_dir, resolved, registry, overrides)
        else:
            check_run_dir(out_dir, overwrite)
        torch.manual_seed(resolved.train.seed)
        try:
            pipeline = build_pipeline(resolved, registry, device)
            check_data(resolved, pipeline.data, load=True)
            BatchPlan.make(resolved.train, env, resolved.source)
        except SpecError as exc:  # a value a --set gave is the --set's problem, not the spec file's
            raise attribute_to_overrides(exc, resolved.source, overrides) from None
        dist.barrier(env)  # every process has checked the directory before rank 0 writes into it
        with writer_lock(out_dir) if env.is_main else contextlib.nullcontext():
            changes = []
            if env.is_main:  # under the lock, again: another writer may have finished meanwhile
                if resume:
                    changes = check_resumable(out_dir, resolved, registry, overrides).changes
                else:
                    prepare_run_dir(out_dir, overwrite)
                atomic_write_text(out_dir / SPEC_FILE, spec_to_toml(resolved))
            dist.barrier(env)
            started = time.time()
            trained = train_pipeline(pipeline, out_dir, progress, env=env, resume=resume, changes=changes)
            if env.is_main:
                meta = {"fmmkit": __version__, "torch": torch.__version__, "device": str(device),
                        "processes": env.world_size, "steps": resolved.train.steps, "skipped": trained.skipped,
                        "weights": weights_file(sampling_label(resolved)),
                        "seconds": round(time.time() - started, 2), "final": trained.final,
                        "plugins": plugins_used(resolved, registry)}
                atomic_write_json(out_dir / RUN_INFO_FILE, meta)
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
