"""Writing a run as a diffusers pipeline folder (``fmmkit export --format diffusers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmmkit.external.diffusers_folder import require_diffusers
from fmmkit.external.modules import ModuleLoadError


def write_diffusers(run: Any, out: Path) -> None:
    """FmmkitFlowMapPipeline(flow_map, FlowMapEulerDiscreteScheduler(), vae).save_pretrained(out)."""
    require_diffusers("--format diffusers")
    from diffusers import FlowMapEulerDiscreteScheduler

    from fmmkit.export.diffusers_pipeline import FmmkitFlowMapModel, FmmkitFlowMapPipeline
    from fmmkit.export.folder import export_config

    config = export_config(run)
    flow_map = FmmkitFlowMapModel(config["model"], config["data"], 1000)
    flow_map.backbone.load_state_dict(run.model.backbone.state_dict())
    vae = None
    autoencoder = getattr(run.data, "autoencoder", None)
    if autoencoder is not None:
        if not autoencoder.diffusers_vae:
            raise ModuleLoadError("--format diffusers: this run's latents come from a torch-module encoder/decoder pair, "
                                  "which a diffusers pipeline cannot carry; export it with --format fmmkit")
        vae = autoencoder.encoder.vae
        vae.register_to_config(scaling_factor=autoencoder.scaling_factor, shift_factor=autoencoder.shift_factor)
    pipe = FmmkitFlowMapPipeline(flow_map=flow_map, scheduler=FlowMapEulerDiscreteScheduler(num_train_timesteps=1000),
                                 vae=vae)
    pipe.save_pretrained(str(out))
