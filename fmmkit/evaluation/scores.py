"""``fmmkit eval``: sample quality of a run at 1, 2, 4, 8 flow-map steps and of the teacher ODE.

Every row draws the same noise (seed ``eval.seed``) and is scored against the same reference sample
of the data with each metric of ``eval.metrics``; NFE is network evaluations per sample. The k-step
rows use the run's flow-map sampler (``consistency`` for models of X_{s,1} only, see
:attr:`fmmkit.runs.run.Run.flow_map_sampler`); a run trained with variable guidance adds a guidance
sweep (``eval.guidance``), sampled with the reference's labels at each scale. A data-free run is
scored against its teacher's data. Samples are scored and drawn in the data's pixel space: a latent
data set decodes them (``DataSource.decode``) and the reference comes from its image source
(``DataSource.pixel_source``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmmkit.core import BuildContext, Metric, VelocityField
from fmmkit.core.errors import UserError, warn
from fmmkit.registry import Registry
from fmmkit.runs.files import atomic_write_json
from fmmkit.runs.layout import EVAL_FILE, SAMPLES_FILE
from fmmkit.runs.run import Run, load_run
from fmmkit.runs.teacher import build_teacher
from fmmkit.spec import Spec, SpecError


@dataclass
class EvalRow:
    """One sampler's scores: label, NFE per sample, throughput and metric values."""

    label: str
    nfe: int
    samples_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    #: why the row has no scores (its solver could not finish), else empty
    note: str = ""


def _teacher_field(run: Run) -> tuple[str, VelocityField]:
    """The teacher's velocity when the run has one (and its files are still there), else the run's own."""
    teacher = build_teacher(run.spec, run.interpolant, run.data, run.registry, run.device, missing_ok=True)
    return ("teacher ODE", teacher) if teacher is not None else ("ODE", run.model)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    with torch.no_grad():
        result = fn()
    return result, time.perf_counter() - start


#: (label, sampler, model or velocity field, guidance scale or None)
Row = tuple[str, Any, Any, float | None]


def _steps(k: int) -> str:
    return f"{k} step{'s' if k > 1 else ''}"


def flow_map_rows(run: Run) -> list[Row]:
    """(label, sampler, model, None) for each flow-map step count, unless the run trains only a velocity."""
    if not getattr(run.registry.get("loss", run.spec.loss.kind).component, "trains_flow_map", True):
        return []
    kind = run.flow_map_sampler
    name = "flow map" if kind == "flow_map" else kind.replace("_", " ")
    return [(f"{name}, {_steps(k)}", run.k_step_sampler(k, kind), run.model, None) for k in run.spec.sample.steps]


def guidance_scales(run: Run) -> list[float]:
    """The scales of the guidance sweep: ``eval.guidance``, or the ends and middle of the training range."""
    scale_range = run.guidance_range
    if scale_range is None:
        return []
    if run.spec.eval.guidance:
        return list(run.spec.eval.guidance)
    lo, hi = scale_range
    return sorted({lo, (lo + hi) / 2, hi})


def guidance_rows(run: Run) -> list[Row]:
    """(label, sampler, model, w) of the guidance sweep: each scale at the smallest and largest step count."""
    kind = run.flow_map_sampler
    counts = sorted({min(run.spec.sample.steps), max(run.spec.sample.steps)})
    return [(f"guidance {w:g}, {_steps(k)}", run.k_step_sampler(k, kind), run.model, w)
            for w in guidance_scales(run) for k in counts]


def sampler_rows(run: Run) -> list[Row]:
    """Flow-map rows, the guidance sweep, then (label, sampler, velocity field, None) per ODE solver of ``eval.ode``."""
    prefix, field_ = _teacher_field(run)
    ode = [run.registry.build("sampler", s.kind, s.config, BuildContext()) for s in run.spec.eval.ode]
    return flow_map_rows(run) + guidance_rows(run) + [(f"{prefix} {sampler.label}", sampler, field_, None)
                                                      for sampler in ode]


def build_metrics(spec: Spec, registry: Registry) -> dict[str, Metric]:
    """The metrics of ``eval.metrics`` by name, each built from its parameters."""
    return {m.kind: registry.build("metric", m.kind, m.config, BuildContext()) for m in spec.eval.metrics}


def decoded(run: Run, x: torch.Tensor) -> torch.Tensor:
    """Samples of the run's model space in the data's pixel space (float32, CPU): latents are decoded."""
    return run.data.decode(x.to(run.device)).float().cpu()


def _score(name: str, metric: Any, samples: torch.Tensor, reference: torch.Tensor, run: Run) -> float:
    """One metric's value; a metric that cannot score this kind of data is a spec mistake, named as one."""
    try:
        return float(metric(samples, reference, run.data.pixel_source))
    except ValueError as exc:
        raise SpecError([f"{run.spec.source}: eval.metrics: metric '{name}' cannot score this run's data "
                         f"({exc}); list metrics that fit it in eval.metrics there, e.g. "
                         "eval.metrics = [\"energy_distance\"]"]) from None


def evaluate(run: Run | str | Path, num_samples: int | None = None, write: bool = True) -> list[EvalRow]:
    """Score every sampler row of the run; writes ``eval.json`` into the run directory."""
    run = run if isinstance(run, Run) else load_run(run)
    cfg = run.spec.eval
    n = num_samples or cfg.num_samples
    check_reference(run)
    batch = run.data.pixel_source.sample(n, torch.Generator().manual_seed(cfg.seed))
    reference = batch.x1.float()
    x0 = run.noise(n, seed=cfg.seed + 1)
    metrics = build_metrics(run.spec, run.registry)
    rows = []
    for label, sampler, model, w in sampler_rows(run):
        y = run.condition(n, batch.y, w) if w is not None else None
        try:
            result, seconds = _timed(lambda: sampler(model, x0, y))
        except UserError as exc:  # a solver that cannot finish (a diverged run): the row says so, the others score
            warn(f"{label}: {exc}")
            rows.append(EvalRow(label, 0, 0.0, dict.fromkeys(metrics, math.nan), note=str(exc)))
            continue
        samples = decoded(run, result.x)
        scores = {name: _score(name, metric, samples, reference, run) for name, metric in metrics.items()}
        rows.append(EvalRow(label, result.nfe, n / max(seconds, 1e-9), scores))
    if write:
        atomic_write_json(run.path / EVAL_FILE, eval_record(rows, n))
    return rows


def eval_record(rows: list[EvalRow], num_samples: int) -> dict[str, Any]:
    """What ``eval.json`` holds: the samples per row and every row (non-finite scores become null)."""
    return {"num_samples": num_samples, "rows": [asdict(r) for r in rows]}


def check_reference(run: Run) -> None:
    """A data-free run whose teacher has no data cannot be scored: a one-line error (UserError)."""
    if not run.data.holds_data:
        run.data.reference()  # raises, naming the fix


def format_table(rows: list[EvalRow]) -> str:
    """A plain-text table: one row per sampler, one column per metric."""
    names = list(rows[0].metrics) if rows else []
    header = ["sampler", "NFE", *names, "samples/s"]
    body = [[r.label, str(r.nfe), *(f"{r.metrics[m]:.4f}" for m in names), f"{r.samples_per_s:,.0f}"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def is_image_data(run: Run) -> bool:
    """Whether the run's data points are images (C, H, W), once decoded."""
    return len(run.data.pixel_source.shape) == 3


def save_panels(run: Run, panels: list[tuple[str, Any]], path: Path) -> Path:
    """A PNG of titled panels (samples in the run's model space) beside the data: scatter plots for points,
    image grids for images (latents decoded first)."""
    from fmmkit.evaluation.plots import IMAGE_GRID_SIZE, save_image_grids, save_sample_grid

    n = max(len(samples) for _, samples in panels)
    n = min(n, IMAGE_GRID_SIZE) if is_image_data(run) else n
    pixels = run.data.pixel_source
    if pixels is not run.data:
        panels = [(label, decoded(run, torch.as_tensor(samples[:n])).numpy()) for label, samples in panels]
    reference = pixels.sample(n, torch.Generator().manual_seed(run.spec.eval.seed)).x1.float().numpy()
    if is_image_data(run):
        return save_image_grids(path, panels, reference)
    save_sample_grid(path, panels, reference, pixels.bounds())
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
    for label, sampler, model, _ in [*flow_map_rows(run), (f"{prefix} {ode.label}", ode, field_, None)]:
        with torch.no_grad():
            panels.append((label, sampler(model, x0).x.float().cpu().numpy()))
    return save_panels(run, panels, path or run.path / SAMPLES_FILE)
