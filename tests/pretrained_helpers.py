"""Tiny randomly initialised models for the pretrained-teacher tests (nothing is downloaded).

Factories here are importable as ``"pretrained_helpers:NAME"`` while pytest runs (tests/ is on sys.path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: a UNet2DModel config small enough for CPU tests on (1, 8, 8) images
TINY_UNET: dict[str, Any] = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8,
}
#: a DiTTransformer2DModel config for (4, 4, 4) latents, 10 classes, learned variance (out_channels = 8)
TINY_DIT: dict[str, Any] = {
    "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8, "num_layers": 1,
    "sample_size": 4, "patch_size": 2, "num_embeds_ada_norm": 10, "norm_num_groups": 4,
}


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Perturb every parameter (diffusers zero-initialises output layers, which would make outputs 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def save_unet_folder(root: Path, scheduler: Any, **config: Any) -> Path:
    """A pipeline-shaped folder: root/unet (a random tiny UNet2DModel) and root/scheduler."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = randomise(UNet2DModel(**{**TINY_UNET, **config}))
    unet.save_pretrained(root / "unet")
    scheduler.save_pretrained(root / "scheduler")
    return root


def save_dit_folder(root: Path, scheduler: Any, **config: Any) -> Path:
    """root/transformer (a random tiny DiTTransformer2DModel) and root/scheduler."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    dit = randomise(DiTTransformer2DModel(**{**TINY_DIT, **config}))
    dit.save_pretrained(root / "transformer")
    scheduler.save_pretrained(root / "scheduler")
    return root


class TimeConv(nn.Module):
    """A small network f(x, time[, y]) -> shaped like x (2 * channels with ``double_output``)."""

    def __init__(self, channels: int = 1, classes: int = 0, double_output: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * (2 if double_output else 1), 3, padding=1)
        self.time = nn.Linear(1, channels * (2 if double_output else 1))
        self.label = nn.Embedding(classes + 1, channels * (2 if double_output else 1)) if classes else None

    def forward(self, x: Tensor, time: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.conv(x) + self.time(time[:, None].to(x.dtype))[:, :, None, None]
        if self.label is not None and y is not None:
            h = h + self.label(y)[:, :, None, None]
        return h


def time_conv(channels: int = 1, classes: int = 0, double_output: bool = False) -> TimeConv:
    torch.manual_seed(0)
    return TimeConv(channels, classes, double_output)


def raising_factory() -> nn.Module:
    raise RuntimeError("this factory always fails")


def not_a_module() -> int:
    return 3


def unet_kwargs(**config: Any) -> dict[str, Any]:
    """TINY_UNET as TOML-friendly kwargs of diffusers.UNet2DModel."""
    return {**TINY_UNET, **config}


#: an AutoencoderKL config for (1, 8, 8) images -> (4, 4, 4) latents
TINY_VAE: dict[str, Any] = {
    "in_channels": 1, "out_channels": 1, "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "block_out_channels": [8, 16], "latent_channels": 4,
    "norm_num_groups": 4, "layers_per_block": 1, "sample_size": 8, "scaling_factor": 0.5, "shift_factor": 0.1,
}


def save_vae_folder(root: Path, **config: Any) -> Path:
    """root: a random tiny AutoencoderKL written by save_pretrained."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**{**TINY_VAE, **config}).save_pretrained(root)
    return root


class SecondTimeConv(TimeConv):
    """TimeConv following fmmkit's second-time protocol: enable_second_time() adds a zero-initialised embedding."""

    def __init__(self, channels: int = 1, classes: int = 0) -> None:
        super().__init__(channels, classes)
        self.second: nn.Module | None = None

    def enable_second_time(self) -> None:
        self.second = nn.Sequential(nn.Linear(1, 8), nn.SiLU(), nn.Linear(8, self.conv.out_channels))
        nn.init.zeros_(self.second[2].weight)
        nn.init.zeros_(self.second[2].bias)

    def forward(self, x: Tensor, time: Tensor, y: Tensor | None = None, second_time: Tensor | None = None) -> Tensor:
        h = super().forward(x, time, y)
        if self.second is not None and second_time is not None:
            h = h + self.second(second_time[:, None].to(x.dtype))[:, :, None, None]
        return h


def second_time_conv(channels: int = 1, classes: int = 0) -> SecondTimeConv:
    torch.manual_seed(0)
    return SecondTimeConv(channels, classes)


class LeakySecondTime(TimeConv):
    """Breaks the protocol: its second-time embedding is not zero-initialised."""

    def __init__(self) -> None:
        super().__init__()
        self.second = nn.Linear(1, 1)

    def forward(self, x: Tensor, time: Tensor, y: Tensor | None = None, second_time: Tensor | None = None) -> Tensor:
        h = super().forward(x, time, y)
        return h if second_time is None else h + self.second(second_time[:, None])[:, :, None, None]


class ScaledGaussianVelocity(nn.Module):
    """The exact velocity of N(0.5, 0.3^2) data under the linear interpolant, for a module that is fed
    ``input_scale * x`` and whose output is multiplied by ``output_scale`` afterwards."""

    def __init__(self, input_scale: float = 1.0, output_scale: float = 1.0) -> None:
        super().__init__()
        from fmmkit.exact import GaussianFlowMap
        from fmmkit.interpolants.linear import LinearInterpolant

        self.exact = GaussianFlowMap(LinearInterpolant(), torch.tensor(0.5), torch.tensor(0.3))
        self.input_scale, self.output_scale = input_scale, output_scale

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        return self.exact.velocity(x / self.input_scale, time) / self.output_scale
