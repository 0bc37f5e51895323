"""``latent``: any registered image data set, encoded once by an autoencoder, as the data a run trains on.

    [data]
    kind = "latent"
    vae = "models/my_vae"          # a diffusers AutoencoderKL folder (or [data.encoder] + [data.decoder])
    [data.source]                  # the image data set, with its own keys
    kind = "digits"
    size = 16

Every stored image of the source (at its configured size, without random flips) is encoded once
into safetensors shards of ``shard_size`` latents under ``cache`` (default
CACHE_DIR/latents/KIND-DIGEST, CACHE_DIR as for the digits classifier): an interrupted encoding
resumes at the first missing shard, a progress bar shows it, and training then only reads the
shards (the encoder never runs in a training step). The digest covers the source's config, the
autoencoder (its config, its weights' size and modification time, the scaling) and ``posterior``;
a cache written for something else is refused. Latents are (r - shift_factor) * scaling_factor
(:mod:`fmmkit.external.vae`). ``decode`` turns sampled latents back into images in [-1, 1], which
pictures and image metrics (digits_fd, fid) use, scored against the source's own images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from fmmkit.core import Batch, BuildContext, DataSource
from fmmkit.core.validators import SpecValueError, at_least, one_of, positive
from fmmkit.data.errors import DataError
from fmmkit.external.modules import ModuleSource
from fmmkit.external.vae import Autoencoder, diffusers_autoencoder, module_autoencoder
from fmmkit.hookspecs import hookimpl
from fmmkit.spec.schema import ComponentSpec

MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    """The file of shard ``index`` in a latent cache."""
    return f"shard-{index:05d}.safetensors"


@attrs.define(frozen=True)
class LatentConfig:
    """source: the image data set (a [data.source] table); vae: a diffusers AutoencoderKL folder, or encoder and
    decoder: torch-module factories ([data.encoder], [data.decoder]: factory, kwargs, weights, ...);
    scaling_factor / shift_factor: override the VAE config's (pairs: 1 and 0); posterior: "mean" (deterministic
    latents) or "sample" (mean + std * noise at every draw); cache: the shard directory; batch_size: images per
    encoder pass; shard_size: latents per shard file."""

    source: ComponentSpec = attrs.field(metadata={"component": "dataset"})
    vae: str | None = None
    encoder: ModuleSource | None = None
    decoder: ModuleSource | None = None
    scaling_factor: float | None = attrs.field(default=None, validator=positive)
    shift_factor: float | None = None
    posterior: str = attrs.field(default="mean", validator=one_of(("mean", "sample")))
    cache: str | None = None
    batch_size: int = attrs.field(default=64, validator=at_least(1))
    shard_size: int = attrs.field(default=4096, validator=at_least(1))

    def __attrs_post_init__(self) -> None:
        has_pair = self.encoder is not None and self.decoder is not None
        half_pair = (self.encoder is None) != (self.decoder is None)
        if half_pair or (self.vae is not None) == has_pair:
            raise SpecValueError("vae", "give vae = \"FOLDER\" (a diffusers AutoencoderKL) or both [data.encoder] and "
                                        "[data.decoder] (torch-module factories), not both and not neither")


class Latent(DataSource):
    """Latents (N, C, h, w) of an image source, read from the shard cache (encoded on first use)."""

    Config = LatentConfig

    def __init__(self, config: LatentConfig, source: DataSource, autoencoder: Autoencoder, shape: tuple[int, ...],
                 cache: Path, key: str) -> None:
        self.config = config
        self.source = source
        self.autoencoder = autoencoder
        self.shape = shape
        self.num_classes = source.num_classes
        self.cache = cache
        self.key = key
        self._mean: Tensor | None = None
        self._std: Tensor | None = None
        self._labels: Tensor | None = None

    @classmethod
    def build(cls, config: LatentConfig, ctx: BuildContext) -> Latent:
        from fmmkit.registry import get_registry

        registry = ctx.extras.get("registry") or get_registry()
        source = registry.build("dataset", config.source.kind, config.source.config, ctx)
        if len(source.shape) != 3 or not hasattr(source, "pixels") or not hasattr(source, "to_model_space"):
            raise DataError(f"data.source: latent needs an image data set that holds its images (digits, mnist, "
                            f"fashion_mnist, cifar10, image_folder); '{config.source.kind}' does not")
        if config.vae is not None:
            autoencoder = diffusers_autoencoder(config.vae, config.scaling_factor, config.shift_factor, "data")
        else:
            assert config.encoder is not None and config.decoder is not None
            autoencoder = module_autoencoder(config.encoder, config.decoder, config.scaling_factor,
                                             config.shift_factor, "data")
        try:
            with torch.no_grad():
                probe, _ = autoencoder.encode(torch.zeros((1, *source.shape)))
        except Exception as exc:
            raise DataError(f"data.vae: the autoencoder cannot encode images of shape {tuple(source.shape)} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                            "choose a source size it accepts (data.source.size)") from None
        identity = {"source": {"kind": config.source.kind, **attrs.asdict(config.source.config)},
                    "autoencoder": autoencoder.key(), "posterior": config.posterior}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if config.cache is not None:
            cache = Path(config.cache).expanduser()
        else:
            from fmmkit.cache import cache_dir

            cache = cache_dir() / "latents" / f"{config.source.kind}-{key}"
        return cls(config, source, autoencoder, tuple(probe.shape[1:]), cache, key)

    # ---- the cache
    def _check_key(self, found: str | None, where: Path) -> None:
        if found != self.key:
            raise DataError(f"data.cache: '{where}' holds latents of another source or autoencoder (key {found}, "
                            f"this spec's {self.key}); delete it or set data.cache to another directory")

    def _read_shard(self, path: Path) -> dict[str, Tensor] | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                self._check_key((f.metadata() or {}).get("key"), path)
                return {k: f.get_tensor(k) for k in f.keys()}
        except DataError:
            raise
        except Exception:  # a damaged shard (an interrupted write cannot leave one, but a copy can): re-encode it
            return None

    def _has_shard(self, path: Path) -> bool:
        """Whether a complete shard of this cache is at ``path`` (its header only is read)."""
        from safetensors import safe_open

        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                found = (f.metadata() or {}).get("key")
                complete = "mean" in f.keys()
        except Exception:
            return False
        self._check_key(found, path)
        return complete

    def _encode_shard(self, images: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        means, stds = [], []
        source: Any = self.source
        with torch.no_grad():
            for i in range(0, images.shape[0], self.config.batch_size):
                mean, std = self.autoencoder.encode(source.to_model_space(images[i:i + self.config.batch_size]))
                means.append(mean.float())
                if self.config.posterior == "sample":
                    if std is None:
                        raise DataError("data.posterior: \"sample\" needs an encoder with a posterior (an AutoencoderKL); "
                                        "use posterior = \"mean\"")
                    stds.append(std.float())
        out = {"mean": torch.cat(means)}
        if stds:
            out["std"] = torch.cat(stds)
        if labels is not None:
            out["labels"] = labels.to(torch.long)
        return out

    def encode_all(self, progress: bool = True) -> None:
        """Encode every image into the shard cache, skipping shards already there (resumable)."""
        from tqdm.auto import tqdm

        from fmmkit.runs.files import atomic_write_text, save_tensors

        manifest = self.cache / MANIFEST
        if manifest.is_file():
            self._check_key(json.loads(manifest.read_text()).get("key"), manifest)
            return
        pixels, labels = self.source.pixels()  # type: ignore[attr-defined]
        n, size = int(pixels.shape[0]), self.config.shard_size
        shards = (n + size - 1) // size
        done = [i for i in range(shards) if self._has_shard(self.cache / shard_name(i))]
        bar = tqdm(total=n, initial=sum(min(size, n - i * size) for i in done), desc="encoding latents", unit="img",
                   disable=not progress)
        for i in range(shards):
            if i in done:
                continue
            lo, hi = i * size, min(n, (i + 1) * size)
            tensors = self._encode_shard(pixels[lo:hi], None if labels is None else labels[lo:hi])
            save_tensors(self.cache / shard_name(i), tensors, metadata={"key": self.key, "start": str(lo), "count": str(hi - lo)})
            bar.update(hi - lo)
        bar.close()
        atomic_write_text(manifest, json.dumps({"key": self.key, "count": n, "shards": shards, "shape": list(self.shape),
                                                "scaling_factor": self.autoencoder.scaling_factor,
                                                "shift_factor": self.autoencoder.shift_factor,
                                                "source": self.config.source.kind}, indent=2))

    def latents(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(mean (N, C, h, w), std or None, labels or None), encoding first if the cache is incomplete."""
        if self._mean is None:
            self.encode_all()
            info = json.loads((self.cache / MANIFEST).read_text())
            parts = [self._read_shard(self.cache / shard_name(i)) for i in range(int(info["shards"]))]
            if any(p is None for p in parts):
                (self.cache / MANIFEST).unlink()
                raise DataError(f"data.cache: a shard under '{self.cache}' is damaged; run again to re-encode it")
            self._mean = torch.cat([p["mean"] for p in parts if p is not None])
            if all(p is not None and "std" in p for p in parts):
                self._std = torch.cat([p["std"] for p in parts if p is not None])
            if self.num_classes is not None:
                self._labels = torch.cat([p["labels"] for p in parts if p is not None])
        return self._mean, self._std, self._labels

    def __len__(self) -> int:
        return int(self.latents()[0].shape[0])

    # ---- the DataSource interface
    def sample(self, n: int, generator: torch.Generator) -> Batch:
        mean, std, labels = self.latents()
        idx = torch.randint(mean.shape[0], (n,), generator=generator)
        x = mean[idx]
        if self.config.posterior == "sample" and std is not None:
            x = x + std[idx] * torch.randn(x.shape, generator=generator)
        return Batch(x, None if labels is None else labels[idx])

    def decode(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] of the source's shape from latents (B, C, h, w), in batches of ``batch_size``."""
        self.autoencoder.to(x.device)
        with torch.no_grad():
            return torch.cat([self.autoencoder.decode(x[i:i + self.config.batch_size])
                              for i in range(0, x.shape[0], self.config.batch_size)])

    @property
    def pixel_source(self) -> DataSource:
        return self.source


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register("latent", Latent)
