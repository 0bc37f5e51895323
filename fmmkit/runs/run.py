"""Run directories: the resolved spec, the trained weights (safetensors) and the logs of one run.

Layout: ``spec.toml`` (resolved; the run can be reproduced from it alone), ``model.safetensors``
(the raw weights), ``ema-LABEL.safetensors`` (one per EMA; sampling and evaluation use the one
``ema.sample_with`` names), ``checkpoints/``, ``metrics.jsonl``, ``run.json``, ``samples.png``,
``eval.json``. Weights load with no unpickling.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from fmmkit.core import BuildContext, DataSource, FlowMap, Interpolant, SampleResult
from fmmkit.registry import Registry, get_registry
from fmmkit.spec import Spec, SpecError
from fmmkit.spec.loader import read_toml, structure_spec

SPEC_FILE = "spec.toml"
WEIGHTS_FILE = "model.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically."""
    from safetensors.torch import save

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(cpu, metadata=metadata))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a model's state from safetensors (strict), with a one-line error on a bad file."""
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise SpecError([f"{path}: cannot read weights ({type(exc).__name__}: {exc}); the file is damaged or not safetensors"]) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpecError([f"{path}: weights do not fit the run's model (missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]}); was spec.toml edited after training?"])


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


def load_run(run_dir: str | Path, device: torch.device | str | None = None, registry: Registry | None = None,
             weights: str = "auto") -> Run:
    """Load a run directory written by ``fmmkit train``.

    ``weights``: "auto" loads the EMA named by the spec's ``ema.sample_with`` when the run has it (the
    raw weights otherwise), "raw" the raw weights ``model.safetensors``, or an EMA label ("ema-0.999").
    """
    from fmmkit.training.build import build_model
    from fmmkit.training.ema import RAW, sampling_label, weights_file

    path = Path(run_dir)
    for marker in (SPEC_FILE, WEIGHTS_FILE):
        if not (path / marker).is_file():
            raise SpecError([f"{path}: not a trained run (missing {marker}); train one with 'fmmkit train SPEC --out {path}'"])
    registry = registry or get_registry()
    spec = structure_spec(read_toml(path / SPEC_FILE), str(path / SPEC_FILE), registry, check_paths=False)
    device = torch.device(device) if device is not None else torch.device("cpu")
    data = registry.build("dataset", spec.data.kind, spec.data.config, BuildContext())
    interpolant = registry.build("interpolant", spec.interpolant.kind, spec.interpolant.config, BuildContext())
    model = build_model(spec, data, registry)
    label = sampling_label(spec) if weights == "auto" else weights
    if weights == "auto" and not (path / weights_file(label)).is_file():
        label = RAW  # a run trained before EMAs were saved, or stopped before its end
    if not (path / weights_file(label)).is_file():
        raise SpecError([f"{path}: no {weights_file(label)} in this run; its weights: "
                         f"{', '.join(sorted(p.name for p in path.glob('*.safetensors')))}"])
    load_weights(model, path / weights_file(label))
    model.to(device).eval()
    run = Run(path, spec, data, interpolant, model, registry, device)
    run.weights = label
    return run


def read_json(path: Path) -> Any:
    """JSON from a file."""
    return json.loads(path.read_text())
