"""An fmmkit flow map as a diffusers pipeline: ``FmmkitFlowMapPipeline`` with diffusers' ``FlowMapEulerDiscreteScheduler``.

diffusers runs time the other way: noise at sigma = 1, data at sigma = 0. With fmmkit's time
t = 1 - sigma and the scheduler's timestep = sigma * N (N = num_train_timesteps), one step from
timestep to r_timestep is diffusers' ``x_r = x_t - (sigma_t - sigma_r) u``; fmmkit's jump is
X_{s,t}(x) = x + (t - s) v_{s,t}(x) with s = 1 - sigma_t, t = 1 - sigma_r, so the model returns

    u(x, timestep, r_timestep) = -v_{1 - timestep / N, 1 - r_timestep / N}(x),

and K steps on the scheduler's default grid (sigma = 1, 1 - 1/K, ..., 0, shift 1) are fmmkit's K
uniform jumps (``fmmkit sample --steps K``) from the same noise. The pipeline needs fmmkit installed
(the network is fmmkit's backbone) and this module imported, since diffusers resolves a component
of another library from the modules already loaded:

    from fmmkit.export.diffusers_pipeline import FmmkitFlowMapPipeline
    pipe = FmmkitFlowMapPipeline.from_pretrained("exports/digits_lmd_diffusers")
    images = pipe(batch_size=16, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images

A run on latent data with a diffusers VAE carries it as the ``vae`` component; the pipeline decodes
the latents with its scaling_factor / shift_factor for ``output_type`` "pil" and "np" (and "pt";
"latent" returns them undecoded).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin, DiffusionPipeline, FlowMapEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from fmmkit.core.flow_map import time_dtype
from fmmkit.core.shapes import as_batch_times
from fmmkit.export.network import build_backbone


class FmmkitFlowMapModel(ModelMixin, ConfigMixin):
    """An fmmkit backbone as a diffusers model: u(sample, timestep, r_timestep, class_labels) (module docstring).

    Args:
        model: {"kind", "config", "second_time"} of the fmmkit backbone (an export's config.json "model").
        data: {"shape", "num_classes"} of the data it samples.
        num_train_timesteps: N of timestep = sigma * N (the scheduler's).
    """

    @register_to_config
    def __init__(self, model: dict[str, Any], data: dict[str, Any], num_train_timesteps: int = 1000) -> None:
        super().__init__()
        self.backbone = build_backbone(model, data)

    def forward(self, sample: Tensor, timestep: Tensor | float, r_timestep: Tensor | float,
                class_labels: Tensor | None = None) -> Tensor:
        n = float(self.config.num_train_timesteps)
        dtype = time_dtype(sample)
        sigma_s = as_batch_times(torch.as_tensor(timestep, dtype=torch.float64, device=sample.device), sample.double())
        sigma_t = as_batch_times(torch.as_tensor(r_timestep, dtype=torch.float64, device=sample.device), sample.double())
        s, t = (1 - sigma_s / n).to(dtype), (1 - sigma_t / n).to(dtype)
        return -self.backbone(sample, s, t, class_labels)


class FmmkitFlowMapPipeline(DiffusionPipeline):
    """K flow-map jumps from noise (module docstring); ``vae`` decodes latent runs."""

    model_cpu_offload_seq = "flow_map->vae"
    _optional_components = ["vae"]

    def __init__(self, flow_map: FmmkitFlowMapModel, scheduler: FlowMapEulerDiscreteScheduler, vae: Any = None) -> None:
        super().__init__()
        self.register_modules(flow_map=flow_map, scheduler=scheduler, vae=vae)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 1, generator: torch.Generator | None = None,
                 latents: Tensor | None = None, class_labels: Tensor | list[int] | None = None,
                 output_type: str = "pil", return_dict: bool = True) -> ImagePipelineOutput | tuple[Any]:
        """Sample ``batch_size`` points with ``num_inference_steps`` jumps from ``latents`` (N(0, I) noise by default).

        output_type: "pil" or "np" (images in [0, 1]), "pt" (images in [-1, 1], or the data points themselves for
        non-image data), "latent" (the model's space, undecoded).
        """
        device = self._execution_device
        shape = (batch_size, *self.flow_map.config.data["shape"])
        dtype = next(self.flow_map.parameters()).dtype
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype) if latents is None else latents.to(device)
        labels = None if class_labels is None else torch.as_tensor(class_labels, device=device, dtype=torch.long)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        for i, timestep in enumerate(self.progress_bar(timesteps)):
            r_timestep = timesteps[i + 1] if i + 1 < len(timesteps) else torch.zeros_like(timestep)
            u = self.flow_map(x, timestep, r_timestep, labels)
            x = self.scheduler.step(u, timestep, x, r_timestep=r_timestep).prev_sample
        if output_type != "latent" and self.vae is not None:
            cfg = self.vae.config
            x = self.vae.decode(x / cfg.scaling_factor + (cfg.shift_factor or 0.0)).sample.clamp(-1, 1)
        if output_type in ("pil", "np") and x.ndim == 4:
            images = ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            out: Any = self.numpy_to_pil(images) if output_type == "pil" else images
        else:
            out = x
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
