"""The training loop: run whatever the spec assembled, log, and write the run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import fmmkit
from fmmkit.core.errors import UserError
from fmmkit.registry import Registry, get_registry
from fmmkit.runs import SPEC_FILE, WEIGHTS_FILE, atomic_write_text, save_tensors
from fmmkit.spec import Spec, SpecError, load_spec, spec_to_toml
from fmmkit.training.build import Pipeline, build_pipeline
from fmmkit.training.optim import make_optimizer, make_scheduler


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss, say); the message names the step and the term."""


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Create the run directory; refuse to write into an existing run unless ``overwrite``."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SpecError([f"{out}: a run directory already exists there; choose another --out, or pass --overwrite to replace it"])
    out.mkdir(parents=True, exist_ok=True)


def default_run_dir(spec: Spec) -> Path:
    """runs/<spec name>."""
    return Path("runs") / spec.name


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def train_pipeline(pipeline: Pipeline, out: Path, progress: bool = True) -> dict[str, float]:
    """Optimise the pipeline's loss for ``train.steps`` steps; write weights and logs to ``out``."""
    spec, model, loss_fn = pipeline.spec, pipeline.model, pipeline.loss
    cfg = spec.train
    optimizer = make_optimizer(list(model.parameters()), spec.optim)
    scheduler = make_scheduler(optimizer, cfg.steps, spec.optim)
    data_generator = torch.Generator().manual_seed(cfg.seed + 1)
    log_path = out / "metrics.jsonl"
    last: dict[str, float] = {}
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=spec.name, disable=not progress, dynamic_ncols=True, leave=False)
    with open(log_path, "a") as log:
        for step in bar:
            batch = pipeline.data.sample(cfg.batch_size, data_generator).to(pipeline.device)
            output = loss_fn(model, batch, teacher=pipeline.teacher, step=step)
            if not torch.isfinite(output.loss):
                raise TrainingError(f"step {step}: loss is {output.loss.item()} (terms: {_floats(output.metrics)}); "
                                    "lower optim.lr or set optim.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            if spec.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_fn.on_step_end(model, step)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                last = {"loss": output.loss.item(), **_floats(output.metrics)}
                record = {"step": step + 1, **last, "lr": scheduler.get_last_lr()[0],
                          "elapsed_s": round(time.perf_counter() - start, 3)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last['loss']:.4g}")
    bar.close()
    model.eval()
    save_tensors(out / WEIGHTS_FILE, model.state_dict(), metadata={"fmmkit": fmmkit.__version__, "steps": str(cfg.steps)})
    return last


def train(spec: str | Path | dict[str, Any] | Spec, *, out: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          overwrite: bool = False, progress: bool = True, pictures: bool = True, registry: Registry | None = None) -> Path:
    """Train a spec (path, dict or Spec) into a run directory and return its path."""
    registry = registry or get_registry()
    resolved = load_spec(spec, overrides, registry)
    out_dir = Path(out) if out is not None else default_run_dir(resolved)
    if resolved.train.threads:
        torch.set_num_threads(resolved.train.threads)
    torch.manual_seed(resolved.train.seed)
    pipeline = build_pipeline(resolved, registry)
    prepare_run_dir(out_dir, overwrite)
    atomic_write_text(out_dir / SPEC_FILE, spec_to_toml(resolved))
    started = time.time()
    last = train_pipeline(pipeline, out_dir, progress)
    meta = {"fmmkit": fmmkit.__version__, "torch": torch.__version__, "device": str(pipeline.device),
            "steps": resolved.train.steps, "seconds": round(time.time() - started, 2), "final": last}
    atomic_write_text(out_dir / "run.json", json.dumps(meta, indent=2))
    if pictures:
        from fmmkit.evaluation import save_pictures
        from fmmkit.runs import load_run

        save_pictures(load_run(out_dir, registry=registry))
    return out_dir
