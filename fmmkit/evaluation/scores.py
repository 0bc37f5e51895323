"""``fmmkit eval``: sample quality of a run at 1, 2, 4, 8 flow-map steps and of the teacher ODE.

Every row draws the same noise (seed ``eval.seed``) and is scored against the same reference sample
of the data with each metric of ``eval.metrics``; NFE is network evaluations per sample.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmmkit.core import BuildContext, VelocityField
from fmmkit.runs.files import atomic_write_text
from fmmkit.runs.layout import EVAL_FILE, SAMPLES_FILE
from fmmkit.runs.run import Run, load_run
from fmmkit.runs.teacher import build_teacher
from fmmkit.spec import SpecError


@dataclass
class EvalRow:
    """One sampler's scores: label, NFE per sample, throughput and metric values."""

    label: str
    nfe: int
    samples_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)


def _teacher_field(run: Run) -> tuple[str, VelocityField]:
    """The teacher's velocity when the run has one (and its files are still there), else the run's own."""
    teacher = build_teacher(run.spec, run.interpolant, run.data, run.registry, run.device, missing_ok=True)
    return ("teacher ODE", teacher) if teacher is not None else ("ODE", run.model)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    with torch.no_grad():
        result = fn()
    return result, time.perf_counter() - start


def flow_map_rows(run: Run) -> list[tuple[str, Any, Any]]:
    """(label, sampler, model) for each flow-map step count, unless the run trains only a velocity."""
    if not getattr(run.registry.get("loss", run.spec.loss.kind).component, "trains_flow_map", True):
        return []
    return [(f"flow map, {k} step{'s' if k > 1 else ''}", run.sampler("flow_map", steps=k), run.model)
            for k in run.spec.sample.steps]


def sampler_rows(run: Run) -> list[tuple[str, Any, Any]]:
    """Flow-map rows, then (label, sampler, velocity field) for each ODE solver of ``eval.ode``."""
    prefix, field_ = _teacher_field(run)
    ode = [run.registry.build("sampler", s.kind, s.config, BuildContext()) for s in run.spec.eval.ode]
    return flow_map_rows(run) + [(f"{prefix} {sampler.label}", sampler, field_) for sampler in ode]


def _score(name: str, metric: Any, samples: torch.Tensor, reference: torch.Tensor, run: Run) -> float:
    """One metric's value; a metric that cannot score this kind of data is a spec mistake, named as one."""
    try:
        return float(metric(samples, reference, run.data))
    except ValueError as exc:
        raise SpecError([f"{run.spec.source}: eval.metrics: metric '{name}' cannot score this run's data "
                         f"({exc}); list metrics that fit it, e.g. --set 'eval.metrics=[\"energy_distance\"]'"]) from None


def evaluate(run: Run | str | Path, num_samples: int | None = None, write: bool = True) -> list[EvalRow]:
    """Score every sampler row of the run; writes ``eval.json`` into the run directory."""
    run = run if isinstance(run, Run) else load_run(run)
    cfg = run.spec.eval
    n = num_samples or cfg.num_samples
    reference = run.data.sample(n, torch.Generator().manual_seed(cfg.seed)).x1.float()
    x0 = run.noise(n, seed=cfg.seed + 1)
    metrics = {name: run.registry.build("metric", name, run.registry.get("metric", name).config(), BuildContext())
               for name in cfg.metrics}
    rows = []
    for label, sampler, model in sampler_rows(run):
        result, seconds = _timed(lambda: sampler(model, x0))
        samples = result.x.float().cpu()
        scores = {name: _score(name, metric, samples, reference, run) for name, metric in metrics.items()}
        rows.append(EvalRow(label, result.nfe, n / max(seconds, 1e-9), scores))
    if write:
        atomic_write_text(run.path / EVAL_FILE, json.dumps({"num_samples": n, "rows": [asdict(r) for r in rows]}, indent=2))
    return rows


def format_table(rows: list[EvalRow]) -> str:
    """A plain-text table: one row per sampler, one column per metric."""
    names = list(rows[0].metrics) if rows else []
    header = ["sampler", "NFE", *names, "samples/s"]
    body = [[r.label, str(r.nfe), *(f"{r.metrics[m]:.4f}" for m in names), f"{r.samples_per_s:,.0f}"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def is_image_data(run: Run) -> bool:
    """Whether the run's data points are images (C, H, W)."""
    return len(run.data.shape) == 3


def save_panels(run: Run, panels: list[tuple[str, Any]], path: Path) -> Path:
    """A PNG of titled panels beside the data: scatter plots for points, image grids for images."""
    from fmmkit.evaluation.plots import IMAGE_GRID_SIZE, save_image_grids, save_sample_grid

    n = max(len(samples) for _, samples in panels)
    n = min(n, IMAGE_GRID_SIZE) if is_image_data(run) else n
    reference = run.data.sample(n, torch.Generator().manual_seed(run.spec.eval.seed)).x1.float().numpy()
    if is_image_data(run):
        return save_image_grids(path, panels, reference)
    save_sample_grid(path, panels, reference, run.data.bounds())
    return path


def save_pictures(run: Run, path: Path | None = None) -> Path:
    """A PNG of scatter plots (image grids for image data): the data, then the flow map at each step
    count (or the ODE)."""
    from fmmkit.evaluation.plots import IMAGE_GRID_SIZE

    n = run.spec.sample.num_pictures
    n = min(n, IMAGE_GRID_SIZE) if is_image_data(run) else n
    x0 = run.noise(n, seed=run.spec.eval.seed + 1)
    prefix, field_ = _teacher_field(run)
    ode = run.sampler(run.spec.sample.picture_solver, steps=run.spec.sample.picture_solver_steps)
    panels = []
    for label, sampler, model in [*flow_map_rows(run), (f"{prefix} {ode.label}", ode, field_)]:
        with torch.no_grad():
            panels.append((label, sampler(model, x0).x.float().cpu().numpy()))
    return save_panels(run, panels, path or run.path / SAMPLES_FILE)
