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

A run directory holds ``spec.toml``, ``metrics.jsonl``, ``checkpoints/``, the final raw weights
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import fmmkit
from fmmkit.core import Batch, FlowMap, Loss
from fmmkit.core.errors import UserError
from fmmkit.registry import Registry, get_registry
from fmmkit.runs import SPEC_FILE, Run, atomic_write_text, save_tensors
from fmmkit.spec import Spec, SpecError, load_spec, spec_to_toml
from fmmkit.spec.loader import spec_to_dict
from fmmkit.training import distributed as dist
from fmmkit.training.build import Pipeline, build_model, build_pipeline
from fmmkit.training.checkpoint import (CHECKPOINT_DIR, LoadedCheckpoint, list_checkpoints, load_latest,
                                        remove_staging, save_checkpoint)
from fmmkit.training.distributed import DistEnv
from fmmkit.training.ema import EMA, RAW, sampling_label, weights_file
from fmmkit.training.logs import METRICS_FILE, TENSORBOARD_DIR, RunLog
from fmmkit.training.optim import loss_parameters, make_optimizer, make_scheduler
from fmmkit.training.precision import autocast, autocast_dtype, with_float32_derivatives
from fmmkit.training.rng import capture_rng, restore_rng
from fmmkit.training.sharding import BatchPlan, Stream
from fmmkit.training.signals import StopFlag, TrainingInterrupted

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
        (out / METRICS_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def check_run_dir(out: Path, overwrite: bool) -> None:
    """SpecError if ``out`` already holds a run and ``overwrite`` is off."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SpecError([f"{out}: a run directory already exists there; choose another --out, pass --overwrite "
                         f"to replace it, or continue it with 'fmmkit train --resume {out}'"])


def default_run_dir(spec: Spec) -> Path:
    """runs/<spec name>."""
    return Path("runs") / spec.name


@dataclass
class TrainState:
    """Everything that changes during training, which a checkpoint saves and restores."""

    model: FlowMap
    loss: Loss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA
    streams: list[Stream]
    step: int = 0
    skipped: int = 0

    def params(self) -> list[torch.nn.Parameter]:
        """Everything the optimiser updates: the model's parameters, then the loss's."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of the model, then ``loss.N`` for the loss's parameters."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        return named + [(f"loss.{i}", p) for i, p in enumerate(loss_parameters(self.loss))]


# ----------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_parts(state: TrainState, sharded: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared parts, this process's parts): under FSDP every part is per process."""
    trainer = {"step": state.step, "skipped": state.skipped, "optimizer": state.optimizer.state_dict(),
               "scheduler": state.scheduler.state_dict(), "loss": state.loss.state_dict()}
    weights = {"model": state.model.state_dict(),
               **{label: state.ema.state_dict(label, state.model) for label in state.ema.labels}}
    rng = {"global": capture_rng(), "streams": {str(s.slot): s.state_dict() for s in state.streams}}
    if sharded:
        return {}, {**weights, "trainer": trainer, "rng": rng}
    return {**weights, "trainer": trainer}, {"rng": rng}


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a saved optimizer state; shards of sharded parameters become DTensors again."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in saved.get("state", {}).items():
        p = params[index]
        if dist.is_sharded(p):
            for key, value in entry.items():
                if key != "step" and isinstance(value, Tensor) and value.shape == dist.local(p).shape:
                    entry[key] = DTensor.from_local(value.to(dist.local(p).device), p.device_mesh, p.placements,
                                                    run_check=False, shape=p.shape, stride=p.stride())
    optimizer.load_state_dict(saved)


@torch.no_grad()
def _load_model(model: torch.nn.Module, saved: dict[str, Tensor], where: Path) -> None:
    live = model.state_dict()
    if set(live) != set(saved):
        raise SpecError([f"{where}: the checkpoint's weights do not fit this run's model (missing "
                         f"{sorted(set(live) - set(saved))[:3]}, unexpected {sorted(set(saved) - set(live))[:3]})"])
    for key, tensor in live.items():
        target = dist.local(tensor)
        if target.shape != saved[key].shape:
            raise SpecError([f"{where}: {key} has shape {tuple(saved[key].shape)} in the checkpoint but "
                             f"{tuple(target.shape)} in this run's model; was spec.toml edited?"])
        target.copy_(saved[key])


def restore(state: TrainState, loaded: LoadedCheckpoint, env: DistEnv, plan: BatchPlan, parallel: str) -> None:
    """Put a checkpoint back into ``state``: weights, EMAs, optimiser, schedule, loss, RNG streams."""
    manifest = loaded.manifest
    sharded = manifest.get("parallel") == "fsdp" and manifest["world_size"] > 1
    if sharded and (manifest["world_size"] != env.world_size or parallel != "fsdp"):
        raise SpecError([f"{loaded.path}: the weights are sharded over {manifest['world_size']} processes (FSDP); "
                         f"resume with torchrun --nproc_per_node {manifest['world_size']} and train.parallel = \"fsdp\""])
    if manifest.get("micro_batches") != plan.micro_batches:
        raise SpecError([f"{loaded.path}: the run drew {manifest.get('micro_batches')} micro-batches per step but this "
                         f"one would draw {plan.micro_batches}; set train.micro_batches = {manifest.get('micro_batches')}"])
    parts = loaded.parts
    _load_model(state.model, parts["model"], loaded.path)
    for label in state.ema.labels:
        if label not in parts:
            raise SpecError([f"{loaded.path}: no {label} weights in the checkpoint; ema must match the run's spec"])
        state.ema.load_state_dict(label, parts[label])
    trainer = parts["trainer"]
    _load_optimizer(state.optimizer, trainer["optimizer"])
    state.scheduler.load_state_dict(trainer["scheduler"])
    state.loss.load_state_dict(trainer["loss"])
    state.step, state.skipped = int(trainer["step"]), int(trainer["skipped"])
    by_rank = loaded.others.get("rng", {})
    restore_rng(by_rank.get(env.rank, by_rank.get(0, {"global": capture_rng()}))["global"])
    streams = {slot: s for r in by_rank.values() for slot, s in r["streams"].items()}
    for stream in state.streams:
        stream.load_state_dict(streams[str(stream.slot)])


def write_checkpoint(out: Path, state: TrainState, env: DistEnv, spec: Spec, plan: BatchPlan, sharded: bool) -> Path:
    """Save ``state`` as checkpoint ``step-N`` (every process takes part)."""
    shared, per_rank = checkpoint_parts(state, sharded)
    meta = {"parallel": "fsdp" if sharded else "ddp", "micro_batches": plan.micro_batches,
            "fmmkit": fmmkit.__version__, "torch": torch.__version__}
    return save_checkpoint(out, state.step, shared, per_rank, env, spec.checkpoint.keep, meta)


# ----------------------------------------------------------------------------------------------
# weights for sampling


def weights_state(state: TrainState, label: str) -> dict[str, Tensor]:
    """Whole CPU tensors of the raw weights or of an EMA (a collective under FSDP)."""
    live = state.model.state_dict() if label == RAW else state.ema.state_dict(label, state.model)
    return dist.unshard_state(live)


def export_weights(out: Path, state: TrainState, env: DistEnv) -> None:
    """Write ``model.safetensors`` and each ``ema-LABEL.safetensors`` into the run directory."""
    meta = {"fmmkit": fmmkit.__version__, "steps": str(state.step)}
    for label in (RAW, *state.ema.labels):
        tensors = weights_state(state, label)
        if env.is_main:
            save_tensors(out / weights_file(label), tensors, metadata={**meta, "weights": label})


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
    return torch.compile(compute, mode=spec.compile.mode, fullgraph=spec.compile.fullgraph)


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
        loaded = load_latest(out, env, device, all_ranks=("rng",))
        restore(state, loaded, env, plan, cfg.parallel)
        del loaded
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
                sums: Tensor | None = None
                keys: list[str] = []
                for stream in state.streams:
                    batch = pipeline.data.sample(plan.micro_batch_size, stream.data).to(device)
                    with stream.loss_rng(), autocast(device, dtype):
                        loss, terms = compute(batch.x1, batch.y, step)
                    (loss / len(state.streams)).backward()
                    keys = keys or sorted(terms)
                    row = torch.stack([_as_float(loss, device), *(_as_float(terms[k], device) for k in keys)])
                    sums = row if sums is None else sums + row
                assert sums is not None
                if sharded:
                    dist.average_gradients(loss_parameters(pipeline.loss), env)
                else:
                    dist.average_gradients(state.params(), env)
                reduced = dist.all_reduce_(torch.cat([sums / (len(state.streams) * env.world_size),
                                                      torch.tensor([float(stop.requested)], dtype=torch.float64,
                                                                   device=device)]), env).tolist()
                values = dict(zip(["loss", *keys], reduced[:-1]))
                stop_now = reduced[-1] > 0
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
    if not (out / SPEC_FILE).is_file() or not list_checkpoints(out):
        raise SpecError([f"{out}: no run to resume there (needs {SPEC_FILE} and {CHECKPOINT_DIR}/); "
                         f"start it with 'fmmkit train SPEC --out {out}'"])
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
