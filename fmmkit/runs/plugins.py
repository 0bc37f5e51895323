"""The plugins a run used, recorded in run.json, and the check that they are installed when it loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmmkit.registry import BLOCK_VARIABLE, Registry
from fmmkit.runs.layout import RUN_INFO_FILE
from fmmkit.spec import Spec, SpecError
from fmmkit.spec.build import spec_components


def plugins_used(spec: Spec, registry: Registry) -> list[dict[str, Any]]:
    """The plugins that provide the spec's components, for run.json: name, distribution, version and
    the components ("kind name") each provided."""
    used: dict[str, dict[str, Any]] = {}
    for kind, name in spec_components(spec):
        entry = registry.get(kind, name)
        info = registry.plugin(entry.plugin)
        record = used.setdefault(entry.plugin, {"plugin": entry.plugin, "version": entry.version,
                                               "distribution": info.distribution if info else entry.plugin,
                                               "components": []})
        record["components"].append(f"{kind} {name}")
    return list(used.values())


def check_plugins(path: Path, registry: Registry) -> None:
    """SpecError naming the plugin to install when a component the run was trained with is missing
    (from the ``plugins`` its run.json records; a run without them is not checked)."""
    info = path / RUN_INFO_FILE
    try:
        recorded = json.loads(info.read_text()).get("plugins", []) if info.is_file() else []
    except (OSError, ValueError, AttributeError):
        return  # an unreadable run.json is not this check's business
    for plugin in recorded:
        components = [c.split(" ", 1) for c in plugin.get("components", []) if " " in c]
        missing = [f"{kind} '{name}'" for kind, name in components
                   if kind in registry.entries and name not in registry.entries[kind]]
        if not missing:
            continue
        blocked = next((b for b in registry.blocked if b.name == plugin.get("plugin")), None)
        name, version = plugin.get("plugin", "?"), plugin.get("version", "?")
        if blocked is not None:
            raise SpecError([f"{path}: this run uses {', '.join(missing)} of plugin '{name}', blocked by "
                             f"{BLOCK_VARIABLE}; unblock it to load the run"])
        raise SpecError([f"{path}: this run was trained with plugin '{name}' {version} ({', '.join(missing)}), "
                         f"which is not installed; install it (pip install '{plugin.get('distribution', name)}=="
                         f"{version}') to load the run"])
