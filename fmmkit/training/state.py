"""The state of a training run, and how it goes into and comes out of checkpoints and weight files.

``TrainState`` is everything that changes while training: weights, EMAs, optimiser, schedule, the
loss's own state, the random streams and the step. A checkpoint stores it in parts
(:mod:`fmmkit.training.checkpoint`): the weights (``model``, one part per EMA), ``trainer``
(optimiser, schedule, loss, step) and ``rng`` per process (torch/NumPy/Python generators and the
data and loss streams of its micro-batches). Under FSDP every process stores its own shard of all
parts; otherwise rank 0 stores the shared ones and each process its ``rng``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fmmkit.core import FlowMap, Loss
from fmmkit.runs.files import save_tensors
from fmmkit.spec import Spec, SpecError
from fmmkit.training import distributed as dist
from fmmkit.training.checkpoint import CheckpointMismatch, LoadedCheckpoint, save_checkpoint
from fmmkit.training.distributed import DistEnv
from fmmkit.runs.layout import RAW, weights_file
from fmmkit.training.ema import EMA
from fmmkit.training.optim import loss_parameters
from fmmkit.training.rng import capture_rng, restore_rng
from fmmkit.training.sharding import BatchPlan, Stream
from fmmkit.version import __version__


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
    #: the step's AutoCompile (``compile.enabled = "auto"``), whose choice a checkpoint records
    autocompile: Any = None
    #: that choice as a resumed checkpoint recorded it (AutoCompile.state_dict), {} for a new run
    compile_record: dict[str, Any] = field(default_factory=dict)
    #: the step a resumed run started from (-1 for a new run): a checkpoint on disk of a later step was
    #: skipped as damaged or unfitting when the run resumed, so writing that step replaces it
    resumed_from: int = -1
    #: the steps this process has written (a second save of one, on a signal, keeps the first)
    written: set[int] = field(default_factory=set)

    def params(self) -> list[torch.nn.Parameter]:
        """Everything the optimiser updates: the model's parameters, then the loss's."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def named_params(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of the model, then ``loss.N`` for the loss's parameters."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        return named + [(f"loss.{i}", p) for i, p in enumerate(loss_parameters(self.loss))]


def checkpoint_parts(state: TrainState, sharded: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared parts, this process's parts): under FSDP every part is per process."""
    trainer = {"step": state.step, "skipped": state.skipped, "optimizer": state.optimizer.state_dict(),
               "scheduler": state.scheduler.state_dict(), "loss": state.loss.state_dict()}
    if state.autocompile is not None:
        trainer["compile"] = state.autocompile.state_dict()
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
def _load_model(model: torch.nn.Module, saved: Any, where: Path) -> None:
    live = model.state_dict()
    if not isinstance(saved, dict) or set(live) != set(saved):
        saved = saved if isinstance(saved, dict) else {}
        raise CheckpointMismatch(f"{where}: the checkpoint's weights do not fit this run's model (missing "
                                 f"{sorted(set(live) - set(saved))[:3]}, unexpected {sorted(set(saved) - set(live))[:3]})")
    for key, tensor in live.items():
        target = dist.local(tensor)
        if not isinstance(saved[key], Tensor) or target.shape != saved[key].shape:
            shape = tuple(saved[key].shape) if isinstance(saved[key], Tensor) else type(saved[key]).__name__
            raise CheckpointMismatch(f"{where}: {key} has shape {shape} in the checkpoint but {tuple(target.shape)} "
                                     "in this run's model; the checkpoint does not fit the run (was spec.toml edited?)")
        target.copy_(saved[key])


def restore(state: TrainState, loaded: LoadedCheckpoint, env: DistEnv, plan: BatchPlan, parallel: str) -> None:
    """Put a checkpoint back into ``state``: weights, EMAs, optimiser, schedule, loss, RNG streams.
    CheckpointMismatch when its parts do not fit this run (the caller then tries the previous one)."""
    manifest = loaded.manifest
    sharded = manifest.get("parallel") == "fsdp" and manifest["world_size"] > 1
    if sharded and (manifest["world_size"] != env.world_size or parallel != "fsdp"):
        raise SpecError([f"{loaded.path}: the weights are sharded over {manifest['world_size']} processes (FSDP); "
                         f"resume with torchrun --nproc_per_node {manifest['world_size']} and train.parallel = \"fsdp\""])
    if manifest.get("micro_batches") != plan.micro_batches:
        raise CheckpointMismatch(f"{loaded.path}: the run drew {manifest.get('micro_batches')} micro-batches per step "
                                 f"but this one draws {plan.micro_batches}; the checkpoint does not fit the run")
    parts = loaded.parts
    try:
        _load_model(state.model, parts["model"], loaded.path)
        for label in state.ema.labels:
            if label not in parts:
                raise CheckpointMismatch(f"{loaded.path}: no {label} weights in the checkpoint; it does not fit the "
                                         "run's ema settings")
            state.ema.load_state_dict(label, parts[label])
        trainer = parts["trainer"]
        _load_optimizer(state.optimizer, trainer["optimizer"])
        state.scheduler.load_state_dict(trainer["scheduler"])
        state.loss.load_state_dict(trainer["loss"])
        state.step, state.skipped = int(trainer["step"]), int(trainer["skipped"])
        state.compile_record = dict(trainer.get("compile", {}))
        by_rank = loaded.others.get("rng", {})
        restore_rng(by_rank.get(env.rank, by_rank.get(0, {"global": capture_rng()}))["global"])
        streams = {slot: s for r in by_rank.values() for slot, s in r["streams"].items()}
        for stream in state.streams:
            stream.load_state_dict(streams[str(stream.slot)])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointMismatch(f"{loaded.path}: its state does not fit this run ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else 'missing part'})") from None


def write_checkpoint(out: Path, state: TrainState, env: DistEnv, spec: Spec, plan: BatchPlan, sharded: bool) -> Path:
    """Save ``state`` as checkpoint ``step-N`` (every process takes part)."""
    shared, per_rank = checkpoint_parts(state, sharded)
    from fmmkit.training.resume import comparable

    meta = {"parallel": "fsdp" if sharded else "ddp", "micro_batches": plan.micro_batches,
            "fmmkit": __version__, "torch": torch.__version__, "spec": comparable(spec)}
    replace = 0 <= state.resumed_from < state.step and state.step not in state.written
    path = save_checkpoint(out, state.step, shared, per_rank, env, spec.checkpoint.keep, meta, gather=not sharded,
                           device=state.streams[0].device, replace=replace)
    state.written.add(state.step)
    return path


def weights_state(state: TrainState, label: str) -> dict[str, Tensor]:
    """Whole CPU tensors of the raw weights or of an EMA (a collective under FSDP)."""
    live = state.model.state_dict() if label == RAW else state.ema.state_dict(label, state.model)
    return dist.unshard_state(live)


def export_weights(out: Path, state: TrainState, env: DistEnv) -> None:
    """Write ``model.safetensors`` and each ``ema-LABEL.safetensors`` into the run directory."""
    meta = {"fmmkit": __version__, "steps": str(state.step)}
    for label in (RAW, *state.ema.labels):
        tensors = weights_state(state, label)
        if env.is_main:
            save_tensors(out / weights_file(label), tensors, metadata={**meta, "weights": label})
