"""Reading a local diffusers model folder: the network, and its scheduler config -> a :class:`Conversion`.

The folder is a pipeline folder (``model_index.json`` with a ``unet`` or ``transformer`` component and
a ``scheduler``), a folder holding ``unet/`` or ``transformer/`` and ``scheduler/``, or a bare model
folder (``config.json``) with the scheduler folder given separately. Everything is read with
``local_files_only=True``: nothing is downloaded.

The scheduler's class and config choose the conversion (each formula in :mod:`fmmkit.conversion`):

- ``FlowMatch*`` (SD3, Flux, ...): linear process, noise at 1, velocity u = eps - x_data, network time
  sigma * num_train_timesteps; b_t(x) = -u(x, 1 - t). ``shift`` and dynamic shifting only move the
  inference grid (the network is always given its state's own sigma), so they do not enter.
- ``EDM*`` (EDMEuler, EDMDPMSolverMultistep): EDM preconditioning with the config's sigma_data; network
  input c_in x, time c_noise = ln(sigma) / 4; prediction_type "epsilon" is EDM's F (c_out > 0),
  "v_prediction" the same with c_out < 0 (diffusers' precondition_outputs).
- ``ScoreSdeVeScheduler``: VE with sigma in [sigma_min, sigma_max], network time sigma, score prediction.
- any other scheduler with ``alphas_cumprod`` (DDPM, DDIM, PNDM, Euler, DPM-Solver, UniPC, ...): the
  N-step VP table of the scheduler itself (beta_schedule linear / scaled_linear / squaredcos_cap_v2,
  trained_betas, rescale_betas_zero_snr all included), network time the timestep index (or
  0.25 ln(sigma) for EulerDiscrete with timestep_type "continuous" and v-prediction); prediction_type
  epsilon -> epsilon, v_prediction -> v, sample -> x0. ``timestep_spacing`` / ``steps_offset`` /
  Karras sigmas only choose inference steps and do not enter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fmmkit.conversion import Conversion, LinearProcess, VEProcess, VPDiscrete
from fmmkit.external.modules import ModuleLoadError

#: diffusers model classes the ``diffusers`` teacher reads
MODEL_CLASSES: tuple[str, ...] = ("UNet2DModel", "DiTTransformer2DModel")
#: model_index.json component names that hold the network, in order of preference
NETWORK_COMPONENTS: tuple[str, ...] = ("unet", "transformer")
#: diffusers prediction_type -> fmmkit prediction
DIFFUSERS_PREDICTIONS: dict[str, str] = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}


def require_diffusers(where: str) -> Any:
    """The diffusers module, or a one-line error naming the optional extra."""
    try:
        import diffusers
    except ImportError:
        raise ModuleLoadError(f"{where}: needs the diffusers package, an optional extra of fmmkit: "
                              "pip install 'fmmkit[diffusers]'") from None
    return diffusers


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a local diffusers model lives: the network's folder and class, and the scheduler's folder."""

    model_dir: Path
    model_class: str
    scheduler_dir: Path


def _read_json(path: Path, key: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModuleLoadError(f"{key}: cannot read '{path}' ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ModuleLoadError(f"{key}: '{path}' is not a JSON object")
    return data


def find_folder(path_text: str, subfolder: str | None, scheduler: str | None, where: str) -> DiffusersFolder:
    """Locate the network and scheduler folders under ``path_text`` (module docstring)."""
    root = Path(path_text).expanduser()
    if not root.is_dir():
        raise ModuleLoadError(f"{where}.path: no folder '{path_text}'; give a local diffusers model folder "
                              "(one that save_pretrained wrote; nothing is downloaded)")
    if subfolder is not None:
        names = [subfolder]
    elif (root / "config.json").is_file():
        names = [""]
    else:
        names = [n for n in NETWORK_COMPONENTS if (root / n / "config.json").is_file()]
        if (root / "model_index.json").is_file():
            index = _read_json(root / "model_index.json", f"{where}.path")
            names = [n for n in NETWORK_COMPONENTS if n in index] or names
    if not names:
        raise ModuleLoadError(f"{where}.path: '{path_text}' holds no diffusers model (no config.json, unet/ or transformer/); "
                              "point path at a folder written by save_pretrained")
    model_dir = root / names[0] if names[0] else root
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModuleLoadError(f"{where}.subfolder: no config.json in '{model_dir}'")
    model_class = str(_read_json(config_path, f"{where}.path").get("_class_name", ""))
    if model_class not in MODEL_CLASSES:
        raise ModuleLoadError(
            f"{where}.path: '{model_dir}' holds a {model_class or 'model of unknown class'}; the diffusers teacher reads "
            f"{' and '.join(MODEL_CLASSES)} (other models, text-conditioned ones included, through kind = \"torch_module\" "
            "with a factory that wraps them)")
    sched = Path(scheduler).expanduser() if scheduler is not None else root / "scheduler"
    if not (sched / "scheduler_config.json").is_file():
        raise ModuleLoadError(f"{where}.scheduler: no scheduler_config.json in '{sched}'; the scheduler config says how "
                              "the model was trained (give its folder with scheduler = \"...\")")
    return DiffusersFolder(model_dir, model_class, sched)


def scheduler_conversion(folder: DiffusersFolder, prediction: str | None, where: str) -> Conversion:
    """The conversion the scheduler config implies (module docstring); ``prediction`` overrides its prediction_type."""
    diffusers = require_diffusers(where)
    config = _read_json(folder.scheduler_dir / "scheduler_config.json", f"{where}.scheduler")
    name = str(config.get("_class_name", ""))
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ModuleLoadError(f"{where}.scheduler: unknown scheduler class '{name}' in {folder.scheduler_dir}")
    scheduler = cls.from_pretrained(str(folder.scheduler_dir), local_files_only=True)
    cfg = scheduler.config
    kind = cfg.get("prediction_type", "epsilon")
    if name.startswith("FlowMatch"):
        return Conversion(LinearProcess("noise_at_1", float(cfg["num_train_timesteps"])), prediction or "velocity")  # type: ignore[arg-type]
    if name.startswith("EDM"):
        if prediction is None and kind not in ("epsilon", "v_prediction"):
            raise ModuleLoadError(f"{where}.scheduler: EDM prediction_type '{kind}' is not epsilon or v_prediction")
        process = VEProcess(float(cfg["sigma_min"]), float(cfg["sigma_max"]), name="edm")
        sign = -1.0 if kind == "v_prediction" else 1.0
        return Conversion(process, prediction or "edm_denoiser", float(cfg.get("sigma_data", 0.5)), sign)  # type: ignore[arg-type]
    if name == "ScoreSdeVeScheduler":
        return Conversion(VEProcess(float(cfg["sigma_min"]), float(cfg["sigma_max"]), name="ve"), prediction or "score")  # type: ignore[arg-type]
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise ModuleLoadError(f"{where}.scheduler: {name} has no alphas_cumprod, flow-matching or EDM config the "
                              "conversion can read; use kind = \"torch_module\" and state prediction and process")
    if prediction is None and kind not in DIFFUSERS_PREDICTIONS:
        raise ModuleLoadError(f"{where}.scheduler: prediction_type '{kind}' is not one of {', '.join(DIFFUSERS_PREDICTIONS)}; "
                              "set prediction = \"...\" in [teacher]")
    continuous_v = cfg.get("timestep_type") == "continuous" and kind == "v_prediction"
    process = VPDiscrete(scheduler.alphas_cumprod, "log_sigma" if continuous_v else "index")
    return Conversion(process, prediction or DIFFUSERS_PREDICTIONS[kind])  # type: ignore[arg-type]


def learns_variance(model: nn.Module) -> bool:
    """Whether the network returns (prediction, variance): out_channels = 2 in_channels."""
    cfg = model.config  # type: ignore[attr-defined]
    out = cfg.get("out_channels") or cfg["in_channels"]
    return int(out) == 2 * int(cfg["in_channels"])


def load_network(folder: DiffusersFolder, where: str) -> nn.Module:
    """The network, read from its folder with local_files_only=True."""
    diffusers = require_diffusers(where)
    try:
        return getattr(diffusers, folder.model_class).from_pretrained(str(folder.model_dir), local_files_only=True,
                                                                   low_cpu_mem_usage=False)
    except Exception as exc:
        raise ModuleLoadError(f"{where}.path: cannot load {folder.model_class} from '{folder.model_dir}' "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def network_labels(model: nn.Module) -> tuple[bool, int | None]:
    """(takes class labels, its null label or None): DiT's null class is num_embeds_ada_norm (the extra row of
    its label table); a UNet2DModel with num_class_embeds has no fixed one."""
    cfg = model.config  # type: ignore[attr-defined]
    if "num_embeds_ada_norm" in cfg:
        return True, int(cfg["num_embeds_ada_norm"])
    return cfg.get("num_class_embeds") is not None or cfg.get("class_embed_type") is not None, None


def network_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) the network was configured for, when its config says (sample_size)."""
    cfg = model.config  # type: ignore[attr-defined]
    size = cfg.get("sample_size")
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(cfg["in_channels"]), int(h), int(w)
