"""The pluggy registry: built-ins as default plugins, entry points, conflicts, broken plugins,
blocking and tracing."""

from __future__ import annotations

import os
import subprocess
import sys
import re
from pathlib import Path

import pytest

from fmmkit import hookimpl
from fmmkit.interpolants.linear import LinearInterpolant
from fmmkit.registry import KINDS, PluginWarning, RegistryError, UnknownComponentError, load_registry


class Duplicate:
    """A plugin that registers a second 'linear' interpolant."""

    __version__ = "9.9"

    @hookimpl
    def register_interpolants(self, register):  # type: ignore[no-untyped-def]
        register("linear", LinearInterpolant)


class Exploding:
    """A plugin whose hook raises."""

    @hookimpl
    def register_losses(self, register):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")


class WrongType:
    @hookimpl
    def register_losses(self, register):  # type: ignore[no-untyped-def]
        register("not_a_loss", LinearInterpolant)


def test_every_builtin_kind_is_populated() -> None:
    registry = load_registry(entry_points=False)
    expected = {
        "interpolant": {"linear", "trig"},
        "backbone": {"mlp"},
        "loss": {"flow_matching", "lagrangian_distillation", "lagrangian_self_distillation"},
        "sampler": {"flow_map", "euler", "heun", "midpoint", "rk4", "dopri5"},
        "dataset": {"checkerboard", "eight_gaussians", "two_moons", "pinwheel", "spirals", "npy"},
        "metric": {"energy_distance", "sliced_w2", "histogram_kl", "in_support"},
    }
    for kind, names in expected.items():
        assert names <= set(registry.names(kind)), kind
    entry = registry.get("interpolant", "linear")
    assert entry.plugin == "fmmkit.interpolants.linear" and entry.component is LinearInterpolant
    assert {k for k, _ in KINDS.values()} == set(registry.entries)


def test_unknown_name_lists_registered_and_suggests() -> None:
    registry = load_registry(entry_points=False)
    with pytest.raises(UnknownComponentError, match=r"unknown interpolant 'lineer'; did you mean 'linear'\?.*trig"):
        registry.get("interpolant", "lineer")


def test_conflict_names_both_plugins() -> None:
    with pytest.raises(RegistryError, match=r"'fmmkit.interpolants.linear' .*'dup' \(9.9\).*FMMKIT_BLOCK_PLUGINS=dup"):
        load_registry(extra_plugins=[("dup", Duplicate())], entry_points=False)


def test_blocked_plugin_resolves_a_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMMKIT_BLOCK_PLUGINS", "dup")
    registry = load_registry(extra_plugins=[("dup", Duplicate())], entry_points=False)
    assert registry.get("interpolant", "linear").plugin == "fmmkit.interpolants.linear"
    assert "dup" not in {p.name for p in registry.plugins}


def test_raising_hook_warns_once_and_spares_the_rest() -> None:
    with pytest.warns(PluginWarning, match=r"plugin 'bad' raised in register_losses .*RuntimeError: boom"):
        registry = load_registry(extra_plugins=[("bad", Exploding())], entry_points=False)
    assert "flow_matching" in registry.names("loss")
    assert len(registry.failures) == 1 and "\n" not in registry.failures[0]


def test_component_of_the_wrong_kind_is_refused() -> None:
    with pytest.warns(PluginWarning, match=r"'not_a_loss' must be a subclass of fmmkit.core.loss.Loss"):
        registry = load_registry(extra_plugins=[("wrong", WrongType())], entry_points=False)
    assert "not_a_loss" not in registry.names("loss")


def test_example_plugin_arrives_through_its_entry_point() -> None:
    registry = load_registry()
    for kind, name in [("interpolant", "quadratic"), ("dataset", "ring"), ("loss", "pseudo_huber_flow_matching")]:
        entry = registry.get(kind, name)
        assert (entry.plugin, entry.version) == ("fmmkit-example", "0.1.0")


def _fake_distribution(root: Path, name: str, target: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[fmmkit]\n{name} = {target}\n")


def _run_cli(args: list[str], env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "fmmkit.cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_plugin_that_fails_to_import_is_one_warning_line(tmp_path: Path) -> None:
    _fake_distribution(tmp_path / "site", "broken-plugin", "module_that_does_not_exist")
    proc = _run_cli(["plugins"], {"PYTHONPATH": str(tmp_path / "site")}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "broken-plugin" in line]
    assert lines == ["fmmkit: warning: plugin 'broken-plugin' failed to import and is skipped: "
                     "ModuleNotFoundError: No module named 'module_that_does_not_exist'"]
    assert "Traceback" not in proc.stderr
    assert "checkerboard" in proc.stdout and "quadratic" in proc.stdout


def test_block_and_trace_environment_variables(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from fmmkit.cli import main

    monkeypatch.setenv("FMMKIT_BLOCK_PLUGINS", "fmmkit-example")
    monkeypatch.setenv("FMMKIT_TRACE_HOOKS", "1")
    assert main(["plugins"]) == 0
    out, err = capsys.readouterr()
    assert "quadratic" not in out
    assert "fmmkit trace:" in err and "register_losses" in err


def test_plugins_command_lists_versions_and_hooks(capsys: pytest.CaptureFixture[str]) -> None:
    from fmmkit.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "fmmkit-example 0.1.0 (installed): register_datasets, register_interpolants, register_losses" in out
    assert re.search(r"^  ring +fmmkit-example 0\.1\.0$", out, re.MULTILINE)


def test_builtin_plugins_are_exactly_the_modules_with_hooks() -> None:
    import importlib.util
    import pkgutil

    import fmmkit
    from fmmkit.registry import BUILTIN_PLUGINS

    with_hooks = set()
    for info in pkgutil.walk_packages(fmmkit.__path__, "fmmkit."):
        source = Path(importlib.util.find_spec(info.name).origin).read_text()  # type: ignore[union-attr,arg-type]
        if "@hookimpl" in source and info.name != "fmmkit.hookspecs":
            with_hooks.add(info.name)
    assert set(BUILTIN_PLUGINS) == with_hooks, "add a new component module to fmmkit.registry.BUILTIN_PLUGINS"
    registry = load_registry(entry_points=False)
    assert all(p.hooks for p in registry.plugins if p.builtin) and len(registry.plugins) == len(BUILTIN_PLUGINS)
