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

import fmmkit
from fmmkit.core import Batch, FlowMap, Loss
from fmmkit.core.errors import UserError
from fmmkit.registry import Registry, get_registry
from fmmkit.runs import SPEC_FILE, Run, atomic_write_text
from fmmkit.spec import Spec, SpecError, load_spec, spec_to_toml
from fmmkit.spec.loader import spec_to_dict
from fmmkit.training import distributed as dist
from fmmkit.training.build import Pipeline, build_model, build_pipeline
from fmmkit.training.checkpoint import CHECKPOINT_DIR, list_checkpoints, load_latest, remove_staging
from fmmkit.training.distributed import DistEnv
from fmmkit.training.ema import EMA, sampling_label, weights_file
from fmmkit.training.logs import EVENTS_FILE, METRICS_FILE, TENSORBOARD_DIR, RunLog
from fmmkit.training.optim import loss_parameters, make_optimizer, make_scheduler
from fmmkit.training.precision import autocast, autocast_dtype, with_float32_derivatives
from fmmkit.training.sharding import BatchPlan, Stream
from fmmkit.training.signals import StopFlag, TrainingInterrupted
from fmmkit.training.state import TrainState, export_weights, restore, weights_state, write_checkpoint

PICTURES_DIR = "pictures"
#: Keys a resumed run may change; anything else must match the run's spec.toml.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.threads", "train.device", "sample", "eval", "log",
                     "checkpoint", "compile")


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss, say); the message names the step and the term."""


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

    tensors = weights_state(state, sampling_label(pipeline.spec))
    if not env.is_main:
        return
    registry = pipeline.registry or get_registry()
    model = build_model(pipeline.spec, pipeline.data, registry)
    model.load_state_dict(tensors)
    run = Run(out, pipeline.spec, pipeline.data, pipeline.interpolant, model.to(pipeline.device).eval(), registry,
              pipeline.device)
    save_pictures(run, out / PICTURES_DIR / f"step-{state.step:09d}.png")


# ----------------------------------------------------------------------------------------------
# one step


def _as_float(value: Any, device: torch.device) -> Tensor:
    return torch.as_tensor(value.detach() if isinstance(value, Tensor) else value, dtype=torch.float64, device=device)


def make_compute(model: FlowMap, loss: Loss, teacher: Any, spec: Spec) -> Any:
    """fn(x1, y, step) -> (loss, terms) for one micro-batch; torch.compile'd when ``compile.enabled``."""

    def compute(x1: Tensor, y: Tensor | None, step: int) -> tuple[Tensor, dict[str, Any]]:
        output = loss(model, Batch(x1, y), teacher=teacher, step=step)
        return output.loss, dict(output.metrics)

    if not spec.compile.enabled:
        return compute
    options = {"mode": spec.compile.mode} if spec.compile.backend == "inductor" else {}
    compiled = torch.compile(compute, backend=spec.compile.backend, fullgraph=spec.compile.fullgraph, **options)

    def run(x1: Tensor, y: Tensor | None, step: int) -> tuple[Tensor, dict[str, Any]]:
        torch._dynamo.mark_static(x1)  # micro-batches keep their size: no dynamic-shape recompiles
        try:
            return compiled(x1, y, step)
        except torch._dynamo.exc.TorchDynamoException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TrainingError(f"step {step + 1}: torch.compile could not compile loss '{spec.loss.kind}' "
                                f"({type(exc).__name__}: {first[:300]}); set compile.enabled = false") from exc

    run.compiled = compiled  # type: ignore[attr-defined]
    return run


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


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else path


def check_resumable(out: Path, spec: Spec, registry: Registry) -> None:
    """The run in ``out`` has checkpoints and was trained with ``spec`` (up to RESUMABLE_CHANGES)."""
    if not (out / SPEC_FILE).is_file():
        raise SpecError([f"{out}: no run to resume there (no {SPEC_FILE}); start it with 'fmmkit train SPEC --out {out}'"])
    if not list_checkpoints(out):
        raise SpecError([f"{out}: the run stopped before its first checkpoint; start it again with "
                         f"'fmmkit train {out / SPEC_FILE} --out {out} --overwrite'"])
    stored = load_spec(out / SPEC_FILE, registry=registry)
    mine, theirs = spec_to_dict(spec), spec_to_dict(stored)
    for key in RESUMABLE_CHANGES:
        section, _, leaf = key.partition(".")
        for d in (mine, theirs):
            (d.get(section, {}).pop(leaf, None) if leaf else d.pop(section, None))
    diff = _first_difference(mine, theirs)
    if diff is not None:
        raise SpecError([f"{out / SPEC_FILE}: {diff} differs from the spec being resumed; a resumed run keeps its spec "
                         f"(only {', '.join(RESUMABLE_CHANGES)} may change)"])


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
            meta = {"fmmkit": fmmkit.__version__, "torch": torch.__version__, "device": str(device),
                    "processes": env.world_size, "steps": resolved.train.steps,
                    "weights": weights_file(sampling_label(resolved)),
                    "seconds": round(time.time() - started, 2), "final": last}
            atomic_write_text(out_dir / "run.json", json.dumps(meta, indent=2))
            if pictures:
                from fmmkit.evaluation import save_pictures
                from fmmkit.runs import load_run

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
