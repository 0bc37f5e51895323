"""The path a plugin author walks, with the outside plugin of ``tests/outside_plugin`` installed the way
pip installs one (a dist-info with an ``fmmkit`` entry point on sys.path): each item asserts its
exact one-line message."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fmmkit.cli import main
from fmmkit.registry import PluginWarning, RegistryError, load_registry, reset_registry
from fmmkit.spec import SpecError, load_spec

OUTSIDE = Path(__file__).parent / "outside_plugin"
SPEC = """\
name = "blob_run"

[data]
kind = "blob"

[interpolant]
kind = "smoothstep"

[model]
kind = "tiny_mlp"

[loss]
kind = "scaled_flow_matching"
scale = 2.0

[loss.times]
distribution = "logit_normal"

[train]
steps = 2
batch_size = 64

[sample]
steps = [1]
num_pictures = 64
picture_solver_steps = 2

[eval]
num_samples = 64
metrics = ["energy_distance", {kind = "mean_gap", power = 2.0}]
ode = [{kind = "euler", steps = 2}]
"""
COMPONENTS = "dataset 'blob', interpolant 'smoothstep', backbone 'tiny_mlp', loss 'scaled_flow_matching', metric 'mean_gap'"


def _dist_info(site: Path, dist: str, entry: str) -> None:
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[fmmkit]\n{entry}\n")


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The outside plugin installed (distribution fmmkit-outside-plugin, entry point outside); yields the
    spec file using its components."""
    site = tmp_path / "site"
    _dist_info(site, "fmmkit-outside-plugin", "outside = fmmkit_outside")
    monkeypatch.syspath_prepend(str(OUTSIDE))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FMMKIT_BLOCK_PLUGINS", raising=False)
    spec = tmp_path / "blob.toml"
    spec.write_text(SPEC)
    reset_registry()
    yield spec
    reset_registry()


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# -- the testing kit ----------------------------------------------------------------------------


def test_a_loss_drawing_its_noise_first_passes_the_exact_map_check(installed: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import fmmkit.testing.assertions as kit
    from fmmkit.core import BuildContext
    from fmmkit.testing import assert_loss_minimised_by_exact_map, build_interpolant
    from fmmkit_outside import NoiseFirstFlowMatching

    loss = NoiseFirstFlowMatching.build(NoiseFirstFlowMatching.Config(), BuildContext(interpolant=build_interpolant("linear")))
    assert_loss_minimised_by_exact_map(loss, check_value=True)
    monkeypatch.setattr(kit, "loss_stream_seed", lambda seed: seed)  # the former shared stream
    with pytest.raises(AssertionError, match="is not minimised by the exact map"):
        assert_loss_minimised_by_exact_map(loss, check_value=True)


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, 30),
    (["--hypothesis-profile=fmmkit-ci"], {}, 30),
    (["--hypothesis-profile=fmmkit-deep"], {}, 1000),
    ([], {"HYPOTHESIS_PROFILE": "fmmkit-deep"}, 1000),
])
def test_hypothesis_profiles_work_in_any_project(tmp_path: Path, args: list[str], env: dict[str, str],
                                                 expected: int) -> None:
    (tmp_path / "test_profile.py").write_text(
        "from hypothesis import settings\n\ndef test_profile():\n    assert settings().max_examples == %d\n" % expected)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k != "HYPOTHESIS_PROFILE"}, **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


# -- specs: metric parameters, spec check --------------------------------------------------------


def test_metric_parameters_come_from_the_spec(installed: Path) -> None:
    from fmmkit.evaluation import build_metrics

    spec = load_spec(installed)
    assert [m.kind for m in spec.eval.metrics] == ["energy_distance", "mean_gap"]
    metric = build_metrics(spec, spec_registry())["mean_gap"]
    samples, reference = torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.zeros(2, 2)
    assert metric(samples, reference) == pytest.approx(4.0)  # |mean gap|^2 with power 2
    assert spec.loss.config.times.distribution == "logit_normal" and spec.loss.config.scale == 2.0


def spec_registry():  # type: ignore[no-untyped-def]
    from fmmkit.registry import get_registry

    return get_registry()


def test_spec_check_builds_the_metrics(installed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "check", str(installed)]) == 0
    assert capsys.readouterr().out.strip() == f"{installed}: ok"
    assert main(["spec", "check", str(installed), "--set", 'eval.metrics=[{kind = "mean_gap", power = 20.0}]']) == 2
    assert _errors(capsys) == ["fmmkit: error: metric 'mean_gap' of plugin 'outside' 1.0 failed to build: "
                               "RuntimeError: power above 10 overflows; a bug in the plugin, not in your spec"]


# -- registration ---------------------------------------------------------------------------------


def test_registration_checks_each_component_once(installed: Path) -> None:
    from fmmkit_outside.broken import BadDefaults

    with pytest.warns(PluginWarning):
        registry = load_registry(extra_plugins=[("bad", BadDefaults())], entry_points=False)
    assert registry.failures == [
        "plugin 'bad': default of loss 'bad_default'.scale is invalid: must be > 0, got -1.0; loss 'bad_default' is skipped",
        "plugin 'bad': loss 'not_attrs'.Config is not an attrs class; loss 'not_attrs' is skipped",
    ]
    assert registry.get("loss", "fine_too").plugin == "bad"


def test_a_raising_hook_skips_its_losses_spelled_right() -> None:
    sys.path.insert(0, str(OUTSIDE))
    try:
        from fmmkit_outside.broken import Exploding
    finally:
        sys.path.remove(str(OUTSIDE))
    with pytest.warns(PluginWarning):
        registry = load_registry(extra_plugins=[("bad", Exploding())], entry_points=False)
    assert registry.failures == ["plugin 'bad' raised in register_losses and its losses are skipped: RuntimeError: boom"]


def test_every_registration_is_one_trace_line(installed: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FMMKIT_TRACE_HOOKS", "1")
    load_registry()
    lines = capsys.readouterr().err.splitlines()
    assert "fmmkit trace: register_datasets outside: blob" in lines
    assert "fmmkit trace: register_losses outside: scaled_flow_matching, noise_first_flow_matching" in lines
    assert "fmmkit trace: register_losses fmmkit.losses.meanflow: meanflow" in lines
    assert all(line.startswith("fmmkit trace: register_") for line in lines)


# -- clashes and blocking -------------------------------------------------------------------------


@pytest.fixture
def twin(installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A second installed plugin (after the outside one on sys.path) registering two of its names."""
    site = tmp_path / "site2"
    _dist_info(site, "fmmkit-twin", "twin = fmmkit_outside.broken:TWIN")
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    importlib.invalidate_caches()
    reset_registry()
    return installed


CLASHES = [
    "interpolant 'smoothstep' is registered by two plugins: 'outside' (1.0) and 'twin' (1.0); rename one, or block "
    "the later one with FMMKIT_BLOCK_PLUGINS=twin",
    "dataset 'blob' is registered by two plugins: 'outside' (1.0) and 'twin' (1.0); rename one, or block the later "
    "one with FMMKIT_BLOCK_PLUGINS=twin",
]


def test_all_clashes_at_once_and_fmmkit_plugins_still_lists(twin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RegistryError) as caught:
        load_registry()
    assert str(caught.value).splitlines() == CLASHES
    assert main(["spec", "check", str(twin)]) == 2
    assert _errors(capsys) == [f"fmmkit: error: {line}" for line in CLASHES]
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("clash: ")] == [f"clash: {c}" for c in CLASHES]
    assert "  outside 1.0 (installed): register_backbones, register_datasets" in out


def test_blocking_by_distribution_name_is_shown_and_named_in_spec_errors(
        installed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FMMKIT_BLOCK_PLUGINS", "fmmkit_outside_plugin")  # the distribution, spelled loosely
    reset_registry()
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "blocked: plugin 'outside' 1.0 (distribution fmmkit-outside-plugin) by FMMKIT_BLOCK_PLUGINS" in out
    assert "blob" not in out
    assert main(["spec", "check", str(installed)]) == 2
    assert _errors(capsys) == [f"fmmkit: error: {installed}: data.kind: dataset 'blob' is provided by plugin "
                               "'outside', blocked by FMMKIT_BLOCK_PLUGINS; unblock it to use 'blob'"]


# -- runs record their plugins --------------------------------------------------------------------


def test_run_json_records_the_plugins_and_a_missing_one_is_named(installed: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fmmkit.runs.run import load_run
    from fmmkit.training.loop import train

    run = train(installed, out=tmp_path / "run", progress=False)
    plugins = {p["plugin"]: p for p in json.loads((run / "run.json").read_text())["plugins"]}
    assert plugins["outside"] == {"plugin": "outside", "version": "1.0", "distribution": "fmmkit-outside-plugin",
                                  "components": ["dataset blob", "interpolant smoothstep", "backbone tiny_mlp",
                                                 "loss scaled_flow_matching", "metric mean_gap"]}
    assert plugins["fmmkit.samplers.ode"]["distribution"] == "fmmkit"

    monkeypatch.setenv("FMMKIT_BLOCK_PLUGINS", "outside")
    with pytest.raises(SpecError) as blocked:
        load_run(run, registry=load_registry())
    assert str(blocked.value) == (f"{run}: this run uses {COMPONENTS} of plugin 'outside', blocked by "
                                  "FMMKIT_BLOCK_PLUGINS; unblock it to load the run")
    monkeypatch.delenv("FMMKIT_BLOCK_PLUGINS")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site" not in Path(p).name])  # uninstalled
    with pytest.raises(SpecError) as missing:
        load_run(run, registry=load_registry())
    assert str(missing.value) == (f"{run}: this run was trained with plugin 'outside' 1.0 ({COMPONENTS}), which is "
                                  "not installed; install it (pip install 'fmmkit-outside-plugin==1.0') to load the run")
