"""The component registry: every interpolant, backbone, loss, sampler, data set, metric and teacher
that fmmkit's default plugins and the installed third-party plugins register through pluggy.

Environment variables:
  FMMKIT_BLOCK_PLUGINS  comma-separated plugin names to skip (as ``fmmkit plugins`` lists them).
  FMMKIT_TRACE_HOOKS    when set (to anything but 0), every hook call is traced on stderr.
  FMMKIT_NO_ENTRY_POINTS  when set, third-party plugins from entry points are not loaded.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any

import pluggy

from fmmkit import hookspecs
from fmmkit.core.errors import UserError
from fmmkit.core import Backbone, DataSource, EmptyConfig, Interpolant, Loss, Metric, Sampler
from fmmkit.core.attention import AttentionBackend
from fmmkit.version import __version__

ENTRY_POINT_GROUP = "fmmkit"

#: hook name -> (kind used in specs and messages, base class a component must subclass or None)
KINDS: dict[str, tuple[str, type | None]] = {
    "register_interpolants": ("interpolant", Interpolant),
    "register_backbones": ("backbone", Backbone),
    "register_losses": ("loss", Loss),
    "register_samplers": ("sampler", Sampler),
    "register_datasets": ("dataset", DataSource),
    "register_metrics": ("metric", Metric),
    "register_teachers": ("teacher", None),
    "register_attention_backends": ("attention_backend", AttentionBackend),
}

#: fmmkit's default plugins, registered in this order before any installed plugin: the modules that
#: implement hooks (a new built-in component module must be added here; helper modules are not).
BUILTIN_PLUGINS = (
    "fmmkit.interpolants.linear",
    "fmmkit.interpolants.trig",
    "fmmkit.nets.attention",
    "fmmkit.nets.dit",
    "fmmkit.nets.mlp",
    "fmmkit.nets.unet",
    "fmmkit.losses.align_your_flow",
    "fmmkit.losses.consistency",
    "fmmkit.losses.direct_flow_map_matching",
    "fmmkit.losses.eulerian_distillation",
    "fmmkit.losses.eulerian_self_distillation",
    "fmmkit.losses.flow_matching",
    "fmmkit.losses.lagrangian_distillation",
    "fmmkit.losses.lagrangian_self_distillation",
    "fmmkit.losses.meanflow",
    "fmmkit.losses.progressive_distillation",
    "fmmkit.losses.progressive_self_distillation",
    "fmmkit.losses.shortcut",
    "fmmkit.samplers.flow_map",
    "fmmkit.samplers.ode",
    "fmmkit.data.digits",
    "fmmkit.data.gaussian",
    "fmmkit.data.npy",
    "fmmkit.data.toy2d",
    "fmmkit.data.vision",
    "fmmkit.metrics.digits_fd",
    "fmmkit.metrics.fid",
    "fmmkit.metrics.point_cloud",
    "fmmkit.teachers.gaussian",
    "fmmkit.teachers.gaussian_mixture",
    "fmmkit.teachers.run",
)


def plural(kind: str) -> str:
    """'loss' -> 'losses', 'sampler' -> 'samplers'."""
    return kind + ("es" if kind.endswith("s") else "s")


class PluginWarning(UserWarning):
    """A plugin failed to import or raised in a hook; it was skipped."""


class RegistryError(UserError):
    """A registry lookup or a plugin conflict the user must resolve (one-line message)."""


class UnknownComponentError(RegistryError, KeyError):
    """No component of that kind is registered under that name."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    component: Any
    config: type
    plugin: str
    version: str

    def build(self, config: Any, ctx: Any) -> Any:
        """Build the component from a validated config instance."""
        return self.component.build(config, ctx)


@dataclass
class PluginInfo:
    """A loaded plugin: its name, version, the hooks it implements, and where it came from."""

    name: str
    version: str
    hooks: list[str]
    builtin: bool


@dataclass
class Registry:
    """Components by kind and name, with the plugins that provided them."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k, _ in KINDS.values()})
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; UnknownComponentError lists the registered names otherwise."""
        table = self.entries[kind]
        if name in table:
            return table[name]
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownComponentError(
            f"unknown {kind} '{name}'; {hint}registered: {', '.join(sorted(table)) or '(none)'}"
        )

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self.entries[kind])

    def build(self, kind: str, name: str, config: Any, ctx: Any) -> Any:
        """Build a registered component."""
        return self.get(kind, name).build(config, ctx)


def _warn(message: str, failures: list[str]) -> None:
    failures.append(message)
    warnings.warn(message, PluginWarning, stacklevel=3)


def _blocked() -> set[str]:
    return {p.strip() for p in os.environ.get("FMMKIT_BLOCK_PLUGINS", "").split(",") if p.strip()}


def _builtin_modules(failures: list[str]) -> list[ModuleType]:
    modules = []
    for name in BUILTIN_PLUGINS:
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:  # a broken built-in must not take the others down
            _warn(f"plugin '{name}' failed to import and is skipped: {type(exc).__name__}: {exc}", failures)
    return modules


def _entry_point_plugins(failures: list[str], blocked: set[str]) -> list[tuple[str, str, Any]]:
    if os.environ.get("FMMKIT_NO_ENTRY_POINTS"):
        return []
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked:
            continue
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            found.append((ep.name, version, ep.load()))
        except Exception as exc:
            _warn(f"plugin '{ep.name}' failed to import and is skipped: {type(exc).__name__}: {exc}", failures)
    return found


def make_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with fmmkit's hookspecs; tracing on stderr if FMMKIT_TRACE_HOOKS is set."""
    pm = pluggy.PluginManager("fmmkit")
    pm.add_hookspecs(hookspecs)
    if os.environ.get("FMMKIT_TRACE_HOOKS", "0") not in ("", "0"):
        pm.trace.root.setwriter(lambda line: sys.stderr.write(f"fmmkit trace: {line}"))
        pm.enable_tracing()
    return pm


def load_registry(extra_plugins: Iterable[tuple[str, Any]] = (), entry_points: bool = True) -> Registry:
    """Load every plugin and collect its registrations.

    ``extra_plugins`` are (name, module-or-object) pairs registered after the built-ins (tests use
    it). Raises RegistryError when two plugins register the same name for one kind.
    """
    registry = Registry()
    blocked = _blocked()
    pm = make_plugin_manager()
    plugins: list[tuple[str, str, Any, bool]] = [
        (m.__name__, __version__, m, True) for m in _builtin_modules(registry.failures)
    ]
    if entry_points:
        plugins += [(n, v, obj, False) for n, v, obj in _entry_point_plugins(registry.failures, blocked)]
    plugins += [(n, getattr(obj, "__version__", "?"), obj, False) for n, obj in extra_plugins]
    versions: dict[str, str] = {}
    for name, version, obj, builtin in plugins:
        if name in blocked:
            continue
        try:
            pm.register(obj, name=name)
        except Exception as exc:
            _warn(f"plugin '{name}' could not be registered and is skipped: {type(exc).__name__}: {exc}", registry.failures)
            continue
        versions[name] = version
        hooks = [caller.name for caller in pm.get_hookcallers(obj) or []]
        registry.plugins.append(PluginInfo(name, version, sorted(hooks), builtin))

    for hook_name, (kind, base) in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            plugin_name = impl.plugin_name
            others = [p for p in pm.get_plugins() if p is not impl.plugin]
            staged: dict[str, Entry] = {}

            def register(name: str, component: Any, *, config: type | None = None, _p: str = plugin_name) -> None:
                if base is not None and not (isinstance(component, type) and issubclass(component, base)):
                    raise TypeError(f"{kind} '{name}' must be a subclass of {base.__module__}.{base.__name__}")
                if not hasattr(component, "build"):
                    raise TypeError(f"{kind} '{name}' has no build(config, ctx) classmethod")
                cfg = config or getattr(component, "Config", EmptyConfig)
                staged[name] = Entry(kind, name, component, cfg, _p, versions.get(_p, "?"))

            try:
                pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
            except Exception as exc:
                _warn(
                    f"plugin '{plugin_name}' raised in {hook_name} and its {kind}s are skipped: "
                    f"{type(exc).__name__}: {exc}",
                    registry.failures,
                )
                continue
            table = registry.entries[kind]
            for name, entry in staged.items():
                if name in table:
                    first = table[name]
                    raise RegistryError(
                        f"{kind} '{name}' is registered by two plugins: '{first.plugin}' ({first.version}) and "
                        f"'{entry.plugin}' ({entry.version}); rename one, or block one with "
                        f"FMMKIT_BLOCK_PLUGINS={entry.plugin}"
                    )
                table[name] = entry
    return registry


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry (loaded once)."""
    return load_registry()


def reset_registry() -> None:
    """Forget the cached registry (after installing or blocking plugins)."""
    get_registry.cache_clear()
