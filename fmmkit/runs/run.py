"""A trained run: its spec, data, interpolant and flow map, loaded from a run directory (see
:mod:`fmmkit.runs.layout`) or opened on weights in memory (the pictures a training run draws).
Weights load with no unpickling.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fmmkit.core import BuildContext, DataSource, FlowMap, Interpolant, SampleResult
from fmmkit.registry import Registry, get_registry
from fmmkit.runs.files import load_weights
from fmmkit.runs.layout import RAW, RUN_MARKERS, SPEC_FILE, sampling_label, weights_file
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
        """A registered sampler with its config built from keyword parameters."""
        from fmmkit.spec.loader import _component

        component = _component({"kind": kind, **params}, "sampler", "sampler", "sample", self.registry)
        return self.registry.build("sampler", kind, component.config, BuildContext())

    def sample(self, n: int, steps: int = 1, grid: list[float] | None = None, seed: int | None = None,
               y: Tensor | None = None, solver: str | None = None) -> Tensor:
        """n samples: K = ``steps`` flow-map jumps (or the ODE ``solver`` on the velocity)."""
        return self.sample_result(n, steps=steps, grid=grid, seed=seed, y=y, solver=solver).x

    def sample_result(self, n: int, steps: int = 1, grid: list[float] | None = None, seed: int | None = None,
                      y: Tensor | None = None, solver: str | None = None) -> SampleResult:
        """Like ``sample`` but with the NFE used."""
        if solver is None:
            params: dict[str, Any] = {"grid": grid} if grid is not None else {"steps": steps}
            sampler = self.sampler("flow_map", **params)
        else:
            sampler = self.sampler(solver, **({} if solver == "dopri5" else {"steps": steps}))
        with torch.no_grad():
            return sampler(self.model, self.noise(n, seed), y)

    def frozen_model(self) -> FlowMap:
        """A copy of the model in eval mode with gradients off (a distillation teacher)."""
        frozen = copy.deepcopy(self.model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        return frozen


def open_run(path: Path, spec: Spec, registry: Registry, device: torch.device, weights: Path | dict[str, Tensor], *,
             label: str = RAW, data: DataSource | None = None, interpolant: Interpolant | None = None) -> Run:
    """A :class:`Run` of ``spec`` with ``weights`` (a safetensors file or a state dict) on ``device`` in
    eval mode; ``data`` and ``interpolant`` are built from the spec unless given (a training run
    passes its own)."""
    data = data if data is not None else build_data(spec, registry)
    interpolant = interpolant if interpolant is not None else build_interpolant(spec, registry)
    model = build_model(spec, data, registry)
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
    spec = structure_spec(read_toml(path / SPEC_FILE), str(path / SPEC_FILE), registry, check_paths=False)
    device = torch.device(device) if device is not None else torch.device("cpu")
    label = sampling_label(spec) if weights == "auto" else weights
    if weights == "auto" and not (path / weights_file(label)).is_file():
        label = RAW  # a run trained before EMAs were saved, or stopped before its end
    if not (path / weights_file(label)).is_file():
        raise SpecError([f"{path}: no {weights_file(label)} in this run; its weights: "
                         f"{', '.join(sorted(p.name for p in path.glob('*.safetensors')))}"])
    return open_run(path, spec, registry, device, path / weights_file(label), label=label)
