"""The ``latent`` data set: images encoded once by a VAE into resumable safetensors shards, decoded back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pretrained_helpers import save_vae_folder

from fmmkit.core import BuildContext
from fmmkit.data.errors import DataError
from fmmkit.data.latent import MANIFEST, Latent, shard_name
from fmmkit.registry import get_registry
from fmmkit.spec import SpecError, load_spec, spec_to_toml

pytestmark = pytest.mark.usefixtures("one_thread")


def latent_table(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    table = {"kind": "latent", "vae": str(tmp_path / "vae"), "cache": str(tmp_path / "cache"), "shard_size": 700,
             "source": {"kind": "digits", "labels": True}}
    return {**table, **extra}


def build(table: dict[str, Any]) -> Latent:
    spec = load_spec({"data": table, "loss": {"kind": "flow_matching"}})
    return get_registry().build("dataset", spec.data.kind, spec.data.config, BuildContext())


@pytest.fixture
def vae_dir(tmp_path: Path) -> Path:
    return save_vae_folder(tmp_path / "vae")


def test_digits_encoded_once_scaled_and_decoded(tmp_path: Path, vae_dir: Path) -> None:
    from diffusers import AutoencoderKL

    from fmmkit.data.digits import Digits

    data = build(latent_table(tmp_path))
    assert data.shape == (4, 4, 4) and data.num_classes == 10 and not (tmp_path / "cache").exists()  # lazy
    batch = data.sample(8, torch.Generator().manual_seed(0))
    assert batch.x1.shape == (8, 4, 4, 4) and batch.y is not None
    shards = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert shards == [MANIFEST, shard_name(0), shard_name(1), shard_name(2)]  # 1797 digits, 700 per shard
    # latents = (posterior mean - shift) * scale, the config's factors, in the source's order
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    digits = Digits()
    images = digits.to_model_space(digits.pixels()[0][:5])
    with torch.no_grad():
        want = (vae.encode(images).latent_dist.mean - 0.1) * 0.5
        mean, _, labels = data.latents()
        torch.testing.assert_close(mean[:5], want, rtol=1e-5, atol=1e-5)
        assert torch.equal(labels, digits.pixels()[1])
        torch.testing.assert_close(data.decode(mean[:5]), vae.decode(mean[:5] / 0.5 + 0.1).sample.clamp(-1, 1),
                                   rtol=1e-5, atol=1e-5)
    assert data.decode(batch.x1).shape == (8, 1, 8, 8) and data.pixel_source is data.source
    # a second build reads the shards and never runs the encoder
    again = build(latent_table(tmp_path))
    again.autoencoder.encode = None  # type: ignore[assignment,method-assign]
    assert torch.equal(again.latents()[0], mean)


def test_an_interrupted_encoding_resumes_at_the_missing_shards(tmp_path: Path, vae_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = Latent._encode_shard

    def failing(self: Latent, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        calls.append(images.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images, labels)

    monkeypatch.setattr(Latent, "_encode_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        build(latent_table(tmp_path)).latents()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [shard_name(0)]
    full = build(latent_table(tmp_path)).latents()[0]
    assert calls == [700, 700, 700, 397]  # shard 1 again, then shard 2; shard 0 was kept
    monkeypatch.setattr(Latent, "_encode_shard", original)
    import shutil

    shutil.rmtree(tmp_path / "cache")
    assert torch.equal(build(latent_table(tmp_path)).latents()[0], full)  # the same as one uninterrupted encoding


def test_a_cache_for_another_vae_or_source_is_refused(tmp_path: Path, vae_dir: Path) -> None:
    build(latent_table(tmp_path)).latents()
    with pytest.raises(DataError) as err:
        build(latent_table(tmp_path, scaling_factor=2.0)).latents()
    assert str(err.value).startswith("data.cache: ") and "another source or autoencoder" in str(err.value)
    assert "\n" not in str(err.value)
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert manifest["count"] == 1797 and manifest["scaling_factor"] == 0.5 and manifest["shift_factor"] == 0.1


def test_a_module_pair_without_weights_round_trips_exactly(tmp_path: Path) -> None:
    """PixelUnshuffle / PixelShuffle: a lossless 'autoencoder' (1, 8, 8) <-> (4, 4, 4)."""
    table = {"kind": "latent", "cache": str(tmp_path / "cache"), "source": {"kind": "digits"},
             "encoder": {"factory": "torch.nn:PixelUnshuffle", "kwargs": {"downscale_factor": 2}},
             "decoder": {"factory": "torch.nn:PixelShuffle", "kwargs": {"upscale_factor": 2}}}
    data = build(table)
    assert data.shape == (4, 4, 4) and data.num_classes is None
    mean, std, labels = data.latents()
    assert std is None and labels is None
    pixels = data.source.to_model_space(data.source.pixels()[0])  # type: ignore[attr-defined]
    assert torch.equal(data.decode(mean), pixels)
    text = spec_to_toml(load_spec({"data": table, "loss": {"kind": "flow_matching"}}))
    assert "[data.source]" in text and "[data.encoder]" in text and 'factory = "torch.nn:PixelUnshuffle"' in text


def test_bad_latent_specs_are_one_line_errors(tmp_path: Path, vae_dir: Path) -> None:
    def spec_problem(table: dict[str, Any]) -> str:
        with pytest.raises(SpecError) as err:
            load_spec({"data": table, "loss": {"kind": "flow_matching"}})
        return str(err.value)

    both = latent_table(tmp_path, encoder={"factory": "a:b"}, decoder={"factory": "a:b"})
    assert spec_problem(both).startswith("<dict>: data.vae: give vae = \"FOLDER\"")
    assert spec_problem({"kind": "latent", "source": {"kind": "digits"}}).startswith("<dict>: data.vae: give vae")
    assert spec_problem(latent_table(tmp_path, source={"kind": "digitz"})).startswith(
        "<dict>: data.source.kind: unknown dataset 'digitz'; did you mean 'digits'?")
    assert spec_problem(latent_table(tmp_path, source={"kind": "digits", "sise": 8})).startswith(
        "<dict>: data.source.sise: unknown key; did you mean 'size'?")
    with pytest.raises(DataError, match=r"^data.source: latent needs an image data set"):
        build(latent_table(tmp_path, source={"kind": "checkerboard"}))
    from fmmkit.external.modules import ModuleLoadError

    with pytest.raises(ModuleLoadError, match=r"^data.vae: no AutoencoderKL folder at"):
        build(latent_table(tmp_path, vae=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"^data.vae: the autoencoder cannot encode images of shape \(3, 32, 32\)"):
        build(latent_table(tmp_path, source={"kind": "cifar10"}))  # a one-channel VAE
