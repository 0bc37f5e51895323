"""Autoencoders for latent-space data: a diffusers ``AutoencoderKL`` folder, or a torch-module encoder/decoder pair.

Images are in [-1, 1] (fmmkit's image space, diffusers' VAE input). With the VAE's raw latents r,
the latents fmmkit trains on are (latent diffusion, Rombach et al. 2022, Sec. 4.3.2; SD3 adds the shift)

    x = (r - shift_factor) * scaling_factor,       and decoding runs the decoder on x / scaling_factor + shift_factor.

``AutoencoderKL``: r is the posterior's mean (``posterior = "mean"``), or a draw mean + std * N(0, I) per
training batch (``"sample"``, the latent diffusion training recipe); scaling_factor and shift_factor come
from its config.json unless the spec sets them. A pair: ``encoder(image)`` returns r (a tensor, or an
object with ``.latent_dist`` or ``.sample``) and ``decoder(x)`` an image; scaling 1 and shift 0 unless set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fmmkit.external.converted import module_output
from fmmkit.external.modules import ModuleLoadError, ModuleSource, build_module, frozen


class Autoencoder(nn.Module):
    """encode(images) -> (mean, std) of the scaled latents; decode(latents) -> images, both batched."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, scaling_factor: float, shift_factor: float,
                 identity: dict[str, Any], diffusers_vae: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.identity = identity
        self.diffusers_vae = diffusers_vae

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mean, std) of x = (r - shift) * scale for images (B, C, H, W) in [-1, 1]; std None for a deterministic encoder."""
        out = self.encoder(images)
        dist = getattr(out, "latent_dist", None)
        if dist is not None:
            mean, std = dist.mean, dist.std
        else:
            mean, std = module_output(out), None
        scaled = (mean - self.shift_factor) * self.scaling_factor
        return scaled, (None if std is None else std * self.scaling_factor)

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1] (clamped) from scaled latents."""
        return module_output(self.decoder(latents / self.scaling_factor + self.shift_factor)).clamp(-1, 1)

    def key(self) -> str:
        """A digest of what the latents depend on (config, weights' size and time, scaling) for the cache."""
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _DiffusersPart(nn.Module):
    """One half of an AutoencoderKL: ``encode`` or ``decode`` as forward."""

    def __init__(self, vae: nn.Module, method: str) -> None:
        super().__init__()
        self.vae = vae
        self.method = method

    def forward(self, x: Tensor) -> Any:
        return getattr(self.vae, self.method)(x)


def _file_identity(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def diffusers_autoencoder(folder: str, scaling_factor: float | None, shift_factor: float | None, where: str) -> Autoencoder:
    """An AutoencoderKL read from a local folder (local_files_only), frozen."""
    from fmmkit.external.diffusers_folder import require_diffusers

    diffusers = require_diffusers(f"{where}.vae")
    root = Path(folder).expanduser()
    sub = root / "vae" if (root / "vae" / "config.json").is_file() else root
    if not (sub / "config.json").is_file():
        raise ModuleLoadError(f"{where}.vae: no AutoencoderKL folder at '{folder}' (no config.json, no vae/config.json); "
                              "give a folder that AutoencoderKL.save_pretrained wrote")
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(str(sub), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:
        raise ModuleLoadError(f"{where}.vae: cannot load an AutoencoderKL from '{sub}' ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    frozen(vae)
    cfg = vae.config
    scale = scaling_factor if scaling_factor is not None else float(cfg.get("scaling_factor") or 1.0)
    shift = shift_factor if shift_factor is not None else float(cfg.get("shift_factor") or 0.0)
    weights = sorted(p for p in sub.iterdir() if p.suffix in (".safetensors", ".bin"))
    identity = {"vae": json.loads((sub / "config.json").read_text()), "weights": [_file_identity(p) for p in weights],
                "scaling_factor": scale, "shift_factor": shift}
    return Autoencoder(_DiffusersPart(vae, "encode"), _DiffusersPart(vae, "decode"), scale, shift, identity, True)


def module_autoencoder(encoder: ModuleSource, decoder: ModuleSource, scaling_factor: float | None,
                       shift_factor: float | None, where: str) -> Autoencoder:
    """An encoder/decoder pair from factories (:mod:`fmmkit.external.modules`), frozen."""
    enc = frozen(build_module(encoder, f"{where}.encoder"))
    dec = frozen(build_module(decoder, f"{where}.decoder"))
    identity: dict[str, Any] = {"scaling_factor": scaling_factor or 1.0, "shift_factor": shift_factor or 0.0}
    for name, source in (("encoder", encoder), ("decoder", decoder)):
        weights = Path(source.weights).expanduser() if source.weights else None
        identity[name] = {"factory": source.factory, "kwargs": source.kwargs, "prefix": source.weights_prefix,
                          "weights": _file_identity(weights) if weights is not None else None}
    scale = scaling_factor if scaling_factor is not None else 1.0
    shift = shift_factor if shift_factor is not None else 0.0
    return Autoencoder(enc, dec, scale, shift, identity, False)
