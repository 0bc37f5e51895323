"""``fmmkit export RUN_DIR --out DIR``: a trained run as a self-describing folder (a Hugging Face model repo layout).

``--format fmmkit`` (default) writes

    config.json        what the weights are: model kind and config, data shape and classes, interpolant,
                       the time convention, how to load it elsewhere (a torch_module teacher, diffusers),
                       the teacher it was distilled from (a run, or a converted model with its conversion), the spec
    model.safetensors  the sampling weights (the EMA that sampling uses, else the raw ones), FlowMap keys
    spec.toml          the resolved spec (so ``fmmkit.load_run(DIR)`` and every command that takes a run read it)
    README.md          a model card: the eval table (eval.json), how to sample, the spec and the command that reproduces it

and ``huggingface_hub.upload_folder`` can publish DIR unchanged. ``--format diffusers`` writes a
pipeline folder (``model_index.json``, ``flow_map/``, ``scheduler/``, ``vae/`` for latent runs with a
diffusers VAE, ``README.md``) for :class:`fmmkit.export.diffusers_pipeline.FmmkitFlowMapPipeline`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from fmmkit.core.errors import UserError
from fmmkit.export.model_card import model_card
from fmmkit.export.network import CONFIG_FILE, FORMAT

ExportFormat = Literal["fmmkit", "diffusers"]
EXPORT_FORMATS: tuple[str, ...] = ("fmmkit", "diffusers")
TIME_CONVENTION = ("fmmkit: noise x0 ~ N(0, I) at t = 0, data x1 at t = 1; X_{s,t}(x) = x + (t - s) v_{s,t}(x); "
                   "v_{t,t} = b_t is the velocity; K-step sampling is x <- X_{t_k, t_k+1}(x) on 0 = t_0 < ... < t_K = 1")


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: the folder exists and is not empty; choose another or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def export_config(run: Any) -> dict[str, Any]:
    """The config.json of a run's export (module docstring)."""
    import fmmkit
    from fmmkit.spec.loader import CONVERTER, spec_to_dict

    spec, backbone = run.spec, run.model.backbone
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": 1,
        "fmmkit_version": fmmkit.__version__,
        "name": spec.name,
        "model": {"kind": spec.model.kind, "config": CONVERTER.unstructure(spec.model.config),
                  "second_time": bool(getattr(backbone, "second_time_enabled", False))},
        "data": {"kind": spec.data.kind, "shape": list(run.data.shape), "num_classes": run.data.num_classes},
        "interpolant": {"kind": spec.interpolant.kind, "config": CONVERTER.unstructure(spec.interpolant.config)},
        "time_convention": TIME_CONVENTION,
        "weights": {"file": "model.safetensors", "label": run.weights},
        "diffusers": "fmmkit export --format diffusers: u(x, timestep, r_timestep) = -v_{1 - timestep/N, 1 - r_timestep/N}(x)",
        "spec": spec_to_dict(spec),
    }
    if spec.interpolant.kind == "linear" and not getattr(run.interpolant, "stochastic", False):
        config["as_torch_module_teacher"] = {
            "kind": "torch_module", "factory": "fmmkit.export.network:exported_network", "kwargs": {"path": "THIS_FOLDER"},
            "weights": "THIS_FOLDER/model.safetensors", "prediction": "velocity", "process": "linear",
            "time_direction": "noise_at_0"}
    if "teacher" in config["spec"]:
        config["teacher"] = config["spec"]["teacher"]  # what the map was distilled from (a run, or a converted model)
        conversion = teacher_conversion(spec)
        if conversion is not None:
            config["teacher"]["conversion"] = conversion
    return config


def teacher_conversion(spec: Any) -> dict[str, Any] | None:
    """How a converted teacher's prediction became fmmkit's velocity (process, prediction, interpolant), or None."""
    config = spec.teacher.config
    if hasattr(config, "to_conversion"):  # torch_module
        return config.to_conversion().describe()
    if spec.teacher.kind == "diffusers":
        from fmmkit.external.diffusers_folder import find_folder, scheduler_conversion

        try:
            return scheduler_conversion(find_folder(config.path, config.subfolder, config.scheduler, "teacher"),
                                        config.prediction, "teacher").describe()
        except UserError:  # the folder is gone: the spec still says where it was
            return None
    return None


def _eval_rows(run_dir: Path) -> list[dict[str, Any]] | None:
    path = run_dir / "eval.json"
    if not path.is_file():
        return None
    return list(json.loads(path.read_text()).get("rows", []))


def export_run(run_dir: str | Path, out: str | Path, format: ExportFormat = "fmmkit", overwrite: bool = False,
               command: str | None = None) -> Path:
    """Write the export of the run at ``run_dir`` into ``out`` (module docstring); returns ``out``."""
    from fmmkit.runs.files import atomic_write_text, save_tensors
    from fmmkit.runs.layout import SPEC_FILE
    from fmmkit.runs.run import load_run

    if format not in EXPORT_FORMATS:
        raise UserError(f"--format {format}: choose one of {', '.join(EXPORT_FORMATS)}")
    run_path, out_path = Path(run_dir), Path(out)
    run = load_run(run_path)
    if out_path.resolve() == run_path.resolve():
        raise UserError(f"--out {out}: is the run directory itself; choose another folder")
    _prepare(out_path, overwrite)
    config = export_config(run)
    rows = _eval_rows(run_path)
    if format == "diffusers":
        from fmmkit.export.diffusers_export import write_diffusers

        write_diffusers(run, out_path)
    else:
        save_tensors(out_path / "model.safetensors", run.model.state_dict(),
                     metadata={"format": FORMAT, "weights": run.weights})
        atomic_write_text(out_path / CONFIG_FILE, json.dumps(config, indent=2))
        shutil.copyfile(run_path / SPEC_FILE, out_path / SPEC_FILE)
    atomic_write_text(out_path / "README.md", model_card(config, rows, format, command))
    return out_path
