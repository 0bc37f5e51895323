"""An exported fmmkit flow map as a plain torch module ``f(x, time, y=None, second_time=None)``.

``exported_network(path)`` rebuilds the backbone an export's ``config.json`` describes (weights not
loaded: a ``torch_module`` teacher loads ``PATH/model.safetensors`` itself). Called as
``f(x, t)`` it returns the velocity v_{t,t}(x) = b_t(x) in fmmkit's convention, so it is a
``torch_module`` teacher with ``prediction = "velocity"``, ``process = "linear"`` (or the run's
interpolant), ``time_direction = "noise_at_0"``. It follows the second-time protocol of
:mod:`fmmkit.nets.torch_module` (``second_time`` = t - s), so a torch_module student can start from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fmmkit.core.errors import UserError
from fmmkit.core.flow_map import time_dtype
from fmmkit.core.shapes import as_batch_times

CONFIG_FILE = "config.json"
FORMAT = "fmmkit-flow-map"


def read_export_config(path: str | Path) -> dict[str, Any]:
    """The config.json of an export folder; UserError when it is not one."""
    config_path = Path(path).expanduser() / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not an fmmkit export ({CONFIG_FILE}: {type(exc).__name__}); make one with "
                        "'fmmkit export RUN_DIR --out DIR'") from None
    if config.get("format") != FORMAT:
        raise UserError(f"{path}: {CONFIG_FILE} is not an fmmkit export (format {config.get('format')!r})")
    return config


def build_backbone(model: dict[str, Any], data: dict[str, Any]) -> nn.Module:
    """The backbone of an export's "model" entry for its "data" shape (second-time branch when it had one)."""
    from fmmkit.core import BuildContext
    from fmmkit.registry import get_registry
    from fmmkit.spec.loader import structure_component

    registry = get_registry()
    component = structure_component({"kind": model["kind"], **model["config"]}, "backbone", "model", CONFIG_FILE, registry)
    ctx = BuildContext(data_shape=tuple(data["shape"]), num_classes=data.get("num_classes"))
    backbone = registry.build("backbone", component.kind, component.config, ctx)
    if model.get("second_time"):
        backbone.enable_second_time()
    return backbone


class ExportedVelocity(nn.Module):
    """f(x, time, y=None, second_time=None) = v_{time - second_time, time}(x) of an exported backbone."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone  # the keys of the export's model.safetensors: "backbone.*"

    def enable_second_time(self) -> None:
        """The second-time protocol (:mod:`fmmkit.nets.torch_module`): the backbone's own opt-in."""
        self.backbone.enable_second_time()  # type: ignore[operator]

    def forward(self, x: Tensor, time: Tensor, y: Tensor | None = None, second_time: Tensor | None = None) -> Tensor:
        t = as_batch_times(time, x).to(time_dtype(x))
        s = t if second_time is None else t - second_time.to(t.dtype)
        return self.backbone(x, s, t, y)


def exported_network(path: str) -> ExportedVelocity:
    """The network of the export at ``path`` (architecture only; load PATH/model.safetensors into it)."""
    config = read_export_config(path)
    return ExportedVelocity(build_backbone(config["model"], config["data"]))
