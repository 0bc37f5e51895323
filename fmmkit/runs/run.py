"""A trained run: its spec, data, interpolant and flow map, loaded from a run directory (see
:mod:`fmmkit.runs.layout`) or opened on weights in memory (the pictures a training run draws).
Weights load with no unpickling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import BuildContext, DataSource, FlowMap, Interpolant, SampleResult
from fmmkit.core.errors import UserError
from fmmkit.core.flow_map import frozen_copy
from fmmkit.registry import Registry, get_registry
from fmmkit.runs.files import load_weights
from fmmkit.runs.layout import RAW, RUN_MARKERS, SPEC_FILE, sampling_label, weights_file
from fmmkit.runs.plugins import check_plugins
from fmmkit.spec import Spec, SpecError
from fmmkit.spec.build import build_data, build_interpolant, build_model
from fmmkit.spec.loader import read_toml, structure_spec


class Run:
    """A trained run: ``flow_map(x, s, t)``, ``velocity(x, t)`` and ``sample(n, steps=K)``."""

    #: Which weights ``model`` holds: "raw" or an EMA label such as "ema-0.999".
    weights: str = "raw"

    def __init__(self, path: Path, spec: Spec, data: DataSource, interpolant: Interpolant, model: FlowMap,
                 registry: Registry, device: torch.device) -> None:
        self.path = path
        self.spec = spec
        self.data = data
        self.interpolant = interpolant
        self.model = model
        self.registry = registry
        self.device = device

    def flow_map(self, x: Tensor, s: Tensor | float, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """X_{s,t}(x) of the trained map (no gradients)."""
        with torch.no_grad():
            return self.model(x.to(self.device), s, t, y)

    def velocity(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """b_t(x) = v_{t,t}(x) of the trained map (no gradients)."""
        with torch.no_grad():
            return self.model.velocity(x.to(self.device), t, y)

    def noise(self, n: int, seed: int | None = None) -> Tensor:
        """x0 ~ N(0, I) of shape (n, *data shape)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        return torch.randn((n, *self.data.shape), generator=g).to(self.device)

    def sampler(self, kind: str, **params: Any) -> Any:
        """A registered sampler with its config built from keyword parameters (and the run's interpolant,
        which the re-noising samplers need)."""
        from fmmkit.spec.loader import _component

        component = _component({"kind": kind, **params}, "sampler", "sampler", "sample", self.registry)
        return self.registry.build("sampler", kind, component.config, BuildContext(interpolant=self.interpolant))

    def k_step_sampler(self, steps: int, kind: str | None = None) -> Any:
        """The flow-map sampler of K-step samples (``kind``, default :attr:`flow_map_sampler`) on the spec's
        time grid (``[sample] grid_power``, for samplers whose config has that key)."""
        kind = kind or self.flow_map_sampler
        params: dict[str, Any] = {"steps": steps}
        config = self.registry.get("sampler", kind).config
        if attrs.has(config) and "grid_power" in attrs.fields_dict(config):
            params["grid_power"] = self.spec.sample.grid_power
        return self.sampler(kind, **params)

    @property
    def flow_map_sampler(self) -> str:
        """The sampler of K-step samples: ``[sample] sampler``, or the loss's own when it is "auto"
        (``consistency`` for losses that learn only X_{s,1}, ``flow_map`` otherwise)."""
        if self.spec.sample.sampler != "auto":
            return self.spec.sample.sampler
        return getattr(self.registry.get("loss", self.spec.loss.kind).component, "default_sampler", "flow_map")

    @property
    def guidance_range(self) -> list[float] | None:
        """[lo, hi] of the guidance scales the run was trained with as an input (variable guidance), else None."""
        from fmmkit.spec.build import takes_guidance_input

        if not takes_guidance_input(self.spec, self.data):
            return None
        return list(self.spec.loss.config.guidance.scale)

    def condition(self, n: int, y: Tensor | None, guidance: float | None, seed: int | None = None,
                  interval: tuple[float, float] = (0.0, 1.0)) -> Tensor | None:
        """The model's input y for n samples at guidance scale w: labels y (uniformly random ones when
        None), with w and the guidance interval for a run trained with variable guidance."""
        if guidance is None:
            return y
        if self.guidance_range is None:
            raise UserError(f"--guidance: {self.path} was not trained with the guidance scale as an input; train it "
                            "with [loss.guidance] scale = [lo, hi] on labelled data (a fixed scale is baked into the map)")
        from fmmkit.core.conditioning import condition

        if y is None:
            g = torch.Generator().manual_seed(seed if seed is not None else 0)
            y = torch.randint(self.data.num_classes or 1, (n,), generator=g)
        return condition(y.to(self.device), guidance, *interval)

    def sample(self, n: int, steps: int = 1, grid: list[float] | None = None, seed: int | None = None,
               y: Tensor | None = None, solver: str | None = None, guidance: float | None = None,
               sampler: str | None = None) -> Tensor:
        """n samples: K = ``steps`` jumps of the flow-map ``sampler`` (default :attr:`flow_map_sampler`;
        or the ODE ``solver`` on the velocity), for labels y (random ones with ``guidance``) at guidance
        scale ``guidance`` (runs trained with variable guidance).

        Example:
            >>> run = load_run("runs/checkerboard_guided_imf")  # doctest: +SKIP
            >>> x = run.sample(1000, steps=1, guidance=2.5)      # doctest: +SKIP
        """
        return self.sample_result(n, steps=steps, grid=grid, seed=seed, y=y, solver=solver, guidance=guidance,
                                  sampler=sampler).x

    def sample_result(self, n: int, steps: int = 1, grid: list[float] | None = None, seed: int | None = None,
                      y: Tensor | None = None, solver: str | None = None, guidance: float | None = None,
                      sampler: str | None = None) -> SampleResult:
        """Like ``sample`` but with the NFE used."""
        if solver is None:
            kind = sampler or self.flow_map_sampler
            chosen = self.sampler(kind, grid=grid) if grid is not None else self.k_step_sampler(steps, kind)
        else:
            chosen = self.sampler(solver, **({} if solver == "dopri5" else {"steps": steps}))
        x0 = self.noise(n, seed)
        with torch.no_grad():
            return chosen(self.model, x0, self.condition(n, y, guidance, seed))

    def frozen_model(self) -> FlowMap:
        """A copy of the model in eval mode with gradients off (a distillation teacher)."""
        return frozen_copy(self.model)


def open_run(path: Path, spec: Spec, registry: Registry, device: torch.device, weights: Path | dict[str, Tensor], *,
             label: str = RAW, data: DataSource | None = None, interpolant: Interpolant | None = None) -> Run:
    """A :class:`Run` of ``spec`` with ``weights`` (a safetensors file or a state dict) on ``device`` in
    eval mode; ``data`` and ``interpolant`` are built from the spec unless given (a training run
    passes its own)."""
    data = data if data is not None else build_data(spec, registry)
    interpolant = interpolant if interpolant is not None else build_interpolant(spec, registry)
    model = build_model(spec, data, registry)
    if not data.holds_data:  # a data-free run models (and is scored against) its teacher's data
        try:
            data = data.reference()
        except UserError:
            pass
    if isinstance(weights, Path):
        load_weights(model, weights)
    else:
        model.load_state_dict(weights)
    model.to(device).eval()
    run = Run(path, spec, data, interpolant, model, registry, device)
    run.weights = label
    return run


def load_run(run_dir: str | Path, device: torch.device | str | None = None, registry: Registry | None = None,
             weights: str = "auto") -> Run:
    """Load a run directory written by ``fmmkit train``.

    ``weights``: "auto" loads the EMA named by the spec's ``ema.sample_with`` when the run has it (the
    raw weights otherwise), "raw" the raw weights ``model.safetensors``, or an EMA label ("ema-0.999").
    """
    path = Path(run_dir)
    for marker in RUN_MARKERS:
        if not (path / marker).is_file():
            raise SpecError([f"{path}: not a trained run (missing {marker}); train one with 'fmmkit train SPEC --out {path}'"])
    registry = registry or get_registry()
    check_plugins(path, registry)
    spec = structure_spec(read_toml(path / SPEC_FILE), str(path / SPEC_FILE), registry, check_paths=False)
    device = torch.device(device) if device is not None else torch.device("cpu")
    label = sampling_label(spec) if weights == "auto" else weights
    if weights == "auto" and not (path / weights_file(label)).is_file():
        label = RAW  # a run trained before EMAs were saved, or stopped before its end
    if not (path / weights_file(label)).is_file():
        raise SpecError([f"{path}: no {weights_file(label)} in this run; its weights: "
                         f"{', '.join(sorted(p.name for p in path.glob('*.safetensors')))}"])
    return open_run(path, spec, registry, device, path / weights_file(label), label=label)
