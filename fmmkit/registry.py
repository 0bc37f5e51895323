"""The component registry: every interpolant, backbone, loss, sampler, data set, metric and teacher
that fmmkit's default plugins and the installed third-party plugins register through pluggy.

Environment variables:
  FMMKIT_BLOCK_PLUGINS  comma-separated plugins to skip: plugin names (as ``fmmkit plugins`` lists
                        them) or the names of the distributions that installed them.
  FMMKIT_TRACE_HOOKS    when set (to anything but 0), one line per registration on stderr:
                        ``fmmkit trace: HOOK PLUGIN: name, name``.
  FMMKIT_NO_ENTRY_POINTS  when set, third-party plugins from entry points are not loaded.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pluggy

from fmmkit import hookspecs
from fmmkit.core.errors import UserError
from fmmkit.core import Backbone, DataSource, EmptyConfig, Interpolant, Loss, Metric, Sampler
from fmmkit.core.attention import AttentionBackend
from fmmkit.core.validators import SpecValueError
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
    "fmmkit.nets.torch_module",
    "fmmkit.nets.unet",
    "fmmkit.losses.align_your_flow",
    "fmmkit.losses.consistency",
    "fmmkit.losses.direct_flow_map_matching",
    "fmmkit.losses.eulerian_distillation",
    "fmmkit.losses.eulerian_self_distillation",
    "fmmkit.losses.flow_matching",
    "fmmkit.losses.freeflow",
    "fmmkit.losses.improved_meanflow",
    "fmmkit.losses.lagrangian_distillation",
    "fmmkit.losses.lagrangian_self_distillation",
    "fmmkit.losses.meanflow",
    "fmmkit.losses.progressive_distillation",
    "fmmkit.losses.progressive_self_distillation",
    "fmmkit.losses.shortcut",
    "fmmkit.samplers.flow_map",
    "fmmkit.samplers.ode",
    "fmmkit.samplers.stochastic",
    "fmmkit.data.digits",
    "fmmkit.data.gaussian",
    "fmmkit.data.latent",
    "fmmkit.data.npy",
    "fmmkit.data.prior",
    "fmmkit.data.toy2d",
    "fmmkit.data.vision",
    "fmmkit.metrics.digits_fd",
    "fmmkit.metrics.fid",
    "fmmkit.metrics.in_support",
    "fmmkit.metrics.point_cloud",
    "fmmkit.teachers.gaussian",
    "fmmkit.teachers.gaussian_mixture",
    "fmmkit.teachers.run",
    "fmmkit.teachers.torch_module",
    "fmmkit.teachers.diffusers_model",
)


#: kind -> its plural, for messages and ``fmmkit plugins`` headings (a table: "loss" + "s" is not a word)
PLURALS: dict[str, str] = {
    "interpolant": "interpolants",
    "backbone": "backbones",
    "loss": "losses",
    "sampler": "samplers",
    "dataset": "datasets",
    "metric": "metrics",
    "teacher": "teachers",
    "attention_backend": "attention_backends",
}

BLOCK_VARIABLE = "FMMKIT_BLOCK_PLUGINS"


def plural(kind: str) -> str:
    """'loss' -> 'losses', 'sampler' -> 'samplers'."""
    return PLURALS[kind]


class PluginWarning(UserWarning):
    """A plugin (or one of its components) failed to import, raised in a hook or is invalid; it was skipped."""


class RegistryError(UserError):
    """A registry lookup or a plugin conflict the user must resolve (one line per problem)."""


class UnknownComponentError(RegistryError, KeyError):
    """No component of that kind is registered under that name."""

    def __str__(self) -> str:
        return str(self.args[0])


class ComponentBuildError(UserError):
    """A registered component raised while it was built: a bug in its plugin, named in one line."""


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
        """Build the component from a validated config instance.

        A UserError or SpecValueError (a problem in the user's spec) passes through; anything else
        the component raises becomes one ComponentBuildError line naming the component and its plugin.
        """
        try:
            return self.component.build(config, ctx)
        except (UserError, SpecValueError):
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ComponentBuildError(
                f"{self.kind} '{self.name}' of plugin '{self.plugin}' {self.version} failed to build: "
                f"{type(exc).__name__}: {first}; a bug in the plugin, not in your spec"
            ) from exc


@dataclass
class PluginInfo:
    """A loaded plugin: its name, version, the hooks it implements, where it came from (``builtin``)
    and the Python distribution that installed it (what ``pip install`` takes)."""

    name: str
    version: str
    hooks: list[str]
    builtin: bool
    distribution: str = "fmmkit"


@dataclass
class BlockedPlugin:
    """A plugin FMMKIT_BLOCK_PLUGINS kept out: not registered, but looked at (only when a spec names a
    component it would provide) to say so instead of "unknown"."""

    name: str
    version: str
    distribution: str
    load: Any  # () -> the plugin object (a module)
    _provides: set[tuple[str, str]] | None = None

    def provides(self) -> set[tuple[str, str]]:
        """The (kind, name) pairs the plugin would register (empty if it cannot even be imported)."""
        if self._provides is None:
            found: set[tuple[str, str]] = set()
            try:
                pm = make_plugin_manager()
                pm.register(self.load(), name=self.name)
                for hook_name, (kind, _) in KINDS.items():
                    getattr(pm.hook, hook_name)(register=lambda name, *a, _k=kind, **k: found.add((_k, name)))
            except Exception:  # a blocked plugin may well be broken: that is why it is blocked
                pass
            self._provides = found
        return self._provides


@dataclass
class Registry:
    """Components by kind and name, with the plugins that provided them.

    ``failures``: one line per plugin or component that was skipped; ``clashes``: one line per name
    two plugins registered (the later one is left out); ``blocked``: plugins FMMKIT_BLOCK_PLUGINS kept out.
    """

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k, _ in KINDS.values()})
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)
    blocked: list[BlockedPlugin] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; UnknownComponentError lists the registered names otherwise (or names
        the blocked plugin that provides it)."""
        table = self.entries[kind]
        if name in table:
            return table[name]
        for plugin in self.blocked:
            if (kind, name) in plugin.provides():
                raise UnknownComponentError(
                    f"{kind} '{name}' is provided by plugin '{plugin.name}', blocked by {BLOCK_VARIABLE}; "
                    f"unblock it to use '{name}'"
                )
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownComponentError(
            f"unknown {kind} '{name}'; {hint}registered: {', '.join(sorted(table)) or '(none)'}"
        )

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind, sorted."""
        return sorted(self.entries[kind])

    def build(self, kind: str, name: str, config: Any, ctx: Any) -> Any:
        """Build a registered component (see :meth:`Entry.build`)."""
        return self.get(kind, name).build(config, ctx)

    def plugin(self, name: str) -> PluginInfo | None:
        """The loaded plugin called ``name``, if any."""
        return next((p for p in self.plugins if p.name == name), None)


def _warn(message: str, failures: list[str]) -> None:
    failures.append(message)
    warnings.warn(message, PluginWarning, stacklevel=3)


def _normalized(name: str) -> str:
    """A distribution or plugin name compared as pip compares them (PEP 503: case, -, _ and .)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def blocked_names() -> set[str]:
    """The names in FMMKIT_BLOCK_PLUGINS (plugin names or distribution names), normalised."""
    return {_normalized(p.strip()) for p in os.environ.get(BLOCK_VARIABLE, "").split(",") if p.strip()}


def _warn_unknown_blocked(blocked: set[str], builtins: Iterable[str], installed: Iterable[str]) -> None:
    """A name in FMMKIT_BLOCK_PLUGINS that no plugin has is a typo to report, not a wish to ignore."""
    installed = sorted(set(installed))
    known = {_normalized(n) for n in (*builtins, *installed)}
    for name in sorted(blocked - known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        warnings.warn(f"FMMKIT_BLOCK_PLUGINS names '{name}', which is not a plugin; {hint}installed plugins: "
                      f"{', '.join(installed) or '(none)'}, and the built-ins that 'fmmkit plugins' lists",
                      PluginWarning, stacklevel=3)


@dataclass
class _Candidate:
    name: str
    version: str
    load: Any  # () -> plugin object
    builtin: bool
    distribution: str


def _candidates(extra_plugins: Iterable[tuple[str, Any]], entry_points: bool) -> list[_Candidate]:
    """Every plugin in load order: the built-ins, then entry points, then ``extra_plugins``."""
    found = [_Candidate(name, __version__, lambda n=name: importlib.import_module(n), True, "fmmkit")
             for name in BUILTIN_PLUGINS]
    if entry_points and not os.environ.get("FMMKIT_NO_ENTRY_POINTS"):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.name
            version = ep.dist.version if ep.dist is not None else "?"
            found.append(_Candidate(ep.name, version, ep.load, False, dist))
    for name, obj in extra_plugins:
        found.append(_Candidate(name, getattr(obj, "__version__", "?"), lambda o=obj: o, False, name))
    return found


def make_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with fmmkit's hookspecs."""
    pm = pluggy.PluginManager("fmmkit")
    pm.add_hookspecs(hookspecs)
    return pm


def _tracing() -> bool:
    return os.environ.get("FMMKIT_TRACE_HOOKS", "0") not in ("", "0")


def load_registry(extra_plugins: Iterable[tuple[str, Any]] = (), entry_points: bool = True, *,
                  strict: bool = True) -> Registry:
    """Load every plugin and collect its registrations.

    ``extra_plugins`` are (name, module-or-object) pairs registered after the built-ins (tests use
    it). A plugin that fails to import or raises in a hook, and a component whose Config is invalid,
    is skipped with one PluginWarning line. Two plugins registering one name is a clash: with
    ``strict`` (the default) a RegistryError lists every clash at once, one line each; otherwise
    the clashes are kept in ``registry.clashes`` (``fmmkit plugins`` shows them) and the earlier
    plugin keeps the name.
    """
    from fmmkit.spec.config_check import config_problem

    registry = Registry()
    blocked = blocked_names()
    pm = make_plugin_manager()
    trace = _tracing()
    candidates = _candidates(extra_plugins, entry_points)
    if blocked:
        _warn_unknown_blocked(blocked, [c.name for c in candidates if c.builtin],
                              sorted({n for c in candidates if not c.builtin for n in (c.name, c.distribution)}))
    versions: dict[str, str] = {}
    for cand in candidates:
        if _normalized(cand.name) in blocked or _normalized(cand.distribution) in blocked:
            registry.blocked.append(BlockedPlugin(cand.name, cand.version, cand.distribution, cand.load))
            continue
        try:
            obj = cand.load()
        except Exception as exc:  # a broken plugin must not take the others down
            _warn(f"plugin '{cand.name}' failed to import and is skipped: {type(exc).__name__}: {exc}", registry.failures)
            continue
        try:
            pm.register(obj, name=cand.name)
        except Exception as exc:
            _warn(f"plugin '{cand.name}' could not be registered and is skipped: {type(exc).__name__}: {exc}",
                  registry.failures)
            continue
        versions[cand.name] = cand.version
        hooks = [caller.name for caller in pm.get_hookcallers(obj) or []]
        registry.plugins.append(PluginInfo(cand.name, cand.version, sorted(hooks), cand.builtin, cand.distribution))

    for hook_name, (kind, base) in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            plugin_name = impl.plugin_name
            others = [p for p in pm.get_plugins() if p is not impl.plugin]
            staged: dict[str, Entry] = {}

            def register(name: str, component: Any, *, config: type | None = None, _p: str = plugin_name) -> None:
                problem = _component_problem(kind, base, name, component, config, config_problem)
                if problem is not None:
                    _warn(f"plugin '{_p}': {problem}; {kind} '{name}' is skipped", registry.failures)
                    return
                cfg = config or getattr(component, "Config", EmptyConfig)
                staged[name] = Entry(kind, name, component, cfg, _p, versions.get(_p, "?"))

            try:
                pm.subset_hook_caller(hook_name, remove_plugins=others)(register=register)
            except Exception as exc:
                _warn(
                    f"plugin '{plugin_name}' raised in {hook_name} and its {plural(kind)} are skipped: "
                    f"{type(exc).__name__}: {exc}",
                    registry.failures,
                )
                continue
            if trace:
                sys.stderr.write(f"fmmkit trace: {hook_name} {plugin_name}: {', '.join(staged) or '(none)'}\n")
            table = registry.entries[kind]
            for name, entry in staged.items():
                if name in table:
                    first = table[name]
                    registry.clashes.append(
                        f"{kind} '{name}' is registered by two plugins: '{first.plugin}' ({first.version}) and "
                        f"'{entry.plugin}' ({entry.version}); rename one, or block the later one with "
                        f"{BLOCK_VARIABLE}={entry.plugin}"
                    )
                    continue
                table[name] = entry
    if strict and registry.clashes:
        raise RegistryError("\n".join(registry.clashes))
    return registry


def _component_problem(kind: str, base: type | None, name: str, component: Any, config: type | None,
                       config_problem: Any) -> str | None:
    """Why a component cannot be registered (one phrase), or None: the right base class, a ``build``,
    and a Config whose defaults pass their own validators and types."""
    if base is not None and not (isinstance(component, type) and issubclass(component, base)):
        return f"{kind} '{name}' must be a subclass of {base.__module__}.{base.__name__}"
    if not callable(getattr(component, "build", None)):
        return f"{kind} '{name}' has no build(config, ctx) classmethod"
    cfg = config or getattr(component, "Config", EmptyConfig)
    found = config_problem(cfg)
    if found is None:
        return None
    key, problem = found
    return f"default of {kind} '{name}'.{key} is invalid: {problem}" if key else f"{kind} '{name}'.Config {problem}"


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry (loaded once)."""
    return load_registry()


def reset_registry() -> None:
    """Forget the cached registry (after installing or blocking plugins)."""
    get_registry.cache_clear()
